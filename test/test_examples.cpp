// test_examples.cpp: ./train's batches (trainer/examples.h): packing samples
// into sequences (--pack) and the per-token loss weights (--prompt-loss-weight),
// on hand-made samples whose right answers are written out here.
#include <doctest/doctest.h>

#include <stdlib.h>
#include <string.h>
#include <vector>

#include "trainer/examples.h"

// A sample of n tokens (ids first_id, first_id + 1, ...) whose last `answer`
// tokens are the answer: targets[t] = ids[t + 1] where t + 1 is in the answer.
static Example make_example(int n, int answer, int first_id) {
    Example e = {NULL, NULL, n, answer, 1, NULL};
    e.ids = (int *)malloc(sizeof(int) * n);
    e.targets = (int *)malloc(sizeof(int) * n);
    for (int t = 0; t < n; t++) e.ids[t] = first_id + t;
    for (int t = 0; t < n; t++) e.targets[t] = t + 1 < n && t + 1 >= n - answer ? e.ids[t + 1] : IGNORE_TARGET;
    return e;
}

static ExampleSet make_set(const std::vector<int> &lengths) {
    ExampleSet set = {(Example *)calloc(lengths.size(), sizeof(Example)), (int)lengths.size()};
    for (size_t i = 0; i < lengths.size(); i++) set.examples[i] = make_example(lengths[i], 2, 100 * (int)(i + 1));
    return set;
}

TEST_CASE("examples: packing puts every sample, whole, into sequences of at most --seq tokens") {
    ExampleSet set = make_set({5, 9, 3, 7, 2, 6, 10});
    ExampleSet packed;
    REQUIRE(examples_pack(&set, 12, 1234, &packed) == 0);
    int samples = 0, tokens = 0;
    std::vector<int> seen(set.count, 0);
    for (int r = 0; r < packed.count; r++) {
        const Example *row = &packed.examples[r];
        CHECK(row->n_tokens <= 12);
        REQUIRE(row->positions != NULL);
        samples += row->n_samples;
        tokens += row->n_tokens;
        // walk the samples of the row: positions restart at 0 and count up; ids match a sample whole
        int t = 0, in_row = 0;
        while (t < row->n_tokens) {
            CHECK(row->positions[t] == 0);
            int which = row->ids[t] / 100 - 1, n = set.examples[which].n_tokens;
            REQUIRE(t + n <= row->n_tokens);
            for (int i = 0; i < n; i++) {
                CHECK(row->positions[t + i] == i);
                CHECK(row->ids[t + i] == set.examples[which].ids[i]);
                CHECK(row->targets[t + i] == set.examples[which].targets[i]);
            }
            seen[which]++;
            t += n;
            in_row++;
        }
        CHECK(in_row == row->n_samples);
    }
    CHECK(samples == set.count);
    CHECK(tokens == 42);
    for (int i = 0; i < set.count; i++) CHECK(seen[i] == 1);
    // 42 tokens need at least 4 sequences of 12; first fit here needs 4 or 5
    CHECK(packed.count >= 4);
    CHECK(packed.count <= 5);
    CHECK(examples_fill(&packed, 12) == doctest::Approx(42.0 / (packed.count * 12)));
    // the same seed packs the same way
    ExampleSet again;
    REQUIRE(examples_pack(&set, 12, 1234, &again) == 0);
    REQUIRE(again.count == packed.count);
    for (int r = 0; r < packed.count; r++) CHECK(again.examples[r].n_tokens == packed.examples[r].n_tokens);
    examples_free(&again);
    examples_free(&packed);
    // a sample longer than the sequence cannot be packed
    ExampleSet none;
    CHECK(examples_pack(&set, 8, 1234, &none) == -1);
    examples_free(&set);
}

TEST_CASE("examples: a batch with prompt-loss weight 0 keeps the answer-only targets and no weights") {
    ExampleSet set = make_set({4, 6});
    int order[2] = {0, 1};
    BatchArrays arrays;
    Batch batch = examples_batch(&set, order, 0, 2, 0.0f, &arrays);
    CHECK(batch.n_seqs == 2);
    CHECK(batch.seq_len == 6);
    CHECK(batch.weights == NULL);
    CHECK(batch.positions == NULL);
    // sample 0 (4 tokens, answer = its last 2): targets at t = 1, 2; padding repeats the last token
    const int want_targets[12] = {IGNORE_TARGET, 102, 103, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET,
                                  IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET, 204, 205, IGNORE_TARGET};
    const int want_tokens[12] = {100, 101, 102, 103, 103, 103, 200, 201, 202, 203, 204, 205};
    for (int i = 0; i < 12; i++) {
        CHECK(batch.targets[i] == want_targets[i]);
        CHECK(batch.tokens[i] == want_tokens[i]);
    }
    CHECK(example_loss_weight(&set.examples[0], 0.0f) == 2.0);
    batch_arrays_free(&arrays);
    examples_free(&set);
}

TEST_CASE("examples: prompt-loss weight: every token but a sample's last learns its next, weighted") {
    ExampleSet set = make_set({4, 6, 3});
    ExampleSet packed;
    REQUIRE(examples_pack(&set, 13, 7, &packed) == 0);   // all three fit one sequence
    REQUIRE(packed.count == 1);
    for (const ExampleSet *s : {&set, &packed}) {
        std::vector<int> order(s->count);
        for (int i = 0; i < s->count; i++) order[i] = i;
        BatchArrays arrays;
        Batch batch = examples_batch(s, order.data(), 0, s->count, 0.25f, &arrays);
        REQUIRE(batch.weights != NULL);
        CHECK((batch.positions != NULL) == (s == &packed));
        double weight_sum = 0.0, want_sum = 0.0;
        for (int i = 0; i < s->count; i++) want_sum += example_loss_weight(&s->examples[i], 0.25f);
        for (int r = 0; r < batch.n_seqs; r++) {
            const Example *e = &s->examples[r];
            for (int t = 0; t < batch.seq_len; t++) {
                int i = r * batch.seq_len + t;
                weight_sum += batch.weights[i];
                bool real = t < e->n_tokens;
                // the last token of a sample: its position is followed by a 0, or the row ends
                bool last = real && (t + 1 == e->n_tokens || (e->positions && e->positions[t + 1] == 0));
                if (!real || last) {
                    CHECK(batch.weights[i] == 0.0f);
                    CHECK(batch.targets[i] == IGNORE_TARGET);
                } else {
                    CHECK(batch.targets[i] == e->ids[t + 1]);   // the next token of the same sample
                    CHECK(batch.weights[i] == (e->targets[t] != IGNORE_TARGET ? 1.0f : 0.25f));
                }
            }
        }
        // 13 tokens of 3 samples: 10 have a next token, 6 of them answer tokens: 6 + 0.25 * 4
        CHECK(weight_sum == doctest::Approx(7.0));
        CHECK(want_sum == doctest::Approx(7.0));
        batch_arrays_free(&arrays);
    }
    examples_free(&packed);
    examples_free(&set);
}

// 6 samples in micro-batches of 4: an epoch is 4 + 2, and every sample comes once
// per epoch (before, the 2 left over were dropped and the order reshuffled).
TEST_CASE("examples: an epoch trains on every sample once, its last micro-batch taking the samples left") {
    const int n_samples = 6, batch = 4;
    int order[n_samples] = {0, 1, 2, 3, 4, 5};
    uint64_t rng = 1234;
    int cursor = 0, first = -1;
    CHECK(examples_micro_batches_per_epoch(n_samples, batch) == 2);
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[n_samples] = {0};
        int sizes[2];
        for (int m = 0; m < 2; m++) {
            sizes[m] = examples_next_micro_batch(order, n_samples, batch, &cursor, &rng, &first);
            for (int i = 0; i < sizes[m]; i++) seen[order[first + i]]++;
        }
        CHECK(sizes[0] == 4);
        CHECK(sizes[1] == 2);
        for (int s = 0; s < n_samples; s++) CHECK_MESSAGE(seen[s] == 1, "epoch " << epoch << ", sample " << s);
    }
    CHECK(examples_micro_batches_per_epoch(8, 4) == 2);
    CHECK(examples_micro_batches_per_epoch(1, 4) == 1);
}
