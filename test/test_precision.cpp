// Tests for trainer/precision.c: --precision's names, and which precision
// each device runs (auto by compute capability; the choices a device cannot run refused).
#include <doctest/doctest.h>

#include <cstring>

#include "trainer/precision.h"

TEST_CASE("precision: names parse and print back; others are refused") {
    const char *names[] = {"auto", "fp32", "bf16", "fp16"};
    for (const char *name : names) {
        Precision p;
        REQUIRE(precision_parse(name, &p) == 0);
        CHECK(std::strcmp(precision_name(p), name) == 0);
    }
    Precision p;
    CHECK(precision_parse("fp8", &p) == -1);
    CHECK(precision_parse("BF16", &p) == -1);
    CHECK(precision_parse("", &p) == -1);
}

TEST_CASE("precision: auto is bf16 from sm_80, fp16 on sm_75, fp32 on the CPU") {
    char err[256];
    Precision chosen;
    struct Case { int capability; Precision want; };
    const Case cases[] = {{75, PRECISION_FP16}, {80, PRECISION_BF16}, {86, PRECISION_BF16}, {89, PRECISION_BF16},
                          {90, PRECISION_BF16}, {120, PRECISION_BF16}};
    for (const Case &c : cases) {
        INFO("sm_" << c.capability);
        REQUIRE(precision_resolve(PRECISION_AUTO, 1, c.capability, &chosen, err, sizeof err) == 0);
        CHECK(chosen == c.want);
        // fp16 runs everywhere
        REQUIRE(precision_resolve(PRECISION_FP16, 1, c.capability, &chosen, err, sizeof err) == 0);
        CHECK(chosen == PRECISION_FP16);
    }
    REQUIRE(precision_resolve(PRECISION_AUTO, 0, 0, &chosen, err, sizeof err) == 0);
    CHECK(chosen == PRECISION_FP32);
    REQUIRE(precision_resolve(PRECISION_FP32, 0, 0, &chosen, err, sizeof err) == 0);
    CHECK(chosen == PRECISION_FP32);
}

TEST_CASE("precision: a choice the device cannot run is a clear error") {
    char err[256] = "";
    Precision chosen;
    CHECK(precision_resolve(PRECISION_BF16, 1, 75, &chosen, err, sizeof err) == -1);
    CHECK(std::strstr(err, "sm_75") != nullptr);
    CHECK(std::strstr(err, "--precision fp16") != nullptr);
    CHECK(precision_resolve(PRECISION_FP32, 1, 90, &chosen, err, sizeof err) == -1);
    CHECK(std::strstr(err, "--device cpu") != nullptr);
    CHECK(precision_resolve(PRECISION_FP16, 0, 0, &chosen, err, sizeof err) == -1);
    CHECK(std::strstr(err, "--device cuda") != nullptr);
    CHECK(precision_resolve(PRECISION_BF16, 0, 0, &chosen, err, sizeof err) == -1);
}
