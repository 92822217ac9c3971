// test_util.h: shared helpers for the tests.
#pragma once
#include "model.h"

#define DEFAULT_MODEL_PATH "models/SmolLM2-135M-Instruct.Q4_1.gguf"

// The default model, loaded once for all tests (fails the test when missing:
// run `make fetch`).
const Model &default_model();
