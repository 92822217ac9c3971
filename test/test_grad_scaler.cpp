// Tests for trainer/grad_scaler.c: dynamic loss scaling against
// torch.amp.GradScaler (the fixture of dev/fixtures/make_gradscaler_fixture.py:
// its scale at every step and the steps it skipped, with forced overflows) and
// against a sequence worked out by hand.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <set>

#include "formats/json.h"
#include "trainer/grad_scaler.h"

namespace {

const char *const FIXTURE = "test/fixtures/gradscaler_reference.json";

std::set<int> int_set(const JsonValue *case_, const char *key) {
    const JsonValue *a = json_get(case_, key);
    REQUIRE_MESSAGE((a && a->type == JSON_ARRAY), "fixture lacks array ", key);
    std::set<int> out;
    for (size_t i = 0; i < a->count; i++) out.insert((int)a->items[i].number);
    return out;
}

}  // namespace

TEST_CASE("grad scaler: defaults are torch.amp.GradScaler's") {
    GradScaler s = grad_scaler_default(1);
    CHECK(s.scale == 65536.0f);
    CHECK(s.growth_factor == 2.0);
    CHECK(s.backoff_factor == 0.5);
    CHECK(s.growth_interval == 2000);
    CHECK(s.growth_tracker == 0);
    CHECK(grad_scaler_inverse(&s) == 1.0f / 65536.0f);
}

TEST_CASE("grad scaler: off, the scale stays 1 and nothing is skipped") {
    GradScaler s = grad_scaler_default(0);
    for (int step = 0; step < 5000; step++) grad_scaler_update(&s, step % 7 == 0);
    CHECK(s.scale == 1.0f);
    CHECK(s.skipped_steps == 0);
    CHECK(grad_scaler_inverse(&s) == 1.0f);
}

TEST_CASE("grad scaler: a sequence worked out by hand") {
    GradScaler s = grad_scaler_default(1);
    s.growth_interval = 2;
    grad_scaler_update(&s, 1);   // overflow: 65536 * 0.5
    CHECK(s.scale == 32768.0f);
    CHECK(s.skipped_steps == 1);
    grad_scaler_update(&s, 0);   // one good step: no growth yet
    CHECK(s.scale == 32768.0f);
    CHECK(s.growth_tracker == 1);
    grad_scaler_update(&s, 0);   // the second in a row: doubles, tracker back to 0
    CHECK(s.scale == 65536.0f);
    CHECK(s.growth_tracker == 0);
    grad_scaler_update(&s, 0);
    grad_scaler_update(&s, 1);   // an overflow resets the tracker
    CHECK(s.scale == 32768.0f);
    CHECK(s.growth_tracker == 0);
    CHECK(s.skipped_steps == 2);
}

TEST_CASE("grad scaler: step for step torch.amp.GradScaler with forced overflows") {
    char err[512] = "";
    JsonValue *root = json_parse_file(FIXTURE, err, sizeof err);
    REQUIRE_MESSAGE(root, err, " (regenerate with python3 dev/fixtures/make_gradscaler_fixture.py)");
    const JsonValue *cases = json_get(root, "cases");
    REQUIRE((cases && cases->type == JSON_ARRAY && cases->count == 3));
    for (size_t c = 0; c < cases->count; c++) {
        const JsonValue *case_ = &cases->items[c];
        INFO("case ", json_get_string(case_, "name", "?"));
        GradScaler s = grad_scaler_default(1);
        s.scale = (float)json_get_number(case_, "init_scale", NAN);
        s.growth_factor = json_get_number(case_, "growth_factor", NAN);
        s.backoff_factor = json_get_number(case_, "backoff_factor", NAN);
        s.growth_interval = (int)json_get_number(case_, "growth_interval", NAN);
        int steps = (int)json_get_number(case_, "steps", 0);
        std::set<int> overflow = int_set(case_, "overflow_steps"), skipped = int_set(case_, "skipped_steps");
        // torch skipped exactly the steps with an overflow: the fixture is what it says
        CHECK(overflow == skipped);
        const JsonValue *runs = json_get(case_, "scale_runs");
        REQUIRE((runs && runs->type == JSON_ARRAY));
        int step = 0;
        for (size_t r = 0; r < runs->count; r++) {
            float want = (float)runs->items[r].items[0].number;
            int n = (int)runs->items[r].items[1].number;
            for (int i = 0; i < n; i++, step++) {
                INFO("step ", step);
                REQUIRE(s.scale == want);
                grad_scaler_update(&s, overflow.count(step) > 0);
            }
        }
        CHECK(step == steps);
        CHECK(s.scale == (float)json_get_number(case_, "final_scale", NAN));
        CHECK(s.growth_tracker == (int)json_get_number(case_, "final_growth_tracker", -1));
        CHECK(s.skipped_steps == (int)skipped.size());
    }
    json_free(root);
}
