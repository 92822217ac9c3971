// Bootstrap intervals (eval/bootstrap.h): against numpy on the same resamples
// (test/fixtures/bootstrap_reference.json, from
// dev/fixtures/make_bootstrap_fixture.py), and on cases with a known answer:
// constant data has a zero-width interval, a constant paired change is exact
// though each arm's interval is wide, a share's interval matches the normal
// approximation, the seed fixes the intervals.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "eval/bootstrap.h"
#include "formats/json.h"
#include "test_util.h"

namespace {

const char *const FIXTURE = "test/fixtures/bootstrap_reference.json";

std::vector<double> numbers(const JsonValue *array) {
    std::vector<double> out;
    for (size_t i = 0; array && array->type == JSON_ARRAY && i < array->count; i++) out.push_back(array->items[i].number);
    return out;
}

// The items of a case: num and den (den empty: all 1).
RatioItems items(const std::vector<double> &num, const std::vector<double> &den) {
    return RatioItems{num.data(), den.empty() ? nullptr : den.data()};
}

}  // namespace

TEST_CASE("bootstrap: intervals equal numpy's percentiles of the same resamples") {
    char err[512];
    JsonValue *root = json_parse_file(FIXTURE, err, sizeof err);
    REQUIRE_MESSAGE(root, err, " (regenerate with python3 dev/fixtures/make_bootstrap_fixture.py)");
    CHECK(json_get_number(root, "level", 0) == BOOTSTRAP_LEVEL);
    const JsonValue *cases = json_get(root, "cases");
    REQUIRE((cases && cases->count >= 5));
    for (size_t c = 0; c < cases->count; c++) {
        const JsonValue *x = &cases->items[c];
        INFO(json_get_string(x, "name", "?"));
        std::vector<double> num = numbers(json_get(x, "num")), den = numbers(json_get(x, "den"));
        int resamples = (int)json_get_number(x, "resamples", 0);
        uint64_t seed = (uint64_t)json_get_number(x, "seed", 0);
        Interval got;
        if (json_get(x, "num_b")) {
            std::vector<double> num_b = numbers(json_get(x, "num_b")), den_b = numbers(json_get(x, "den_b"));
            got = bootstrap_change(items(num, den), items(num_b, den_b), (int)num.size(), resamples, seed);
        } else {
            got = bootstrap_ratio(items(num, den), (int)num.size(), resamples, seed);
        }
        CHECK(got.estimate == doctest::Approx(json_get_number(x, "estimate", NAN)).epsilon(1e-12));
        CHECK(got.low == doctest::Approx(json_get_number(x, "low", NAN)).epsilon(1e-12));
        CHECK(got.high == doctest::Approx(json_get_number(x, "high", NAN)).epsilon(1e-12));
    }
    json_free(root);
}

TEST_CASE("bootstrap: constant data, a constant paired change, a share, the seed, no items") {
    std::vector<double> same(10, 0.25);
    Interval constant = bootstrap_ratio(items(same, {}), 10, 500, 1);
    CHECK(constant.estimate == doctest::Approx(0.25));
    CHECK(constant.low == doctest::Approx(0.25));
    CHECK(constant.high == doctest::Approx(0.25));

    // b = a + 0.1 on every item: each arm's interval is wide, the paired change exactly 0.1
    std::vector<double> a, b;
    for (int i = 0; i < 20; i++) {
        a.push_back((i * 37 % 20) / 20.0);
        b.push_back(a.back() + 0.1);
    }
    Interval arm = bootstrap_ratio(items(a, {}), 20, 2000, 3);
    Interval change = bootstrap_change(items(a, {}), items(b, {}), 20, 2000, 3);
    CHECK(arm.high - arm.low > 0.2);
    CHECK(change.estimate == doctest::Approx(0.1));
    CHECK(change.low == doctest::Approx(0.1));
    CHECK(change.high == doctest::Approx(0.1));
    CHECK(interval_excludes_zero(change));
    CHECK(!interval_excludes_zero(Interval{0.0, -0.1, 0.1}));
    CHECK(interval_excludes_zero(Interval{-0.2, -0.3, -0.1}));

    // a share of 100 in 400: about p +- 1.96 sqrt(p (1 - p) / n), that is 0.25 +- 0.042
    std::vector<double> share(400, 0.0);
    for (int i = 0; i < 100; i++) share[i * 4] = 1.0;
    Interval s = bootstrap_ratio(items(share, {}), 400, 2000, 11);
    CHECK(s.estimate == doctest::Approx(0.25));
    CHECK(s.low == doctest::Approx(0.25 - 1.96 * std::sqrt(0.25 * 0.75 / 400)).epsilon(0.04));
    CHECK(s.high == doctest::Approx(0.25 + 1.96 * std::sqrt(0.25 * 0.75 / 400)).epsilon(0.04));

    // the same seed gives the same interval, another seed another one
    Interval again = bootstrap_ratio(items(share, {}), 400, 2000, 11), other = bootstrap_ratio(items(share, {}), 400, 2000, 12);
    CHECK(again.low == s.low);
    CHECK(again.high == s.high);
    CHECK((other.low != s.low || other.high != s.high));

    // no items: NaN, and no claim that zero is excluded
    Interval none = bootstrap_ratio(items(same, {}), 0, 100, 1);
    CHECK(std::isnan(none.estimate));
    CHECK(std::isnan(none.low));
    CHECK(!interval_excludes_zero(none));
}
