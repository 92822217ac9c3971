// test_util.cpp: shared helpers for the tests.
#include "test_util.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>

#include <sys/wait.h>

static Model g_model;
static bool g_loaded = false;

static void free_model() { model_free(&g_model); }

const Model &default_model() {
    if (!g_loaded) {
        char err[1024];
        int status = model_load(&g_model, DEFAULT_MODEL, err, sizeof err);
        REQUIRE_MESSAGE(status == 0, err, " (run `make fetch` to download the default model)");
        g_loaded = true;
        atexit(free_model);
    }
    return g_model;
}

std::string from_hex(const std::string &hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) out += (char)std::stoi(hex.substr(i, 2), nullptr, 16);
    return out;
}

std::vector<int> json_ints(const JsonValue *array) {
    std::vector<int> out;
    for (size_t i = 0; array && i < array->count; i++) out.push_back((int)array->items[i].number);
    return out;
}

int run_shell(const std::string &command, std::string *output) {
    FILE *pipe = popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    output->clear();
    char block[4096];
    size_t n;
    while ((n = fread(block, 1, sizeof block, pipe)) > 0) output->append(block, n);
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
