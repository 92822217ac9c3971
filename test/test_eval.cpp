// The shared evaluation code (eval/eval.c): a rendered sample splits into the
// prompt (everything up to the assistant's answer) and the reference answer
// text, for every sample of the repo's sample set and a Korean one; and the
// summary averages ROUGE and cosine and pools the loss over answer tokens.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "data/raft.h"
#include "eval/eval.h"
#include "test_util.h"

// Renders s and splits it; checks the split against the sample's own answer.
static void check_split(const Tokenizer *tok, RaftSample *s) {
    EvalSample e;
    memset(&e, 0, sizeof e);
    e.n_tokens = raft_encode(tok, s, &e.ids, &e.targets);
    REQUIRE(e.n_tokens > 0);
    REQUIRE(eval_split_sample(tok, &e) == 0);
    CHECK(std::string(e.reference) == std::string(s->answer));
    // the prompt ends with the assistant header, so generation starts with the answer
    size_t len;
    char *prompt = tokenizer_decode(tok, e.ids, e.n_prompt, &len);
    std::string p(prompt, len);
    std::string header = "<|im_start|>assistant\n";
    REQUIRE(p.size() >= header.size());
    CHECK(p.substr(p.size() - header.size()) == header);
    // no target inside the prompt but the last position, which predicts the first answer token
    for (int t = 0; t + 1 < e.n_prompt; t++) CHECK(e.targets[t] == IGNORE_TARGET);
    CHECK(e.targets[e.n_prompt - 1] == e.ids[e.n_prompt]);
    free(prompt);
    free(e.ids);
    free(e.targets);
    free(e.reference);
}

TEST_CASE("eval: a rendered sample splits into its prompt and its reference answer") {
    const Model &m = default_model();
    RaftData data;
    char err[512];
    REQUIRE(raft_read_jsonl(&data, "data/sample_raft.jsonl", err, sizeof err) == 0);
    for (int i = 0; i < data.count; i++) check_split(m.tokenizer, &data.samples[i]);
    raft_free(&data);
    char question[] = "데비안의 기본 패키지 관리자는 무엇인가요?", answer[] = "apt와 dpkg입니다.";
    char document[] = "데비안은 dpkg와 apt로 패키지를 관리합니다.";
    char *documents[1] = {document};
    RaftSample korean = {question, answer, documents, 1, 0};
    check_split(m.tokenizer, &korean);
}

TEST_CASE("eval: a sample with no answer token is refused") {
    const Model &m = default_model();
    int ids[3] = {1, 2, 3}, targets[3] = {IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET};
    EvalSample e;
    memset(&e, 0, sizeof e);
    e.ids = ids;
    e.targets = targets;
    e.n_tokens = 3;
    CHECK(eval_split_sample(m.tokenizer, &e) == -1);
}

TEST_CASE("eval: the summary averages the scores and pools the loss over answer tokens") {
    EvalOutcome o[2];
    memset(o, 0, sizeof o);
    o[0].loss_sum = 3.0; o[0].n_counted = 1; o[0].similarity = 0.5f;
    o[1].loss_sum = 3.0; o[1].n_counted = 5; o[1].similarity = 0.7f;
    o[0].rouge.kind[ROUGE_L].f1 = 0.2; o[1].rouge.kind[ROUGE_L].f1 = 0.4;
    EvalSummary s = eval_summarize(o, 2);
    // pooled: (3 + 3) / (1 + 5) = 1, not the mean of 3 and 0.6
    CHECK(s.loss == doctest::Approx(1.0));
    CHECK(s.perplexity == doctest::Approx(std::exp(1.0)));
    CHECK(s.similarity.mean == doctest::Approx(0.6));
    CHECK(s.rouge_f1[ROUGE_L].mean == doctest::Approx(0.3));
    CHECK(s.rouge_f1[ROUGE_L].std == doctest::Approx(std::sqrt(0.02)));   // sample sd of 0.2, 0.4
}
