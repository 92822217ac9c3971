// test_util.h: shared helpers for the tests.
#pragma once
#include <string>
#include <vector>
#include "formats/json.h"
#include "model.h"

// The default model, loaded once for all tests (fails the test when missing:
// run `make fetch`).
const Model &default_model();

// Bytes from a hex string ("e29c93" -> "\xe2\x9c\x93"): fixtures store test
// texts in hex so invalid UTF-8 survives JSON.
std::string from_hex(const std::string &hex);
// The numbers of a JSON array as ints (empty for NULL).
std::vector<int> json_ints(const JsonValue *array);
// Runs a shell command: its exit status (-1 when it did not exit), its output in *output.
int run_shell(const std::string &command, std::string *output);
