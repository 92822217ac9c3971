// Tests for data/raft.c: reading the sample RAFT file, rejecting each kind of
// bad line with "path:line: reason", and the answer-only shifted targets of a
// rendered sample (with the default model's tokenizer).
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/raft.h"
#include "test_util.h"

static const char *SAMPLE_PATH = "data/sample_raft.jsonl";

// A file under /tmp holding the given text, removed at the end of the scope.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string &text) {
        char name[] = "/tmp/test_raft_XXXXXX";
        int fd = mkstemp(name);
        REQUIRE(fd >= 0);
        REQUIRE(write(fd, text.data(), text.size()) == (ssize_t)text.size());
        close(fd);
        path = name;
    }
    ~TempFile() { unlink(path.c_str()); }
};

// Reads text as a JSONL file; returns the status and the error message.
static int read_text(const std::string &text, std::string *error, std::string *path) {
    TempFile file(text);
    RaftData data;
    char err[512] = "";
    int status = raft_read_jsonl(&data, file.path.c_str(), err, sizeof err);
    if (status != 0) {
        CHECK(data.count == 0);
        CHECK(data.samples == nullptr);
    }
    raft_free(&data);
    *error = err;
    *path = file.path;
    return status;
}

TEST_CASE("raft: reads the sample file") {
    RaftData data;
    char err[512] = "";
    REQUIRE_MESSAGE(raft_read_jsonl(&data, SAMPLE_PATH, err, sizeof err) == 0, err);
    CHECK(data.count == 8);
    const RaftSample &first = data.samples[0];
    CHECK(std::string(first.question) == "Which command refreshes the list of packages that apt knows about?");
    CHECK(first.n_documents == 3);
    CHECK(first.oracle == 1);
    CHECK(std::string(first.documents[first.oracle]).find("apt update") != std::string::npos);
    CHECK(std::string(first.answer).find("apt update") != std::string::npos);
    int without_oracle = 0;
    for (int i = 0; i < data.count; i++) {
        const RaftSample &s = data.samples[i];
        CHECK(s.n_documents >= 3);
        CHECK(s.oracle >= -1);
        CHECK(s.oracle < s.n_documents);
        if (s.oracle == -1) {
            without_oracle++;
            CHECK(std::string(s.answer).find("documents do not") != std::string::npos);
        }
    }
    CHECK(without_oracle == 2);
    raft_free(&data);
}

TEST_CASE("raft: each kind of bad line is an error naming path:line") {
    const std::string good =
        R"({"question": "q?", "answer": "a.", "documents": ["d0", "d1", "d2"], "oracle": 1})";
    struct BadLine {
        std::string line;
        std::string reason;
    };
    const std::vector<BadLine> cases = {
        {R"({"question": "q?", "answer": )", "invalid JSON: column"},
        {"{\"question\": \"q\xff?\", \"answer\": \"a.\", \"documents\": [\"d0\"], \"oracle\": 0}", "invalid UTF-8"},
        {R"(["q?", "a."])", "expected a JSON object"},
        {R"({"answer": "a.", "documents": ["d0"], "oracle": 0})", "missing \"question\""},
        {R"({"question": 7, "answer": "a.", "documents": ["d0"], "oracle": 0})", "\"question\" must be a string"},
        {R"({"question": " \t", "answer": "a.", "documents": ["d0"], "oracle": 0})", "\"question\" is empty"},
        {R"({"question": "q\u0000?", "answer": "a.", "documents": ["d0"], "oracle": 0})", "NUL character"},
        {R"({"question": "q?", "documents": ["d0"], "oracle": 0})", "missing \"answer\""},
        {R"({"question": "q?", "answer": "", "documents": ["d0"], "oracle": 0})", "\"answer\" is empty"},
        {R"({"question": "q?", "answer": "a.", "oracle": 0})", "missing \"documents\""},
        {R"({"question": "q?", "answer": "a.", "documents": "d0", "oracle": 0})", "must be an array of strings"},
        {R"({"question": "q?", "answer": "a.", "documents": [], "oracle": null})", "\"documents\" is empty"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0", 1], "oracle": 0})",
         "\"documents\"[1] must be a string"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0", ""], "oracle": 0})", "\"documents\"[1] is empty"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0"]})", "missing \"oracle\""},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0"], "oracle": "0"})", "whole number"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0"], "oracle": 0.5})", "whole number"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0", "d1"], "oracle": 2})", "\"oracle\" is 2"},
        {R"({"question": "q?", "answer": "a.", "documents": ["d0", "d1"], "oracle": -1})", "\"oracle\" is -1"},
    };
    for (const BadLine &c : cases) {
        // line 1 good, line 2 blank, line 3 bad, line 4 good
        std::string error, path;
        int status = read_text(good + "\n\n" + c.line + "\n" + good + "\n", &error, &path);
        CHECK_MESSAGE(status == -1, c.line);
        CHECK_MESSAGE(error.find(path + ":3: ") == 0, error);
        CHECK_MESSAGE(error.find(c.reason) != std::string::npos, error, " (expected: ", c.reason, ")");
    }
    std::string error, path;
    CHECK(read_text(good + "\r\n" + good, &error, &path) == 0);   // CRLF line ends, no final newline
}

TEST_CASE("raft: an empty file or a missing file is an error") {
    std::string error, path;
    CHECK(read_text("", &error, &path) == -1);
    CHECK(error == path + ": no samples");
    CHECK(read_text("\n  \n\n", &error, &path) == -1);
    CHECK(error == path + ": no samples");
    RaftData data;
    char err[512] = "";
    CHECK(raft_read_jsonl(&data, "/tmp/no_such_raft_file.jsonl", err, sizeof err) == -1);
    CHECK(std::string(err).find("/tmp/no_such_raft_file.jsonl") == 0);
}

// The whole chat as raft_encode should render it.
static std::string expected_chat(const RaftSample &s) {
    std::string user;
    for (int i = 0; i < s.n_documents; i++) user += "[" + std::to_string(i + 1) + "] " + s.documents[i] + "\n";
    user += std::string("\nQuestion: ") + s.question;
    return std::string("<|im_start|>system\n") + RAFT_SYSTEM_PROMPT + "<|im_end|>\n" + "<|im_start|>user\n" + user +
           "<|im_end|>\n" + "<|im_start|>assistant\n" + s.answer + "<|im_end|>\n";
}

static std::string decode(const Tokenizer *t, const std::vector<int> &ids) {
    size_t len = 0;
    char *text = tokenizer_decode(t, ids.data(), (int)ids.size(), &len);
    std::string out(text, len);
    free(text);
    return out;
}

TEST_CASE("raft: targets are the answer tokens and <|im_end|>, shifted by one") {
    const Tokenizer *tok = default_model().tokenizer;
    RaftData data;
    char err[512] = "";
    REQUIRE_MESSAGE(raft_read_jsonl(&data, SAMPLE_PATH, err, sizeof err) == 0, err);
    for (int i = 0; i < data.count; i++) {
        const RaftSample &s = data.samples[i];
        int *ids = nullptr, *targets = nullptr;
        int n = raft_encode(tok, &s, &ids, &targets);
        REQUIRE(n > 2);
        std::vector<int> all(ids, ids + n);
        CHECK(decode(tok, all) == expected_chat(s));
        CHECK(targets[n - 1] == IGNORE_TARGET);
        // The labelled positions form one run; each names the token after it.
        std::vector<int> answer;
        int first = -1, last = -1;
        for (int t = 0; t < n; t++) {
            if (targets[t] == IGNORE_TARGET) continue;
            CHECK(targets[t] == ids[t + 1]);
            if (first < 0) first = t;
            last = t;
            answer.push_back(targets[t]);
        }
        REQUIRE(first >= 0);
        CHECK(last - first + 1 == (int)answer.size());
        CHECK(decode(tok, answer) == std::string(s.answer) + "<|im_end|>");
        CHECK(answer.back() == tokenizer_find(tok, "<|im_end|>"));
        // the labels start right after "<|im_start|>assistant\n"
        std::vector<int> before(ids, ids + first + 1);
        std::string prefix = decode(tok, before);
        CHECK(prefix.size() >= 22);
        CHECK(prefix.substr(prefix.size() - 22) == "<|im_start|>assistant\n");
        free(ids);
        free(targets);
    }
    raft_free(&data);
}
