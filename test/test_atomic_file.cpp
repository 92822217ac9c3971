// formats/atomic_file.h: a file is either the old one or the new one. A write
// that fails (here: a full device, /dev/full) leaves the old file and no temp,
// and says which path and why; a set of files renamed together.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/atomic_file.h"

namespace {

std::string read_text(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The names in dir, one a line.
std::string listing(const std::string &dir) {
    std::string names;
    for (const auto &entry : std::filesystem::directory_iterator(dir)) names += entry.path().filename().string() + "\n";
    return names;
}

}  // namespace

TEST_CASE("atomic_file: the new contents replace the old, no temp is left") {
    char dir[] = "/tmp/qlora_atomic_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string path = std::string(dir) + "/a.txt";
    char err[8192] = "";
    REQUIRE_MESSAGE(atomic_file_write(path.c_str(), "old\n", 4, err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(atomic_file_write(path.c_str(), "new\n", 4, err, sizeof err) == 0, err);
    CHECK(read_text(path) == "new\n");
    CHECK(listing(dir) == "a.txt\n");
    // given up: the old file as it was
    AtomicFile file;
    REQUIRE(atomic_file_open(&file, path.c_str(), err, sizeof err) != nullptr);
    fputs("half", file.f);
    atomic_file_abort(&file);
    CHECK(read_text(path) == "new\n");
    CHECK(listing(dir) == "a.txt\n");
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}

TEST_CASE("atomic_file: a failed write leaves the old file and names the path and the reason") {
    char dir[] = "/tmp/qlora_atomic_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string path = std::string(dir) + "/a.txt";
    char err[8192] = "";
    REQUIRE_MESSAGE(atomic_file_write(path.c_str(), "old\n", 4, err, sizeof err) == 0, err);
    // a full disk: the temp is written to /dev/full instead (its writes fail with ENOSPC)
    AtomicFile file;
    REQUIRE(atomic_file_open(&file, path.c_str(), err, sizeof err) != nullptr);
    REQUIRE(freopen("/dev/full", "wb", file.f) != nullptr);
    std::string big(1 << 16, 'x');
    fwrite(big.data(), 1, big.size(), file.f);
    CHECK(atomic_file_commit(&file, err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(path + ": cannot write: ") == 0, err);
    CHECK_MESSAGE((std::string(err).find("No space left on device") != std::string::npos ||
                   std::string(err).find("disk full") != std::string::npos), err);
    CHECK(read_text(path) == "old\n");
    CHECK(listing(dir) == "a.txt\n");
    // a folder that does not exist: named, with the reason
    std::string missing = std::string(dir) + "/no/such/b.txt";
    CHECK(atomic_file_write(missing.c_str(), "x", 1, err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(missing + ": cannot create ") == 0, err);
    CHECK_MESSAGE(std::string(err).find("No such file or directory") != std::string::npos, err);
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}

TEST_CASE("atomic_file: a set is written whole before any file of it is renamed") {
    char dir[] = "/tmp/qlora_atomic_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string a = std::string(dir) + "/a", b = std::string(dir) + "/b";
    char err[8192] = "";
    AtomicFile files[2];
    REQUIRE(atomic_file_open(&files[0], a.c_str(), err, sizeof err) != nullptr);
    REQUIRE(atomic_file_open(&files[1], b.c_str(), err, sizeof err) != nullptr);
    fputs("A", files[0].f);
    fputs("B", files[1].f);
    REQUIRE(atomic_file_close(&files[0], err, sizeof err) == 0);
    REQUIRE(atomic_file_close(&files[1], err, sizeof err) == 0);
    CHECK(!std::filesystem::exists(a));   // closed and synced, not yet in place
    REQUIRE(atomic_file_rename(&files[0], err, sizeof err) == 0);
    REQUIRE(atomic_file_rename(&files[1], err, sizeof err) == 0);
    CHECK(read_text(a) == "A");
    CHECK(read_text(b) == "B");
    CHECK(listing(dir).size() == 4);
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}
