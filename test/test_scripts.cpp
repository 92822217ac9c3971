// Every shell script of the repo (dev/, test/) parses (`sh -n`): the GPU
// session's dev/gpu/gpu_check.sh runs only on a lent GPU, so a syntax error
// there would otherwise be found with the device's minutes running. And the
// check does fail on a script with a case branch left open.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

// `sh -n path`: its exit status, its complaint in *output.
static int shell_parse(const std::string &path, std::string *output) {
    return run_shell("sh -n '" + path + "' 2>&1", output);
}

static std::vector<std::string> shell_scripts(const std::string &folder) {
    std::vector<std::string> scripts;
    for (const auto &entry : std::filesystem::recursive_directory_iterator(folder))
        if (entry.is_regular_file() && entry.path().extension() == ".sh") scripts.push_back(entry.path().string());
    return scripts;
}

TEST_CASE("scripts: every shell script under dev/ and test/ parses") {
    size_t checked = 0;
    for (const std::string folder : {"dev", "test"}) {
        for (const std::string &script : shell_scripts(folder)) {
            std::string output;
            CHECK_MESSAGE(shell_parse(script, &output) == 0, script << ": " << output);
            checked++;
        }
    }
    CHECK(checked >= 10);   // dev/gpu, dev/fetch, dev/cuda_on_cpu, test/run_tests.sh, ...
}

TEST_CASE("scripts: the check fails on a case branch without its ;;") {
    char name[] = "/tmp/qlora_scripts_XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    std::string path = std::string(name) + "/broken.sh";
    std::ofstream(path) << "for s in a b; do\n  case $s in\n  a)\n    echo a\n  b)\n    echo b\n    ;;\n  esac\ndone\n";
    std::string output;
    CHECK(shell_parse(path, &output) != 0);
    std::ofstream(path) << "for s in a b; do\n  case $s in\n  a)\n    echo a\n    ;;\n  b)\n    echo b\n    ;;\n  esac\ndone\n";
    CHECK(shell_parse(path, &output) == 0);
    std::filesystem::remove_all(name);
}
