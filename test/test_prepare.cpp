// Tests for ./prepare and its pieces in data/: RAFT construction (oracle
// always there unless left out on purpose, its position spread over every
// slot, seeds), the split by question, fitting a sample by cutting documents
// only, the checks on the committed bad-input corpus (test/fixtures/raft_bad/,
// each bad line named with file:line), the token file (round trip, every
// corruption refused, another tokenizer refused also by ./train), the Debian
// FAQ reader against Python's html.parser (test/fixtures/faq_sections.json,
// dev/fixtures/make_faq_reference.py), ./prepare end to end in English and Korean, and
// a mutation fuzz of every reader.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/checks.h"
#include "data/collection.h"
#include "data/faq.h"
#include "data/jsonl.h"
#include "data/raft.h"
#include "data/raft_build.h"
#include "data/tokfile.h"
#include "ops/random.h"
#include "test_util.h"

namespace {

// A fresh folder under /tmp, removed at the end of the scope.
struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/test_prepare_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::string command = "rm -rf " + path;
        if (system(command.c_str()) != 0) fprintf(stderr, "could not remove %s\n", path.c_str());
    }
};

void write_file(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary);
    out << bytes;
    REQUIRE(out.good());
}

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

const Tokenizer *tokenizer() { return default_model().tokenizer; }

std::string decode(const int *ids, int n) {
    size_t len = 0;
    char *text = tokenizer_decode(tokenizer(), ids, n, &len);
    std::string out(text, len);
    free(text);
    return out;
}

// The labelled tokens of a sample (targets that are not IGNORE_TARGET), decoded.
std::string labelled_text(const int *targets, int n) {
    std::vector<int> labelled;
    for (int t = 0; t < n; t++)
        if (targets[t] != IGNORE_TARGET) labelled.push_back(targets[t]);
    return decode(labelled.data(), (int)labelled.size());
}

// A collection of n_documents documents ("document D: ...") and n_questions
// questions, question q pointing at document q % n_documents; every second
// question in Korean when korean is set.
void make_collection(Collection *c, Report *r, int n_documents, int n_questions, bool korean) {
    for (int d = 0; d < n_documents; d++) {
        std::string id = "doc" + std::to_string(d), text = "document " + std::to_string(d) + ": some text.";
        REQUIRE(collection_add_document(c, r, "test", id.c_str(), nullptr, text.c_str()) == 0);
    }
    for (int q = 0; q < n_questions; q++) {
        std::string question = korean && q % 2 ? "질문 " + std::to_string(q) + "은 무엇인가요?"
                                               : "What is question " + std::to_string(q) + "?";
        std::string answer = "answer " + std::to_string(q) + ".", id = "doc" + std::to_string(q % n_documents);
        REQUIRE(collection_add_pair(c, r, "test", question.c_str(), answer.c_str(), id.c_str()) == 0);
    }
}

RaftBuildOptions build_options(int distractors, double no_oracle, uint64_t seed) {
    return RaftBuildOptions{distractors, no_oracle, seed, RAFT_NO_ORACLE_ANSWER_EN, RAFT_NO_ORACLE_ANSWER_KO};
}

bool same_samples(const RaftData &a, const RaftData &b) {
    if (a.count != b.count) return false;
    for (int i = 0; i < a.count; i++) {
        const RaftSample &x = a.samples[i], &y = b.samples[i];
        if (strcmp(x.question, y.question) || strcmp(x.answer, y.answer) || x.oracle != y.oracle ||
            x.n_documents != y.n_documents)
            return false;
        for (int d = 0; d < x.n_documents; d++)
            if (strcmp(x.documents[d], y.documents[d])) return false;
    }
    return true;
}

}  // namespace

// ---- RAFT construction ---------------------------------------------------------------

TEST_CASE("prepare: every sample holds its oracle, at every slot alike, among distractors from other documents") {
    Collection c = {};
    Report r = {};
    make_collection(&c, &r, 12, 400, false);
    RaftData data = {};
    RaftBuildOptions o = build_options(3, 0.0, 1);
    REQUIRE(raft_build(&c, &o, &data) == 0);
    REQUIRE(data.count == 400);
    int at_slot[4] = {0, 0, 0, 0};
    std::set<std::string> used_as_distractor;
    for (int i = 0; i < data.count; i++) {
        const RaftSample &s = data.samples[i];
        const char *oracle_text = c.documents[c.pairs[i].document].text;
        CHECK(std::string(s.question) == c.pairs[i].question);
        CHECK(std::string(s.answer) == c.pairs[i].answer);
        REQUIRE(s.n_documents == 4);
        REQUIRE(s.oracle >= 0);
        REQUIRE(s.oracle < 4);
        CHECK(std::string(s.documents[s.oracle]) == oracle_text);
        at_slot[s.oracle]++;
        std::set<std::string> distinct;
        for (int d = 0; d < 4; d++) {
            distinct.insert(s.documents[d]);
            if (d != s.oracle) {
                CHECK(std::string(s.documents[d]) != oracle_text);
                used_as_distractor.insert(s.documents[d]);
            }
        }
        CHECK(distinct.size() == 4);
    }
    // 400 samples over 4 slots: 100 expected at each, standard deviation 8.7
    for (int slot = 0; slot < 4; slot++) {
        CHECK_MESSAGE(at_slot[slot] >= 70, "slot ", slot);
        CHECK_MESSAGE(at_slot[slot] <= 130, "slot ", slot);
    }
    CHECK(used_as_distractor.size() == 12);
    raft_free(&data);
    collection_free(&c);
    report_free(&r);
}

TEST_CASE("prepare: a share of the samples gets distractors only, answered in the question's language") {
    Collection c = {};
    Report r = {};
    make_collection(&c, &r, 10, 100, true);
    for (double share : {0.0, 0.2, 1.0}) {
        RaftData data = {};
        RaftBuildOptions o = build_options(3, share, 5);
        REQUIRE(raft_build(&c, &o, &data) == 0);
        int without = 0;
        for (int i = 0; i < data.count; i++) {
            const RaftSample &s = data.samples[i];
            if (s.oracle >= 0) continue;
            without++;
            CHECK(s.n_documents == 3);
            for (int d = 0; d < s.n_documents; d++)
                CHECK(std::string(s.documents[d]) != c.documents[c.pairs[i].document].text);
            bool korean = text_has_hangul(s.question);
            CHECK(std::string(s.answer) == (korean ? RAFT_NO_ORACLE_ANSWER_KO : RAFT_NO_ORACLE_ANSWER_EN));
        }
        CHECK(without == (int)(share * 100 + 0.5));
        raft_free(&data);
    }
    CHECK(text_has_hangul("질문"));
    CHECK(!text_has_hangul("question, ça, 質問"));
    collection_free(&c);
    report_free(&r);

    // a single document: no distractor to draw, so every sample keeps its oracle
    Collection one = {};
    Report r1 = {};
    make_collection(&one, &r1, 1, 5, false);
    RaftData data = {};
    RaftBuildOptions o = build_options(3, 1.0, 5);
    REQUIRE(raft_build(&one, &o, &data) == 0);
    for (int i = 0; i < data.count; i++) {
        CHECK(data.samples[i].n_documents == 1);
        CHECK(data.samples[i].oracle == 0);
    }
    raft_free(&data);
    collection_free(&one);
    report_free(&r1);
}

TEST_CASE("prepare: the same seed gives the same samples, another seed other ones") {
    Collection c = {};
    Report r = {};
    make_collection(&c, &r, 20, 50, true);
    RaftData a = {}, b = {}, other = {};
    RaftBuildOptions o7 = build_options(3, 0.2, 7), o8 = build_options(3, 0.2, 8);
    REQUIRE(raft_build(&c, &o7, &a) == 0);
    REQUIRE(raft_build(&c, &o7, &b) == 0);
    REQUIRE(raft_build(&c, &o8, &other) == 0);
    CHECK(same_samples(a, b));
    CHECK(!same_samples(a, other));
    raft_free(&a);
    raft_free(&b);
    raft_free(&other);
    collection_free(&c);
    report_free(&r);
}

TEST_CASE("prepare: the split holds out whole questions, by seed") {
    // 50 questions, two samples each (a sample and its no-oracle twin, say)
    RaftData data = {};
    for (int q = 0; q < 100; q++) {
        RaftSample s = {};
        s.question = strdup(("question " + std::to_string(q % 50)).c_str());
        s.answer = strdup("answer");
        s.documents = (char **)calloc(1, sizeof(char *));
        s.documents[0] = strdup("document");
        s.n_documents = 1;
        REQUIRE(raft_append(&data, &s) == 0);
    }
    std::vector<unsigned char> is_val(100), again(100), other_seed(100);
    CHECK(raft_split(&data, 0.1, 0, 3, is_val.data()) == 5);
    CHECK(raft_split(&data, 0.1, 0, 3, again.data()) == 5);
    CHECK(raft_split(&data, 0.1, 0, 4, other_seed.data()) == 5);
    CHECK(is_val == again);
    CHECK(is_val != other_seed);
    int held = 0;
    for (int i = 0; i < 100; i++) {
        held += is_val[i];
        CHECK(is_val[i] == is_val[(i + 50) % 100]);   // both samples of a question on the same side
    }
    CHECK(held == 10);
    CHECK(raft_split(&data, 0.0, 0, 3, is_val.data()) == 0);
    CHECK(raft_split(&data, 0.99, 0, 3, is_val.data()) == 49);   // one question always stays for training
    // a minimum of questions: taken when it is at most a quarter of them, never with --val-frac 0
    CHECK(raft_split(&data, 0.1, 12, 3, is_val.data()) == 12);
    CHECK(raft_split(&data, 0.1, 13, 3, is_val.data()) == 5);
    CHECK(raft_split(&data, 0.3, 12, 3, is_val.data()) == 15);
    CHECK(raft_split(&data, 0.0, 12, 3, is_val.data()) == 0);
    held = 0;
    for (int i = 0; i < 100; i++) held += is_val[i];
    CHECK(held == 0);
    CHECK(raft_split(&data, 0.1, 12, 3, is_val.data()) == 12);
    for (int i = 0; i < 100; i++) {
        held += is_val[i];
        CHECK(is_val[i] == is_val[(i + 50) % 100]);
    }
    CHECK(held == 24);
    raft_free(&data);
}

// ---- fitting to --max-seq -------------------------------------------------------------

TEST_CASE("prepare: fitting cuts the documents alike, never the question or the answer") {
    std::string long_en, long_ko;
    for (int i = 0; i < 60; i++) long_en += "The package manager keeps a list of sources. ";
    for (int i = 0; i < 40; i++) long_ko += "패키지 관리자는 소스 목록을 유지합니다. ";
    std::string short_doc = "A short document.";
    const char *documents[3] = {long_en.c_str(), long_ko.c_str(), short_doc.c_str()};
    RaftSample s = {};
    s.question = (char *)"Where does apt keep its list of sources?";
    s.answer = (char *)"In /etc/apt/sources.list and the files of /etc/apt/sources.list.d/.";
    s.documents = (char **)documents;
    s.n_documents = 3;
    s.oracle = 0;
    int *ids, *targets;
    int full = raft_encode(tokenizer(), &s, &ids, &targets);
    REQUIRE(full > 600);
    free(ids);
    free(targets);
    for (int max_tokens : {full + 5, full, 600, 300, 140}) {
        int full_tokens = 0, cut = 0;
        size_t doc_bytes = 0;
        int n = raft_encode_fit(tokenizer(), &s, max_tokens, &ids, &targets, &full_tokens, &cut, &doc_bytes);
        REQUIRE(n > 0);
        CHECK(n <= max_tokens);
        CHECK(full_tokens == full);
        CHECK(cut == (full > max_tokens));
        CHECK(labelled_text(targets, n) == std::string(s.answer) + "<|im_end|>");
        std::string text = decode(ids, n);
        CHECK(text.find(std::string("\nQuestion: ") + s.question + "<|im_end|>") != std::string::npos);
        CHECK(text.find("\xEF\xBF\xBD") == std::string::npos);   // no character cut in half
        // what is left of each document is its beginning, all cut to the same budget
        size_t kept[3];
        for (int d = 0; d < 3; d++) {
            std::string label = "[" + std::to_string(d + 1) + "] ";
            size_t start = text.find(label) + label.size();
            size_t end = text.find(d < 2 ? "\n[" + std::to_string(d + 2) + "] " : std::string("\n\nQuestion: "), start);
            REQUIRE(start != std::string::npos);
            REQUIRE(end != std::string::npos);
            kept[d] = end - start;
            CHECK(std::string(documents[d]).compare(0, kept[d], text, start, kept[d]) == 0);
            CHECK(kept[d] == raft_kept_bytes(documents[d], doc_bytes));   // what ./prepare records
        }
        // the recorded lengths find the documents again (as ./evaluate does)
        size_t user = text.find("<|im_start|>user\n") + 17;
        int lengths[3] = {(int)kept[0], (int)kept[1], (int)kept[2]};
        char *parsed[3];
        REQUIRE(raft_parse_documents(text.c_str() + user, text.size() - user, lengths, 3, parsed) == 0);
        for (int d = 0; d < 3; d++) {
            CHECK(std::string(parsed[d]) == std::string(documents[d], kept[d]));
            free(parsed[d]);
        }
        lengths[1]++;
        CHECK(raft_parse_documents(text.c_str() + user, text.size() - user, lengths, 3, parsed) == -1);
        CHECK(parsed[0] == nullptr);
        if (cut) {
            CHECK(kept[0] < long_en.size());
            CHECK(kept[1] + 3 >= kept[0]);   // the same byte budget, less a cut character
            CHECK(kept[1] <= kept[0] + 3);
        }
        CHECK(kept[2] == std::min(short_doc.size(), cut ? kept[0] : short_doc.size()));
        free(ids);
        free(targets);
    }
    // when even empty documents do not fit, nothing is written
    int full_tokens = 0, cut = 0;
    size_t doc_bytes = 0;
    CHECK(raft_encode_fit(tokenizer(), &s, 40, &ids, &targets, &full_tokens, &cut, &doc_bytes) == 0);
    CHECK(ids == nullptr);
    CHECK(targets == nullptr);
}

// ---- the checks on the bad-input corpus ---------------------------------------------------

struct Expected {
    int line;
    DropReason why;
    const char *reason;
};

// r's problems are exactly the expected ones, in order, each "path:line: reason...".
static void check_problems(const Report &r, const std::string &path, const std::vector<Expected> &expected) {
    long counted[N_DROP_REASONS] = {};
    REQUIRE(r.n_problems == (int)expected.size());
    for (size_t i = 0; i < expected.size(); i++) {
        std::string prefix = path + ":" + std::to_string(expected[i].line) + ": ";
        std::string problem = r.problems[i];
        CHECK_MESSAGE(problem.find(prefix) == 0, problem, " (expected ", prefix, ")");
        CHECK_MESSAGE(problem.find(expected[i].reason) != std::string::npos, problem, " (expected ", expected[i].reason, ")");
        counted[expected[i].why]++;
    }
    for (int why = 0; why < N_DROP_REASONS; why++) CHECK_MESSAGE(r.dropped[why] == counted[why], DROP_REASON_NAMES[why]);
}

TEST_CASE("prepare: ready samples from the bad-input corpus: each bad line named, counted and skipped") {
    const std::string path = "test/fixtures/raft_bad/samples.jsonl";
    const std::vector<Expected> expected = {
        {4, DROP_INVALID_JSON, "invalid JSON: column 29: unexpected end of input"},
        {5, DROP_INVALID_JSON, "invalid UTF-8 inside string"},
        {6, DROP_SCHEMA, "expected a JSON object"},
        {7, DROP_SCHEMA, "\"question\" must be a string"},
        {8, DROP_SCHEMA, "missing \"answer\""},
        {9, DROP_SCHEMA, "\"documents\" must be an array of strings"},
        {10, DROP_SCHEMA, "\"oracle\" is 2 but the documents are numbered 0 to 1"},
        {11, DROP_SCHEMA, "\"oracle\" must be a document index"},
        {12, DROP_MISSING, "\"question\" is empty"},
        {13, DROP_MISSING, "\"answer\" is null"},
        {14, DROP_MISSING, "\"documents\" is empty"},
        {15, DROP_MISSING, "\"context\" is empty"},
        {16, DROP_DUPLICATE, "the same question and answer"},
        {18, DROP_SCHEMA, "missing \"documents\" (or \"context\")"},
        {19, DROP_SCHEMA, "NUL character"},
        {21, DROP_INVALID_JSON, "extra text after the JSON value"},
        {22, DROP_INVALID_JSON, "expected ',' or '}' in object"},
    };
    Report r = {};
    RaftData data = {};
    char err[1024] = "";
    REQUIRE_MESSAGE(raft_read_checked(&data, &r, path.c_str(), err, sizeof err) == 0, err);
    check_problems(r, path, expected);
    CHECK(r.lines == 21);   // 22 lines, one blank
    CHECK(r.questions == 4);
    REQUIRE(data.count == 4);
    CHECK(std::string(data.samples[1].question) == "Where are .deb files cached?");   // the "context" form
    CHECK(data.samples[1].n_documents == 1);
    CHECK(data.samples[1].oracle == 0);
    CHECK(data.samples[2].oracle == -1);   // "oracle": null
    CHECK(std::string(data.samples[3].question) == "패키지를 어떻게 설치하나요?");
    raft_free(&data);
    report_free(&r);

    // --strict stops at the first bad line
    Report strict = {};
    strict.strict = 1;
    CHECK(raft_read_checked(&data, &strict, path.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err).find(path + ":4: stopped at the first bad line (--strict)") == 0);
    CHECK(strict.dropped[DROP_INVALID_JSON] == 1);
    raft_free(&data);
    report_free(&strict);
}

TEST_CASE("prepare: documents and questions from the bad-input corpus: each bad line named, counted and skipped") {
    const std::string docs = "test/fixtures/raft_bad/docs.jsonl", qa = "test/fixtures/raft_bad/qa.jsonl";
    Report r = {};
    Collection c = {};
    char err[1024] = "";
    REQUIRE_MESSAGE(collection_read(&c, &r, docs.c_str(), qa.c_str(), err, sizeof err) == 0, err);
    REQUIRE(r.n_problems == 13);
    const std::vector<Expected> doc_problems = {
        {3, DROP_SCHEMA, "document id \"apt\" is used twice"},
        {4, DROP_MISSING, "\"id\" is empty"},
        {5, DROP_MISSING, "\"text\" is empty"},
        {6, DROP_SCHEMA, "\"id\" must be a string"},
        {7, DROP_SCHEMA, "missing \"id\""},
        {8, DROP_SCHEMA, "\"title\" must be a string"},
        {9, DROP_INVALID_JSON, "invalid JSON: column 1"},
    };
    const std::vector<Expected> qa_problems = {
        {3, DROP_UNKNOWN_DOCUMENT, "\"doc\" is \"nope\", which no document has as its id"},
        {4, DROP_DUPLICATE, "the same question and answer"},
        {5, DROP_MISSING, "\"answer\" is empty"},
        {6, DROP_SCHEMA, "\"doc\" (the id of the source document) must be a string"},
        {8, DROP_SCHEMA, "missing \"doc\""},
        {10, DROP_INVALID_JSON, "unterminated string"},
    };
    std::vector<Expected> all = doc_problems;
    for (const Expected &e : qa_problems) all.push_back(e);
    long counted[N_DROP_REASONS] = {};
    for (size_t i = 0; i < all.size(); i++) {
        const std::string &path = i < doc_problems.size() ? docs : qa;
        std::string prefix = path + ":" + std::to_string(all[i].line) + ": ", problem = r.problems[i];
        CHECK_MESSAGE(problem.find(prefix) == 0, problem, " (expected ", prefix, ")");
        CHECK_MESSAGE(problem.find(all[i].reason) != std::string::npos, problem, " (expected ", all[i].reason, ")");
        counted[all[i].why]++;
    }
    for (int why = 0; why < N_DROP_REASONS; why++) CHECK_MESSAGE(r.dropped[why] == counted[why], DROP_REASON_NAMES[why]);
    CHECK(r.lines == 22);
    REQUIRE(c.n_documents == 5);
    CHECK(std::string(c.documents[0].text) == "APT\nRun apt update before installing anything new.");   // title, then text
    CHECK(std::string(c.documents[1].text) == "dpkg installs single .deb files and resolves no dependencies.");
    CHECK(std::string(c.documents[4].text) == "A null title means no title.");
    REQUIRE(c.n_pairs == 4);
    CHECK(std::string(c.pairs[2].question) == "apt remove는 무엇을 남기나요?");
    CHECK(std::string(c.documents[c.pairs[2].document].id) == "ko");
    collection_free(&c);
    report_free(&r);
}

TEST_CASE("prepare: an empty file, a huge line, invalid UTF-8, binary junk and a missing file") {
    TempDir dir;
    char err[1024] = "";
    std::string path = dir.path + "/input.jsonl";
    const std::string good = R"({"question": "q?", "answer": "a.", "context": "c."})";

    write_file(path, "");
    Report r = {};
    RaftData data = {};
    CHECK(raft_read_checked(&data, &r, path.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err) == path + ": the file is empty");
    Collection c = {};
    CHECK(collection_read(&c, &r, path.c_str(), path.c_str(), err, sizeof err) == -1);
    CHECK(std::string(err) == path + ": the file is empty");

    CHECK(raft_read_checked(&data, &r, "/tmp/no_such_prepare_input.jsonl", err, sizeof err) == -1);
    CHECK(std::string(err).find("/tmp/no_such_prepare_input.jsonl: cannot open") == 0);

    // a line over the limit is reported, not parsed; the lines around it are read
    std::string huge = R"({"question": ")" + std::string(JSONL_MAX_LINE_BYTES, 'a') + R"(", "answer": "a", "context": "c"})";
    write_file(path, good + "\n" + huge + "\n\xEF\xBB\xBF\n" +
                         "{\"question\": \"\xC3\x28\", \"answer\": \"a\", \"context\": \"c\"}\n" + good + "x\n");
    report_free(&r);
    r = Report{};
    REQUIRE(raft_read_checked(&data, &r, path.c_str(), err, sizeof err) == 0);
    CHECK(data.count == 1);
    REQUIRE(r.n_problems == 4);
    CHECK(std::string(r.problems[0]).find(path + ":2: line is ") == 0);
    CHECK(std::string(r.problems[0]).find("longer than the limit") != std::string::npos);
    CHECK(std::string(r.problems[1]).find(path + ":3: invalid JSON") == 0);   // a byte-order mark inside the file
    CHECK(std::string(r.problems[2]).find(path + ":4: invalid JSON: column 15: invalid UTF-8 inside string") == 0);
    CHECK(std::string(r.problems[3]).find(path + ":5: invalid JSON") == 0);
    CHECK(r.dropped[DROP_INVALID_JSON] == 4);
    raft_free(&data);

    // a byte-order mark at the start of the file is not part of the first line
    write_file(path, "\xEF\xBB\xBF" + good + "\r\n");
    report_free(&r);
    r = Report{};
    CHECK(raft_read_checked(&data, &r, path.c_str(), err, sizeof err) == 0);
    CHECK(data.count == 1);
    raft_free(&data);

    // binary junk: every line dropped, nothing crashes
    std::string junk;
    uint64_t state = 42;
    for (int i = 0; i < 4096; i++) junk += (char)(splitmix64_next(&state) & 0xFF);
    write_file(path, junk);
    report_free(&r);
    r = Report{};
    CHECK(raft_read_checked(&data, &r, path.c_str(), err, sizeof err) == 0);
    CHECK(data.count == 0);
    CHECK(report_total_dropped(&r) == r.lines);
    raft_free(&data);
    report_free(&r);
}

// ---- the token file ------------------------------------------------------------------------

namespace {

// Three samples with consistent targets (the last two tokens labelled); the
// first has no oracle and two documents, the others their oracle among s + 1.
std::vector<TokSample> small_samples(std::vector<std::vector<int>> *storage) {
    std::vector<TokSample> samples;
    storage->clear();
    for (int s = 0; s < 3; s++) {
        std::vector<int> ids, targets;
        for (int t = 0; t < 5 + s; t++) ids.push_back(100 * s + t + 1);
        for (size_t t = 0; t < ids.size(); t++) targets.push_back(t + 3 >= ids.size() && t + 1 < ids.size() ? ids[t + 1] : IGNORE_TARGET);
        storage->push_back(ids);
        storage->push_back(targets);
        storage->push_back(s == 0 ? std::vector<int>{70, 9} : std::vector<int>(s + 1, 1000 + s));
    }
    for (int s = 0; s < 3; s++)
        samples.push_back(TokSample{(*storage)[3 * s].data(), (*storage)[3 * s + 1].data(), (int)(*storage)[3 * s].size(),
                                    s == 0 ? -1 : s, (int)(*storage)[3 * s + 2].size(), (*storage)[3 * s + 2].data()});
    return samples;
}

uint32_t little_u32(const std::string &bytes, size_t at) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) x |= (uint32_t)(unsigned char)bytes[at + i] << (8 * i);
    return x;
}

// bytes with the header's checksum (FNV-1a of everything after the header) made to match.
static std::string with_checksum(std::string bytes) {
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = TOKFILE_HEADER_BYTES; i < bytes.size(); i++) h = (h ^ (unsigned char)bytes[i]) * 1099511628211ULL;
    for (int k = 0; k < 8; k++) bytes[56 + k] = (char)(h >> (8 * k));
    return bytes;
}

}  // namespace

TEST_CASE("prepare: the token file reads back what was written, in the documented layout") {
    TempDir dir;
    std::string path = dir.path + "/train.bin";
    std::vector<std::vector<int>> storage;
    std::vector<TokSample> samples = small_samples(&storage);
    char err[1024] = "";
    REQUIRE_MESSAGE(tokfile_write(path.c_str(), tokenizer(), samples.data(), 3, 0, err, sizeof err) == 0, err);
    std::string bytes = read_bytes(path);
    // each sample: count, ids, targets, oracle, document count, document lengths
    REQUIRE(bytes.size() == TOKFILE_HEADER_BYTES + 3 * 4 + 8 * (5 + 6 + 7) + 3 * 8 + 4 * (2 + 2 + 3));
    CHECK(bytes.substr(0, 8) == "QLORATOK");
    CHECK(little_u32(bytes, 8) == 3);
    CHECK(little_u32(bytes, 12) == 49152);
    CHECK(little_u32(bytes, 24) == 3);
    CHECK(little_u32(bytes, 32) == 18);
    CHECK(little_u32(bytes, 40) == 6);
    CHECK(little_u32(bytes, 48) == 0);   // the set id given
    CHECK(with_checksum(bytes) == bytes);   // the checksum: FNV-1a of everything after the header
    CHECK(little_u32(bytes, 64) == 5);   // the first sample: its count, ids, targets
    CHECK(little_u32(bytes, 68) == 1);
    CHECK(little_u32(bytes, 68 + 4 * 5) == (uint32_t)IGNORE_TARGET);
    CHECK(little_u32(bytes, 68 + 8 * 5) == 0xFFFFFFFFu);   // oracle -1
    CHECK(little_u32(bytes, 72 + 8 * 5) == 2);
    CHECK(little_u32(bytes, 76 + 8 * 5) == 70);
    CHECK(little_u32(bytes, 80 + 8 * 5) == 9);

    TokFile file;
    REQUIRE_MESSAGE(tokfile_read(&file, path.c_str(), tokenizer(), err, sizeof err) == 0, err);
    REQUIRE(file.count == 3);
    CHECK(file.n_tokens == 18);
    CHECK(file.n_labelled == 6);
    for (int s = 0; s < 3; s++) {
        REQUIRE(file.samples[s].n_tokens == samples[s].n_tokens);
        for (int t = 0; t < samples[s].n_tokens; t++) {
            CHECK(file.samples[s].ids[t] == samples[s].ids[t]);
            CHECK(file.samples[s].targets[t] == samples[s].targets[t]);
        }
        CHECK(file.samples[s].oracle == samples[s].oracle);
        REQUIRE(file.samples[s].n_documents == samples[s].n_documents);
        for (int d = 0; d < samples[s].n_documents; d++)
            CHECK(file.samples[s].document_bytes[d] == samples[s].document_bytes[d]);
    }
    tokfile_free(&file);

    // an oracle that is not one of the sample's documents is not written
    samples[1].oracle = 2;
    CHECK(tokfile_write(path.c_str(), tokenizer(), samples.data(), 3, 0, err, sizeof err) == -1);
    CHECK(std::string(err).find("sample 2: oracle 2 is neither -1 nor one of its 2 documents") != std::string::npos);

    // an empty set is a valid file too (a validation split can be empty)
    REQUIRE(tokfile_write(path.c_str(), tokenizer(), nullptr, 0, 0, err, sizeof err) == 0);
    REQUIRE(tokfile_read(&file, path.c_str(), tokenizer(), err, sizeof err) == 0);
    CHECK(file.count == 0);
    tokfile_free(&file);
}

TEST_CASE("prepare: a truncated or corrupted token file, or one of another tokenizer, is refused") {
    TempDir dir;
    std::string path = dir.path + "/train.bin", bad = dir.path + "/bad.bin";
    std::vector<std::vector<int>> storage;
    std::vector<TokSample> samples = small_samples(&storage);
    char err[1024] = "";
    REQUIRE(tokfile_write(path.c_str(), tokenizer(), samples.data(), 3, 0, err, sizeof err) == 0);
    std::string bytes = read_bytes(path);
    TokFile file;
    for (size_t len = 0; len < bytes.size(); len++) {
        write_file(bad, bytes.substr(0, len));
        CHECK_MESSAGE(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1, "length ", len);
        CHECK(std::string(err).find(bad + ":") == 0);
    }
    // a flipped bit anywhere in the samples: the checksum no longer matches
    for (size_t at = TOKFILE_HEADER_BYTES; at < bytes.size(); at += 7) {
        std::string flipped = bytes;
        flipped[at] ^= 0x01;
        write_file(bad, flipped);
        CHECK_MESSAGE(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1, "sample byte ", at);
        CHECK_MESSAGE(std::string(err).find("the samples do not match the file's checksum") != std::string::npos, err);
    }
    // the checks behind the checksum, on files whose checksum was made to match
    write_file(bad, with_checksum(bytes + "x"));
    CHECK(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("bytes after the last sample") != std::string::npos);
    // every header byte matters: magic, version, vocabulary, tokenizer id, counts (not the set
    // id, which ./train compares between train.bin and val.bin), checksum
    for (size_t at = 0; at < TOKFILE_HEADER_BYTES; at++) {
        if (at >= 48 && at < 56) continue;
        std::string flipped = bytes;
        flipped[at] ^= 0x10;
        write_file(bad, flipped);
        CHECK_MESSAGE(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1, "header byte ", at);
    }
    // an id outside the vocabulary, a target that is not the next token
    std::string wrong = bytes;
    wrong[68 + 3] = 0x7F;
    write_file(bad, with_checksum(wrong));
    CHECK(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("outside the vocabulary") != std::string::npos);
    wrong = bytes;
    wrong[68 + 4 * 5 + 4 * 2] = 9;
    write_file(bad, with_checksum(wrong));
    CHECK(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("neither -100 nor the next token") != std::string::npos);
    // an oracle outside the sample's documents
    wrong = bytes;
    wrong[68 + 8 * 5] = 2;
    for (int i = 1; i < 4; i++) wrong[68 + 8 * 5 + i] = 0;
    write_file(bad, with_checksum(wrong));
    CHECK(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("sample 1: oracle 2 is neither -1 nor one of its 2 documents") != std::string::npos);
    // a version 2 file (before the set id): refused, ./prepare named
    wrong = bytes;
    wrong[8] = 2;
    write_file(bad, wrong);
    CHECK(tokfile_read(&file, bad.c_str(), tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("format version 2, this program reads version 3; run ./prepare again") != std::string::npos);
    // a JSONL file given where a token file belongs
    CHECK(tokfile_read(&file, "data/sample_raft.jsonl", tokenizer(), err, sizeof err) == -1);
    CHECK(std::string(err).find("not a tokenized training file") != std::string::npos);

    // another tokenizer: a different id, and the file is refused with both named
    char tok_err[1024];
    Tokenizer *tiny = tokenizer_from_json("test/fixtures/tokenizer_tiny_gpt2.json", tok_err, sizeof tok_err);
    REQUIRE_MESSAGE(tiny != nullptr, tok_err);
    CHECK(tokenizer_id(tiny) != tokenizer_id(tokenizer()));
    CHECK(tokfile_read(&file, path.c_str(), tiny, err, sizeof err) == -1);
    CHECK(std::string(err).find(path + ": made with a different tokenizer") == 0);
    tokenizer_free(tiny);
}

TEST_CASE("prepare: ./train refuses a token file made with another tokenizer") {
    TempDir dir;
    char err[1024];
    Tokenizer *tiny = tokenizer_from_json("test/fixtures/tokenizer_tiny_gpt2.json", err, sizeof err);
    REQUIRE_MESSAGE(tiny != nullptr, err);
    int ids[4] = {1, 2, 3, 4}, targets[4] = {IGNORE_TARGET, 3, 4, IGNORE_TARGET};
    TokSample sample = {ids, targets, 4, -1, 0, nullptr};
    std::string path = dir.path + "/train.bin";
    REQUIRE(tokfile_write(path.c_str(), tiny, &sample, 1, 0, err, sizeof err) == 0);
    tokenizer_free(tiny);
    std::string log = dir.path + "/log.txt";
    std::string command = "./train --data " + path + " --steps 1 --device cpu --out " + dir.path + "/out > " + log + " 2>&1";
    CHECK(system(command.c_str()) != 0);
    std::string output = read_bytes(log);
    CHECK_MESSAGE(output.find(path + ": made with a different tokenizer") != std::string::npos, output);
}

// ---- the Debian FAQ ---------------------------------------------------------------------------

TEST_CASE("prepare: HTML to text: tags, entities, lists, <pre>, comments") {
    const std::string html =
        "<p>Hello &amp; <em>world</em></p><p>\nSecond&nbsp;para &#8220;q&#x201D; AT&T &foo;</p>"
        "<ul class=\"x\"><li><p>one</p></li><li>two</li></ul><pre class=\"screen\">  apt update\n  apt install foo\n</pre>"
        "<!-- comment <p>x</p> --><table><tr><td>a</td><td>b</td></tr></table>1.1.\xC2\xA0Title&#0;";
    char *text = html_to_text(html.data(), html.size());
    REQUIRE(text != nullptr);
    CHECK(std::string(text) ==
          "Hello & world\nSecond para \xE2\x80\x9Cq\xE2\x80\x9D AT&T &foo;\n- one\n- two\n  apt update\n  apt install foo\n"
          "a b\n1.1. Title\xEF\xBF\xBD");
    free(text);
    // broken HTML ends the text, it does not crash
    for (const char *broken : {"<p unterminated", "&#x", "text &", "<!-- open", "<", "&#99999999999;"}) {
        text = html_to_text(broken, strlen(broken));
        REQUIRE(text != nullptr);
        free(text);
    }
}

TEST_CASE("prepare: FAQ answers end at a sentence and fit their token budget") {
    const char *text = "Debian is a free operating system. It is made by volunteers.\nIt runs on many machines!";
    for (int budget : {16, 20, 30, 100}) {
        char *answer = faq_answer(text, tokenizer(), budget);
        REQUIRE(answer != nullptr);
        std::string a = answer;
        free(answer);
        int *ids;
        int n = tokenizer_encode(tokenizer(), a.c_str(), a.size(), 0, &ids);
        free(ids);
        CHECK(n <= budget);
        CHECK(std::string(text).compare(0, a.size(), a) == 0);
        if (budget >= 30) CHECK(a == text);
        else CHECK((a == "Debian is a free operating system." || a == "Debian is a free operating system. It is made by volunteers."));
    }
    // a first sentence longer than the budget is cut after a word
    char *answer = faq_answer("one two three four five six seven eight nine ten eleven twelve.", tokenizer(), 5);
    CHECK(std::string(answer) == "one two three four five");   // five tokens
    free(answer);
    answer = faq_answer("패키지를 설치하려면 apt install을 실행합니다. 의존 패키지도 함께 설치됩니다.", tokenizer(), 16);
    int *ids;
    CHECK(tokenizer_encode(tokenizer(), answer, strlen(answer), 0, &ids) <= 16);
    free(ids);
    CHECK(strlen(answer) > 0);
    free(answer);
}

namespace {
uint64_t fnv1a64_without_whitespace(const std::string &text) {
    uint64_t h = 14695981039346656037ULL;
    for (unsigned char c : text)
        if (c != ' ' && c != '\n' && c != '\t' && c != '\r') h = (h ^ c) * 1099511628211ULL;
    return h;
}
}  // namespace

TEST_CASE("prepare: the Debian FAQ's sections are the ones Python's html.parser finds") {
    char err[4096];
    JsonValue *reference = json_parse_file("test/fixtures/faq_sections.json", err, sizeof err);
    REQUIRE_MESSAGE(reference != nullptr, err);
    const JsonValue *sections = json_get(reference, "sections");
    REQUIRE(sections != nullptr);
    Report r = {};
    Collection en = {}, ko = {};
    REQUIRE_MESSAGE(faq_read(&en, &r, "data/faq/debian-faq", "en", tokenizer(), 48, err, sizeof err) == 0, err,
                    " (make fetches the FAQ: dev/fetch/fetch_faq.sh)");
    REQUIRE_MESSAGE(faq_read(&ko, &r, "data/faq/debian-faq", "ko", tokenizer(), 48, err, sizeof err) == 0, err);
    CHECK(r.lines == (long)sections->count);
    int next[2] = {0, 0}, empty = 0;
    for (size_t i = 0; i < sections->count; i++) {
        const JsonValue *s = &sections->items[i];
        if (json_get(s, "empty")->boolean) { empty++; continue; }
        std::string id = json_get_string(s, "id", "");
        int lang = id.compare(0, 3, "ko:") == 0;
        const Collection &c = lang ? ko : en;
        REQUIRE(next[lang] < c.n_documents);
        const Document &d = c.documents[next[lang]++];
        CHECK(std::string(d.id) == id);
        std::string title = json_get_string(s, "title", ""), text = d.text;
        CHECK_MESSAGE(text.compare(0, title.size() + 1, title + "\n") == 0, id);
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_without_whitespace(text.substr(title.size() + 1)));
        CHECK_MESSAGE(std::string(hash) == json_get_string(s, "text_fnv1a64", ""), id);
    }
    CHECK(next[0] == en.n_documents);
    CHECK(next[1] == ko.n_documents);
    CHECK(r.dropped[DROP_MISSING] == empty);
    // untranslated Korean sections repeat the English question and answer
    CHECK(r.dropped[DROP_DUPLICATE] == 12);
    CHECK(en.n_pairs + ko.n_pairs == 282);
    for (const Collection *c : {&en, &ko})
        for (int i = 0; i < c->n_pairs; i++) {
            const QAPair &p = c->pairs[i];
            std::string body = strchr(c->documents[p.document].text, '\n') + 1;
            CHECK(body.compare(0, strlen(p.answer), p.answer) == 0);   // the answer is the section's beginning
            CHECK(strlen(p.answer) > 0);
            int *ids;
            CHECK(tokenizer_encode(tokenizer(), p.answer, strlen(p.answer), 0, &ids) <= 48);
            free(ids);
        }
    collection_free(&en);
    collection_free(&ko);
    report_free(&r);
    json_free(reference);
}

// ---- ./prepare end to end -------------------------------------------------------------------------

TEST_CASE("prepare: ./prepare on the example data, English and Korean, through the token file") {
    TempDir dir;
    std::string command = "./prepare --docs data/example/docs.jsonl --qa data/example/qa.jsonl --val-frac 0.2 --seed 3 --out ";
    std::string quiet = " > " + dir.path + "/log.txt 2>&1";
    REQUIRE(system((command + dir.path + "/a" + quiet).c_str()) == 0);
    std::string log = read_bytes(dir.path + "/log.txt");
    CHECK(log.find("report") != std::string::npos);
    CHECK(log.find("histogram of rendered lengths") != std::string::npos);
    char err[4096];
    JsonValue *report = json_parse_file((dir.path + "/a/report.json").c_str(), err, sizeof err);
    REQUIRE_MESSAGE(report != nullptr, err);
    CHECK(json_get_number(report, "samples", 0) == 10);
    CHECK(json_get_number(report, "dropped_total", -1) == 0);
    CHECK(json_get_number(json_get(report, "train"), "samples", 0) == 8);
    CHECK(json_get_number(json_get(report, "val"), "samples", 0) == 2);
    CHECK(json_get_number(json_get(report, "val"), "english", 0) + json_get_number(json_get(report, "val"), "korean", 0) == 2);
    CHECK(json_get_number(json_get(report, "settings"), "val_min", 0) == 30);
    CHECK(json_get_number(json_get(report, "lengths_written"), "max", 0) > 0);
    json_free(report);

    // every sample read back: the ids are the tokenizer's encoding of the decoded chat,
    // and the labels decode to an answer of qa.jsonl (or the no-oracle answer) and <|im_end|>
    std::set<std::string> answers = {RAFT_NO_ORACLE_ANSWER_EN, RAFT_NO_ORACLE_ANSWER_KO};
    {
        JsonlFile qa;
        REQUIRE(jsonl_open(&qa, "data/example/qa.jsonl", err, sizeof err) == 0);
        size_t len;
        const char *line;
        while ((line = jsonl_next(&qa, &len)) != nullptr) {
            JsonValue *v = json_parse(line, len, err, sizeof err);
            REQUIRE(v != nullptr);
            answers.insert(json_get_string(v, "answer", ""));
            json_free(v);
        }
        jsonl_close(&qa);
    }
    int korean = 0, read = 0;
    for (const char *name : {"/a/train.bin", "/a/val.bin"}) {
        TokFile file;
        REQUIRE_MESSAGE(tokfile_read(&file, (dir.path + name).c_str(), tokenizer(), err, sizeof err) == 0, err);
        for (long i = 0; i < file.count; i++) {
            const TokSample &s = file.samples[i];
            std::string chat = decode(s.ids, s.n_tokens);
            int *ids;
            int n = tokenizer_encode(tokenizer(), chat.c_str(), chat.size(), 1, &ids);
            CHECK(std::vector<int>(ids, ids + n) == std::vector<int>(s.ids, s.ids + s.n_tokens));
            free(ids);
            std::string labelled = labelled_text(s.targets, s.n_tokens);
            REQUIRE(labelled.size() > 10);
            std::string answer = labelled.substr(0, labelled.size() - 10);
            CHECK(labelled.substr(answer.size()) == "<|im_end|>");
            CHECK_MESSAGE(answers.count(answer) == 1, answer);
            CHECK(chat.compare(0, 19, "<|im_start|>system\n") == 0);
            // the oracle says which samples got the no-oracle answer; the lengths find the documents
            bool no_oracle = answer == RAFT_NO_ORACLE_ANSWER_EN || answer == RAFT_NO_ORACLE_ANSWER_KO;
            CHECK(no_oracle == (s.oracle == -1));
            std::vector<char *> documents(s.n_documents + 1);
            size_t user = chat.find("<|im_start|>user\n") + 17;
            CHECK(raft_parse_documents(chat.c_str() + user, chat.size() - user, s.document_bytes, s.n_documents,
                                       documents.data()) == 0);
            for (int d = 0; d < s.n_documents; d++) free(documents[d]);
            korean += text_has_hangul(chat.substr(chat.find("\nQuestion: ")).c_str());
            read++;
        }
        tokfile_free(&file);
    }
    CHECK(read == 10);
    CHECK(korean == 2);

    // the same seed writes the same bytes, another seed others
    REQUIRE(system((command + dir.path + "/b" + quiet).c_str()) == 0);
    CHECK(read_bytes(dir.path + "/a/train.bin") == read_bytes(dir.path + "/b/train.bin"));
    std::string other = "./prepare --docs data/example/docs.jsonl --qa data/example/qa.jsonl --val-frac 0.2 --seed 4 --out ";
    REQUIRE(system((other + dir.path + "/c" + quiet).c_str()) == 0);
    CHECK(read_bytes(dir.path + "/a/train.bin") != read_bytes(dir.path + "/c/train.bin"));

    // bad usage and bad input: a message and a non-zero exit
    CHECK(system(("./prepare" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("give a source") != std::string::npos);
    CHECK(system(("./prepare --input test/fixtures/raft_bad/samples.jsonl --strict --out " + dir.path + "/d" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("samples.jsonl:4: stopped at the first bad line (--strict)") != std::string::npos);
    // an empty --out would write to the root folder; a second --input would replace the first
    CHECK(system(("./prepare --input data/sample_raft.jsonl --out ''" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("prepare: --out expects a value, got ''") != std::string::npos);
    CHECK(system(("./prepare --input data/sample_raft.jsonl --input data/example/qa.jsonl --out " + dir.path + "/e" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("prepare: --input given twice") != std::string::npos);
    // --faq-lang picks the FAQ's languages, so it needs the FAQ and one of en, ko, both
    CHECK(system(("./prepare --input data/sample_raft.jsonl --faq-lang ko --out " + dir.path + "/f" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("prepare: --faq-lang goes with --debian-faq") != std::string::npos);
    CHECK(system(("./prepare --debian-faq data/faq/debian-faq --faq-lang fr --out " + dir.path + "/f" + quiet).c_str()) != 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("prepare: --faq-lang expects en, ko or both, got fr") != std::string::npos);
    CHECK(system(("./prepare --help" + quiet).c_str()) == 0);
    CHECK(read_bytes(dir.path + "/log.txt").find("--max-seq N              tokens per sample at most (default 2048)") != std::string::npos);
}

// ---- statistics and the report --------------------------------------------------------------------

TEST_CASE("prepare: train.bin, val.bin and report.json carry one set id; ./train refuses a mixed pair") {
    TempDir dir;
    std::string command = "./prepare --docs data/example/docs.jsonl --qa data/example/qa.jsonl --val-frac 0.2 --out ";
    std::string quiet = " > " + dir.path + "/log.txt 2>&1";
    REQUIRE(system((command + dir.path + "/a --seed 3" + quiet).c_str()) == 0);
    REQUIRE(system((command + dir.path + "/b --seed 4" + quiet).c_str()) == 0);
    char err[4096];
    JsonValue *report = json_parse_file((dir.path + "/a/report.json").c_str(), err, sizeof err);
    REQUIRE_MESSAGE(report != nullptr, err);
    std::string set_id = json_get_string(report, "set_id", "");
    json_free(report);
    REQUIRE(set_id.size() == 16);
    // the header's u64 at 48, as the report writes it
    for (const char *name : {"/a/train.bin", "/a/val.bin"}) {
        std::string bytes = read_bytes(dir.path + name);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)little_u32(bytes, 48) |
                 (unsigned long long)little_u32(bytes, 52) << 32);
        CHECK_MESSAGE(set_id == hex, name);
    }
    CHECK(read_bytes(dir.path + "/a/val.bin").substr(48, 8) != read_bytes(dir.path + "/b/val.bin").substr(48, 8));
    // a val.bin of another run beside train.bin: refused, both named
    REQUIRE(system(("cp " + dir.path + "/b/val.bin " + dir.path + "/a/val.bin").c_str()) == 0);
    std::string train = "./train --data " + dir.path + "/a/train.bin --steps 1 --device cpu --out " + dir.path + "/run";
    CHECK(system((train + quiet).c_str()) != 0);
    std::string log = read_bytes(dir.path + "/log.txt");
    CHECK_MESSAGE(log.find("train: " + dir.path + "/a/val.bin: from another run of ./prepare than " + dir.path +
                           "/a/train.bin") != std::string::npos, log);
}

TEST_CASE("prepare: length statistics (nearest rank), histogram and the JSON report") {
    std::vector<int> lengths;
    for (int i = 100; i >= 1; i--) lengths.push_back(i);
    LengthStats s;
    length_stats_compute(lengths.data(), (long)lengths.size(), 90, &s);
    CHECK(s.count == 100);
    CHECK(s.mean == doctest::Approx(50.5));
    CHECK(s.median == 50);
    CHECK(s.p95 == 95);
    CHECK(s.max == 100);
    CHECK(s.over_limit == 10);
    int three[3] = {7, 1, 4};
    length_stats_compute(three, 3, 5, &s);
    CHECK(s.median == 4);
    CHECK(s.p95 == 7);
    Histogram h;
    histogram_compute(lengths.data(), (long)lengths.size(), &h);
    CHECK(h.width == 32);
    CHECK(h.counts[0] == 31);   // 1..31
    CHECK(h.counts[1] == 32);
    CHECK(h.counts[2] == 32);
    CHECK(h.counts[3] == 5);    // 96..100

    TempDir dir;
    Report r = {};
    r.max_seq = 90;
    r.lines = 3;
    r.samples = 2;
    r.dropped[DROP_DUPLICATE] = 1;
    report_drop(&r, DROP_SCHEMA, "file.jsonl:3", "a \"quoted\" reason, cut mid-character \xEA\xB0");
    r.rendered = s;
    r.histogram = h;
    std::string path = dir.path + "/report.json";
    char err[1024];
    REQUIRE(report_write_json(&r, path.c_str(), err, sizeof err) == 0);
    JsonValue *json = json_parse_file(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(json != nullptr, err);
    CHECK(json_get_number(json_get(json, "dropped"), "duplicate", 0) == 1);
    CHECK(json_get_number(json_get(json, "dropped"), "schema", 0) == 1);
    CHECK(json_get_number(json, "dropped_total", 0) == 2);
    CHECK(json_get_number(json_get(json, "settings"), "max_seq", 0) == 90);
    CHECK(json_get(json, "histogram")->count == HISTOGRAM_BINS);
    CHECK(std::string(json_get(json, "problems_shown")->items[0].string) ==
          "file.jsonl:3: a \"quoted\" reason, cut mid-character \xEF\xBF\xBD");   // one U+FFFD, as HF's decode
    json_free(json);
    report_free(&r);
}

// ---- fuzz ----------------------------------------------------------------------------------------------

namespace {
// One random edit of text: a byte replaced, deleted or inserted, or the text cut short.
std::string mutate(const std::string &text, uint64_t *state) {
    std::string out = text;
    int edits = 1 + (int)(splitmix64_next(state) % 3);
    for (int e = 0; e < edits && !out.empty(); e++) {
        size_t at = splitmix64_next(state) % out.size();
        char byte = (char)(splitmix64_next(state) % 256);
        switch (splitmix64_next(state) % 4) {
        case 0: out[at] = byte; break;
        case 1: out.erase(at, 1); break;
        case 2: out.insert(out.begin() + (long)at, byte); break;
        default: out.resize(at); break;
        }
    }
    return out;
}

// Mutations of line, one per line (line ends in them become more lines).
std::string mutated_lines(const std::string &line, int count, uint64_t *state) {
    std::string text;
    for (int i = 0; i < count; i++) text += mutate(line, state) + "\n";
    return text;
}
}  // namespace

TEST_CASE("prepare: mutated inputs never crash the readers") {
    TempDir dir;
    uint64_t state = 2024;
    char err[1024];
    std::string samples = dir.path + "/samples.jsonl", docs = dir.path + "/docs.jsonl", qa = dir.path + "/qa.jsonl";
    write_file(samples, mutated_lines(R"({"question": "q?", "answer": "a.", "documents": ["d0", "d1"], "oracle": 1})", 400, &state) +
                            mutated_lines(R"({"question": "질문?", "answer": "답.", "context": "문서"})", 200, &state));
    write_file(docs, R"({"id": "d", "text": "t"})" "\n" + mutated_lines(R"({"id": "d1", "title": "T", "text": "text"})", 300, &state));
    write_file(qa, mutated_lines(R"({"question": "q?", "answer": "a.", "doc": "d1"})", 300, &state));
    Report r = {};
    RaftData data = {};
    REQUIRE(raft_read_checked(&data, &r, samples.c_str(), err, sizeof err) == 0);
    CHECK(r.lines == r.questions + report_total_dropped(&r));
    raft_free(&data);
    report_free(&r);
    r = Report{};
    Collection c = {};
    REQUIRE(collection_read(&c, &r, docs.c_str(), qa.c_str(), err, sizeof err) == 0);
    CHECK(r.lines == r.documents + r.questions + report_total_dropped(&r));
    collection_free(&c);
    report_free(&r);

    const std::string html = "<h2 class=\"title\">1.1. Q?</h2><p>A &amp; <em>b</em> &#8220;c&#8221;</p><ul><li>x</li></ul><pre>p\n</pre>";
    for (int i = 0; i < 500; i++) {
        std::string broken = mutate(html, &state);
        char *text = html_to_text(broken.data(), broken.size());
        REQUIRE(text != nullptr);
        free(text);
    }

    std::vector<std::vector<int>> storage;
    std::vector<TokSample> tok_samples = small_samples(&storage);
    std::string bin = dir.path + "/train.bin";
    REQUIRE(tokfile_write(bin.c_str(), tokenizer(), tok_samples.data(), 3, 0, err, sizeof err) == 0);
    std::string bytes = read_bytes(bin);
    for (int i = 0; i < 300; i++) {
        write_file(bin, mutate(bytes, &state));
        TokFile file;
        if (tokfile_read(&file, bin.c_str(), tokenizer(), err, sizeof err) == 0) tokfile_free(&file);
        else CHECK(std::string(err).find(bin + ":") == 0);
    }
}
