// The files' includes form no cycle (dev/check_includes.sh on the repo), and
// the check does fail on a cycle: three made-up units that include each other
// in a ring, and passes once one include is taken out.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

// Runs dev/check_includes.sh on root; returns its exit status and output.
static int check_includes(const std::string &root, std::string *output) {
    return run_shell("sh dev/check_includes.sh " + root + " 2>&1", output);
}

static void write_file(const std::filesystem::path &path, const std::string &text) {
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << text;
}

TEST_CASE("includes: no file of the repo reaches itself through #include") {
    std::string output;
    int status = check_includes(".", &output);
    CHECK_MESSAGE(status == 0, output);
    CHECK_MESSAGE(output.find("no include cycles") != std::string::npos, output);
}

TEST_CASE("includes: the check finds a ring of three units, and passes without it") {
    char name[] = "/tmp/qlora_includes_XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    std::filesystem::path root = name;
    // ring/a -> ring/b (a header naming one from its own folder), ring/b -> c (a
    // source naming a header by its path from the root), c -> ring/a
    write_file(root / "ring/a.h", "#pragma once\n#include \"b.h\"\n");
    write_file(root / "ring/b.h", "#pragma once\n#include <stdio.h>\n");
    write_file(root / "ring/b.c", "#include \"ring/b.h\"\n  #  include \"c.h\"\n");
    write_file(root / "c.h", "#pragma once\n");
    write_file(root / "c.cpp", "#include \"c.h\"\n#include \"ring/a.h\"\n");
    std::string output;
    CHECK(check_includes(root.string(), &output) == 1);
    CHECK_MESSAGE(output.find("include cycle:") != std::string::npos, output);
    CHECK_MESSAGE(output.find("ring/b.c includes c.h") != std::string::npos, output);

    write_file(root / "ring/b.c", "#include \"ring/b.h\"\n");
    CHECK(check_includes(root.string(), &output) == 0);
    CHECK_MESSAGE(output.find("no include cycles among 3 units (5 files)") != std::string::npos, output);
    std::filesystem::remove_all(root);
}
