// The shared evaluation code (eval/eval.c): a rendered sample splits into the
// prompt (everything up to the assistant's answer), the reference answer
// text, the question and its language, for every sample of the repo's sample
// set and a Korean one; both loaders give each sample its oracle and its
// documents (a ./prepare .bin through the recorded lengths); an answer is
// grounded when it overlaps its oracle document more than any distractor;
// the summary averages ROUGE and cosine and pools the loss over answer
// tokens; ./evaluate's comparison counts each metric on the samples it
// applies to, per language, with intervals and the paired change.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/raft.h"
#include "data/tokfile.h"
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
    REQUIRE(e.question != nullptr);
    CHECK(std::string(e.question) == std::string(s->question));
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
    free(e.question);
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

TEST_CASE("eval: a sample's language is its question's: Hangul makes it Korean") {
    const Model &m = default_model();
    char en_question[] = "Which tool installs .deb files?", ko_question[] = "데비안의 기본 패키지 관리자는 무엇인가요?";
    char answer[] = "dpkg (데비안 패키지).", document[] = "dpkg installs .deb files.";
    char *documents[1] = {document};
    for (char *question : {en_question, ko_question}) {
        RaftSample r = {question, answer, documents, 1, 0};
        EvalSample e;
        memset(&e, 0, sizeof e);
        e.n_tokens = raft_encode(m.tokenizer, &r, &e.ids, &e.targets);
        REQUIRE(eval_split_sample(m.tokenizer, &e) == 0);
        CHECK(e.korean == (question == ko_question));   // the answer's Hangul does not count
        free(e.ids);
        free(e.targets);
        free(e.reference);
        free(e.question);
    }
}

TEST_CASE("eval: both loaders give each sample its oracle and its documents") {
    const Model &m = default_model();
    RaftData data;
    char err[1024];
    REQUIRE(raft_read_jsonl(&data, "data/sample_raft.jsonl", err, sizeof err) == 0);
    // the JSONL file as ./evaluate reads it, and as a ./prepare .bin with documents cut to 60 bytes
    std::vector<TokSample> tok(data.count);
    std::vector<std::vector<int>> lengths(data.count);
    for (int i = 0; i < data.count; i++) {
        const RaftSample &r = data.samples[i];
        int full, cut;
        size_t budget;
        tok[i].n_tokens = raft_encode_fit(m.tokenizer, &r, 150, &tok[i].ids, &tok[i].targets, &full, &cut, &budget);
        REQUIRE(tok[i].n_tokens > 0);
        for (int d = 0; d < r.n_documents; d++) lengths[i].push_back((int)raft_kept_bytes(r.documents[d], budget));
        tok[i].oracle = r.oracle;
        tok[i].n_documents = r.n_documents;
        tok[i].document_bytes = lengths[i].data();
    }
    char dir[] = "/tmp/qlora_eval_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string bin = std::string(dir) + "/val.bin";
    REQUIRE_MESSAGE(tokfile_write(bin.c_str(), m.tokenizer, tok.data(), data.count, 0, err, sizeof err) == 0, err);
    for (TokSample &t : tok) { free(t.ids); free(t.targets); }
    for (const char *path : {"data/sample_raft.jsonl", bin.c_str()}) {
        INFO(path);
        int count;
        EvalSample *samples = eval_load_samples(path, m.tokenizer, 100, &count, err, sizeof err);
        REQUIRE_MESSAGE(samples, err);
        REQUIRE(count == data.count);
        bool cut = path == bin.c_str();
        for (int i = 0; i < count; i++) {
            const RaftSample &r = data.samples[i];
            CHECK(samples[i].oracle == r.oracle);
            REQUIRE(samples[i].n_documents == r.n_documents);
            for (int d = 0; d < r.n_documents; d++) {
                std::string whole = r.documents[d];
                std::string expected = cut ? whole.substr(0, lengths[i][d]) : whole;
                CHECK(std::string(samples[i].documents[d]) == expected);
            }
            CHECK(std::string(samples[i].question) == r.question);
            CHECK(!samples[i].korean);
        }
        eval_free_samples(samples, count);
    }
    unlink(bin.c_str());
    rmdir(dir);
    raft_free(&data);
}

TEST_CASE("eval: an answer is grounded when it overlaps its oracle document more than every distractor") {
    const Model &m = default_model();
    char err[1024];
    int count;
    EvalSample *samples = eval_load_samples("data/sample_raft.jsonl", m.tokenizer, 8, &count, err, sizeof err);
    REQUIRE_MESSAGE(samples, err);
    InferState state;
    REQUIRE(infer_state_init(&state, &m.config, 400, 256) == 0);
    Embedder embedder;
    REQUIRE_MESSAGE(embedder_load(&embedder, EMBED_DEFAULT_MODEL_DIR, err, sizeof err) == 0, err);
    const char *texts[1] = {"The documents do not say."};
    for (int i : {0, 6}) {   // one with the oracle, one without
        const EvalSample &s = samples[i];
        EvalOutcome o = eval_sample(&m, &state, &embedder, &s, 12, texts, 1);
        REQUIRE(!o.non_finite);
        if (s.oracle < 0) {
            CHECK(o.grounded == -1);
            CHECK(std::isnan(o.oracle_overlap));
        } else {
            double best = 0;
            for (int d = 0; d < s.n_documents; d++) {
                double p = rouge_score(o.answer, s.documents[d], ROUGE_TOKENIZE_DEFAULT, 0).kind[ROUGE_L].precision;
                if (d == s.oracle) CHECK(o.oracle_overlap == doctest::Approx(p));
                else best = p > best ? p : best;
            }
            CHECK(o.distractor_overlap == doctest::Approx(best));
            CHECK(o.grounded == (o.oracle_overlap > best));
        }
        CHECK(o.similarity == doctest::Approx(o.similarity));   // English: a number
        CHECK(o.n_counted > 0);
        free(o.answer);
    }
    embedder_free(&embedder);
    infer_state_free(&state);
    eval_free_samples(samples, count);
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
    o[1].similarity = NAN;   // a Korean sample has no cosine
    CHECK(eval_summarize(o, 2).similarity.mean == doctest::Approx(0.5));
}

TEST_CASE("eval: the comparison counts each metric on its samples, per language, with paired changes") {
    // samples: English with the oracle (x2), Korean with the oracle, English and Korean without
    EvalSample samples[5];
    memset(samples, 0, sizeof samples);
    int oracle[5] = {0, 1, 0, -1, -1}, korean[5] = {0, 0, 1, 0, 1};
    EvalOutcome base[5], tuned[5];
    memset(base, 0, sizeof base);
    memset(tuned, 0, sizeof tuned);
    for (int i = 0; i < 5; i++) {
        samples[i].oracle = oracle[i];
        samples[i].korean = korean[i];
        base[i].rouge.kind[ROUGE_1].f1 = 0.1 * i;
        tuned[i].rouge.kind[ROUGE_1].f1 = 0.1 * i + 0.2;
        base[i].similarity = korean[i] ? NAN : 0.5f;
        tuned[i].similarity = korean[i] ? NAN : 0.5f;
        base[i].abstained = i == 1;
        tuned[i].abstained = oracle[i] < 0;
        base[i].loss_sum = 2.0 * (i + 1);
        base[i].n_counted = i + 1;
        tuned[i].loss_sum = 1.0 * (i + 1);
        tuned[i].n_counted = i + 1;
    }
    EvalComparison c = eval_compare(samples, base, tuned, 5, 500, 7);
    // ROUGE: the three with the oracle (0, 0.1, 0.2; tuned +0.2 each)
    CHECK(c.cell[EVAL_ROUGE1][EVAL_ALL].n == 3);
    CHECK(c.cell[EVAL_ROUGE1][EVAL_ALL].arm[0].estimate == doctest::Approx(0.1));
    CHECK(c.cell[EVAL_ROUGE1][EVAL_ALL].change.estimate == doctest::Approx(0.2));
    CHECK(c.cell[EVAL_ROUGE1][EVAL_ALL].change.low == doctest::Approx(0.2));
    CHECK(c.cell[EVAL_ROUGE1][EVAL_ENGLISH].n == 2);
    CHECK(c.cell[EVAL_ROUGE1][EVAL_KOREAN].n == 1);
    CHECK(c.cell[EVAL_ROUGE1][EVAL_KOREAN].arm[1].estimate == doctest::Approx(0.4));
    // cosine: English with the oracle only; grounded: no documents known, so no samples
    CHECK(c.cell[EVAL_COSINE][EVAL_ALL].n == 2);
    CHECK(c.cell[EVAL_COSINE][EVAL_KOREAN].n == 0);
    CHECK(std::isnan(c.cell[EVAL_COSINE][EVAL_KOREAN].arm[0].estimate));
    CHECK(c.cell[EVAL_GROUNDED][EVAL_ALL].n == 0);
    // abstention on the two without the oracle, false abstention on the three with it
    CHECK(c.cell[EVAL_ABSTENTION][EVAL_ALL].n == 2);
    CHECK(c.cell[EVAL_ABSTENTION][EVAL_ALL].arm[0].estimate == doctest::Approx(0.0));
    CHECK(c.cell[EVAL_ABSTENTION][EVAL_ALL].arm[1].estimate == doctest::Approx(1.0));
    CHECK(interval_excludes_zero(c.cell[EVAL_ABSTENTION][EVAL_ALL].change));
    CHECK(c.cell[EVAL_FALSE_ABSTENTION][EVAL_ALL].arm[0].estimate == doctest::Approx(1.0 / 3));
    CHECK(c.cell[EVAL_FALSE_ABSTENTION][EVAL_ENGLISH].arm[0].estimate == doctest::Approx(0.5));
    // the loss, pooled over answer tokens on all five: 2 per token, then 1
    CHECK(c.cell[EVAL_LOSS][EVAL_ALL].n == 5);
    CHECK(c.cell[EVAL_LOSS][EVAL_ALL].arm[0].estimate == doctest::Approx(2.0));
    CHECK(c.cell[EVAL_LOSS][EVAL_ALL].change.high == doctest::Approx(-1.0));
    // without a fine-tuned arm: no change
    EvalComparison alone = eval_compare(samples, base, nullptr, 5, 500, 7);
    CHECK(alone.cell[EVAL_ROUGE1][EVAL_ALL].arm[0].estimate == doctest::Approx(0.1));
    CHECK(std::isnan(alone.cell[EVAL_ROUGE1][EVAL_ALL].arm[1].estimate));
    CHECK(std::isnan(alone.cell[EVAL_ROUGE1][EVAL_ALL].change.estimate));
}

TEST_CASE("eval: ./evaluate reports every sample and each metric's interval, per language and kind") {
    char dir[] = "/tmp/qlora_evaluate_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, out = d + "/eval.json", log = d + "/log.txt";
    std::string command = "./evaluate --data data/sample_raft.jsonl --max-new 4 --resamples 200 --seed 5 --examples 0 "
                          "--out " + out + " > " + log + " 2>&1";
    REQUIRE(system(command.c_str()) == 0);
    char err[1024];
    size_t len;
    char *text = read_file(log.c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err);
    std::string printed = text;
    free(text);
    CHECK(printed.find("8 samples: 6 with the oracle (6 English, 0 Korean), 2 without (2 English, 0 Korean)") !=
          std::string::npos);
    CHECK(printed.find("[95% percentile bootstrap interval, 200 resamples, seed 5]") != std::string::npos);
    CHECK(printed.find("  abstention         all         2   ") != std::string::npos);
    JsonValue *report = json_parse_file(out.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(report, err);
    // every sample: its language, kind, answer and scores
    const JsonValue *rows = json_get(report, "per_sample");
    REQUIRE((rows && rows->count == 8));
    for (size_t i = 0; i < rows->count; i++) {
        const JsonValue *row = &rows->items[i];
        CHECK(std::string(json_get_string(row, "language", "")) == "en");
        CHECK(std::string(json_get_string(row, "kind", "")) == (i < 6 ? "oracle" : "no_oracle"));
        const JsonValue *base = json_get(row, "base");
        REQUIRE(base);
        CHECK(json_get(base, "answer")->type == JSON_STRING);
        CHECK(json_get(base, "abstained")->type == JSON_BOOL);
        CHECK(json_get(base, "grounded")->type == (i < 6 ? JSON_BOOL : JSON_NULL));
        CHECK(json_get(base, "rougeL_f1")->type == JSON_NUMBER);
        CHECK(json_get(base, "cosine")->type == JSON_NUMBER);
        CHECK(json_get_number(base, "loss", -1) > 0);
        CHECK(json_get(row, "fine_tuned") == nullptr);
    }
    // the summaries: each metric's samples and interval; none for Korean here
    const JsonValue *all = json_get(json_get(report, "summary"), "all");
    REQUIRE(all);
    CHECK(json_get_number(json_get(all, "rouge1_f1"), "n", 0) == 6);
    CHECK(json_get_number(json_get(all, "abstention"), "n", 0) == 2);
    CHECK(json_get_number(json_get(all, "answer_loss"), "n", 0) == 8);
    const JsonValue *loss = json_get(json_get(all, "answer_loss"), "base");
    const JsonValue *ci = json_get(loss, "ci95");
    REQUIRE((ci && ci->count == 2));
    CHECK(ci->items[0].number <= json_get_number(loss, "mean", NAN));
    CHECK(ci->items[1].number >= json_get_number(loss, "mean", NAN));
    const JsonValue *korean = json_get(json_get(json_get(report, "summary"), "korean"), "answer_loss");
    CHECK(json_get_number(korean, "n", -1) == 0);
    CHECK(json_get(json_get(korean, "base"), "mean")->type == JSON_NULL);
    CHECK(json_get_number(json_get(report, "bootstrap"), "resamples", 0) == 200);
    json_free(report);
    char *svg = read_file((d + "/eval.svg").c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(svg, err);
    CHECK(std::string(svg).find("abstention, all (n = 2)") != std::string::npos);
    free(svg);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}
