// infer/sampler.c under ./serve's use: several threads sampling at once (one
// sampler each) draw exactly what each draws alone.
#include <doctest/doctest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "infer/sampler.h"

// n_draws tokens from logits, temperature 1 and top_p 0.95, seeded (none when out of memory).
static std::vector<int> draws(const std::vector<float> &logits, uint64_t seed, int n_draws) {
    Sampler s;
    if (sampler_init(&s, (int)logits.size(), 1.0f, 0.95f, seed) != 0) return {};
    std::vector<int> tokens;
    for (int i = 0; i < n_draws; i++) tokens.push_back(sampler_next(&s, logits.data()));
    sampler_free(&s);
    return tokens;
}

TEST_CASE("sampler: threads sampling at once draw what each draws alone (top-p's sort shares no state)") {
    const int vocab = 20000, n_draws = 60, n_threads = 4;
    std::vector<std::vector<float>> logits(n_threads, std::vector<float>(vocab));
    for (int t = 0; t < n_threads; t++)   // a different distribution per thread, spread out enough to sort many
        for (int i = 0; i < vocab; i++) logits[t][i] = 3.0f * std::sin(0.37f * (float)i * (float)(t + 1));
    std::vector<std::vector<int>> alone(n_threads), together(n_threads);
    for (int t = 0; t < n_threads; t++) {
        alone[t] = draws(logits[t], 100 + t, n_draws);
        REQUIRE(alone[t].size() == (size_t)n_draws);
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; t++)
        threads.emplace_back([&, t] { together[t] = draws(logits[t], 100 + t, n_draws); });
    for (std::thread &th : threads) th.join();
    for (int t = 0; t < n_threads; t++) {
        CAPTURE(t);
        CHECK(together[t] == alone[t]);
    }
}
