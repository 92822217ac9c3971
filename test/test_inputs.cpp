// Inputs mean one thing, outputs are well-formed, options are not ambiguous
// (issue 20): a JSON key given twice, a data line with both "context" and
// "documents", a UTF-16 or CR-only file, answers without tokens, text cut
// mid-character (decoded and streamed), options given twice or conflicting,
// an absurd --lr. Programs run as subprocesses where the check is theirs.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "data/raft.h"
#include "data/tokfile.h"
#include "formats/cli.h"
#include "formats/json.h"
#include "formats/utf8.h"
#include "ops/cross_entropy.h"
#include "tokenizer.h"
#include "trainer/examples.h"
#include "test_util.h"

// A file holding text, removed when it goes out of scope.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string &text, const char *suffix = ".jsonl") {
        static int n = 0;
        path = "/tmp/qlora_inputs_" + std::to_string(getpid()) + "_" + std::to_string(n++) + suffix;
        std::ofstream(path, std::ios::binary) << text;
    }
    ~TempFile() { std::remove(path.c_str()); }
};

// Runs command; its exit status, and stdout and stderr together in output.
static int run(const std::string &command, std::string &output) {
    std::string log = "/tmp/qlora_inputs_" + std::to_string(getpid()) + ".log";
    int status = system((command + " > " + log + " 2>&1").c_str());
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    output = text.str();
    std::remove(log.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// ---- JSON: a key given twice -------------------------------------------------------

TEST_CASE("inputs: a JSON object that names a key twice is refused at the second, naming the first") {
    const std::string text = "{\"a\": 1,\n \"b\": {\"a\": 2}, \"a\": 3}";   // the inner "a" is another object's
    char err[256] = "";
    JsonValue *v = json_parse(text.data(), text.size(), err, sizeof err);
    CHECK(v == nullptr);
    CHECK(std::string(err) == "line 2, column 17: duplicate key \"a\" (first at line 1, column 2)");
    json_free(v);
    // the earliest repeat in the text is named, whatever the keys' order
    const std::string two = R"({"z": 1, "y": 2, "y": 3, "z": 4})";
    v = json_parse(two.data(), two.size(), err, sizeof err);
    CHECK(v == nullptr);
    CHECK(std::string(err) == "line 1, column 18: duplicate key \"y\" (first at column 10)");
    json_free(v);
    // a file's error names the file; keys that differ (also by case) are fine
    TempFile file("{\"x\": 1, \"X\": 2,\n\"x\": 3}", ".json");
    v = json_parse_file(file.path.c_str(), err, sizeof err);
    CHECK(v == nullptr);
    CHECK(std::string(err) == file.path + ": line 2, column 1: duplicate key \"x\" (first at line 1, column 2) "
                                          "(not valid JSON)");
    json_free(v);
    const std::string fine = R"({"x": 1, "X": 2, "xx": {"x": 3}, "": [{"x": 4}, {"x": 5}]})";
    v = json_parse(fine.data(), fine.size(), err, sizeof err);
    CHECK(v != nullptr);
    json_free(v);
}

TEST_CASE("inputs: a data line with a key twice is dropped with its file:line:column") {
    TempFile file("{\"question\": \"q\", \"answer\": \"a\", \"answer\": \"b\", \"context\": \"c\"}\n");
    RaftData data;
    char err[512];
    CHECK(raft_read_jsonl(&data, file.path.c_str(), err, sizeof err) != 0);
    CHECK(std::string(err) == file.path + ":1: invalid JSON: column 34: duplicate key \"answer\" (first at column 19)");
}

// ---- data lines and files that mean two things --------------------------------------------

TEST_CASE("inputs: a line with both \"context\" and \"documents\" is refused naming both") {
    TempFile file("{\"question\": \"q\", \"answer\": \"a\", \"context\": \"c\", \"documents\": [\"d\"], \"oracle\": 0}\n");
    RaftData data;
    char err[512];
    CHECK(raft_read_jsonl(&data, file.path.c_str(), err, sizeof err) != 0);
    CHECK(std::string(err).find(file.path + ":1: both \"context\" and \"documents\"") == 0);
}

TEST_CASE("inputs: a file in UTF-16 or with CR-only line ends is named as such") {
    const std::string line = "{\"question\": \"q\", \"answer\": \"a\", \"context\": \"c\"}";
    std::string utf16;
    for (char c : line) utf16 += std::string(1, c) + std::string(1, '\0');
    const std::string big_endian = std::string(1, '\0') + utf16.substr(0, utf16.size() - 1);
    const std::string texts[] = {"\xFF\xFE" + utf16, "\xFE\xFF" + big_endian, utf16,
                                 line + "\r" + line + "\r"};
    const char *const said[] = {"is in UTF-16", "is in UTF-16", "looks like UTF-16", "ends its lines with CR alone"};
    for (int i = 0; i < 4; i++) {
        TempFile file(texts[i]);
        RaftData data;
        char err[512];
        CHECK(raft_read_jsonl(&data, file.path.c_str(), err, sizeof err) != 0);
        CHECK_MESSAGE(std::string(err).find(file.path + ": " + said[i]) == 0, err);
    }
    // CRLF, and one line ending in CR, stay fine
    for (const std::string &text : {line + "\r\n" + line + "\r\n", line + "\r"}) {
        TempFile file(text);
        RaftData data;
        char err[512];
        REQUIRE_MESSAGE(raft_read_jsonl(&data, file.path.c_str(), err, sizeof err) == 0, err);
        raft_free(&data);
    }
}

// ---- answers without tokens ----------------------------------------------------------------

// A control character the default vocabulary has no token for ("" when every one has).
static std::string tokenless_character() {
    for (char c = 1; c < 0x20; c++) {
        int *ids = nullptr;
        int n = tokenizer_encode(default_model().tokenizer, &c, 1, 0, &ids);
        free(ids);
        if (n == 0) return std::string(1, c);
    }
    return "";
}

TEST_CASE("inputs: ./prepare drops a sample whose answer encodes to no tokens, with a count and the reason") {
    std::string lone = tokenless_character();
    REQUIRE_MESSAGE(!lone.empty(), "every control character has a token: pick another tokenless answer");
    std::string text = "{\"question\": \"What is it?\", \"answer\": \"\\u00" +
                       std::string(1, "0123456789abcdef"[lone[0] >> 4]) + "0123456789abcdef"[lone[0] & 15] +
                       "\", \"context\": \"A document.\"}\n";
    for (int i = 0; i < 3; i++)
        text += "{\"question\": \"Question " + std::to_string(i) + "?\", \"answer\": \"Yes.\", \"context\": \"Doc.\"}\n";
    TempFile file(text);
    std::string out = file.path + ".out", output;
    CHECK(run("./prepare --input " + file.path + " --val-frac 0 --val-min 0 --out " + out, output) == 0);
    CHECK_MESSAGE(output.find("sample 1 (question \"What is it?\"): the answer encodes to no tokens") != std::string::npos,
                  output);
    char err[512];
    JsonValue *report = json_parse_file((out + "/report.json").c_str(), err, sizeof err);
    REQUIRE_MESSAGE(report, err);
    CHECK(json_get_number(json_get(report, "dropped"), "no_answer_tokens", -1) == 1);
    json_free(report);
    CHECK(system(("rm -rf " + out).c_str()) == 0);
}

TEST_CASE("inputs: ./train refuses a token file where most samples have no labelled token") {
    const Tokenizer *tok = default_model().tokenizer;
    int ids[4] = {1, 2, 3, 4}, none[4] = {IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET, IGNORE_TARGET};
    int some[4] = {IGNORE_TARGET, 3, 4, IGNORE_TARGET};
    TokSample samples[3] = {{ids, none, 4, -1, 0, nullptr}, {ids, none, 4, -1, 0, nullptr}, {ids, some, 4, -1, 0, nullptr}};
    TempFile file("", ".bin");
    char err[512];
    REQUIRE(tokfile_write(file.path.c_str(), tok, samples, 3, 0, err, sizeof err) == 0);
    ExampleSource src = {file.path.c_str(), nullptr, 0.0f, 64, 1};
    ExampleSet train = {}, val = {};
    int skipped = 0;
    CHECK(examples_load(&src, tok, &train, &val, &skipped) != 0);
    examples_free(&train);
    examples_free(&val);
    // one of three is fine
    samples[1].targets = some;
    REQUIRE(tokfile_write(file.path.c_str(), tok, samples, 3, 0, err, sizeof err) == 0);
    CHECK(examples_load(&src, tok, &train, &val, &skipped) == 0);
    examples_free(&train);
    examples_free(&val);
}

TEST_CASE("inputs: a validation file of which no sample fits in --seq is refused, naming it") {
    const Tokenizer *tok = default_model().tokenizer;
    // data/sample_raft.jsonl's samples are longer than 100 tokens
    std::string output;
    // the real ./train: the training data fits, the --val-data does not (before: it trained without validation)
    TempFile fits("{\"question\": \"q?\", \"documents\": [\"d\"], \"oracle\": 0, \"answer\": \"a.\"}\n"
                  "{\"question\": \"r?\", \"documents\": [\"e\"], \"oracle\": 0, \"answer\": \"b.\"}\n");
    std::string out = "/tmp/qlora_inputs_no_val_" + std::to_string(getpid());
    CHECK(run("./train --device cpu --steps 1 --seq 100 --out " + out + " --data " + fits.path +
              " --val-data data/sample_raft.jsonl", output) == 1);
    CHECK(system(("rm -rf " + out).c_str()) == 0);
    CHECK_MESSAGE(output.find("train: data/sample_raft.jsonl: none of the 8 validation samples fits in --seq 100 "
                              "tokens") != std::string::npos, output);
    // held out of --data by --val-frac (not a file asked for): a warning, and the run goes on without validation
    ExampleSource given = {"data/sample_raft.jsonl", nullptr, 0.5f, 100, 1};
    ExampleSet train = {}, val = {};
    int skipped = 0;
    CHECK(examples_load(&given, tok, &train, &val, &skipped) == 0);
    CHECK(val.count == 0);
    examples_free(&train);
    examples_free(&val);
    // a fitting --seq: fine
    given.max_seq = 1024;
    CHECK(examples_load(&given, tok, &train, &val, &skipped) == 0);
    CHECK(val.count == 4);
    examples_free(&train);
    examples_free(&val);
}

// ---- text cut mid-character ---------------------------------------------------------------------

TEST_CASE("inputs: the bytes held back from a stream are those a later byte may complete") {
    CHECK(utf8_incomplete_tail("ab", 2) == 0);
    CHECK(utf8_incomplete_tail("a\xed", 2) == 1);
    CHECK(utf8_incomplete_tail("a\xed\x95", 3) == 2);
    CHECK(utf8_incomplete_tail("\xed\x95\x9c", 3) == 0);            // 한, whole
    CHECK(utf8_incomplete_tail("\xf0\x9f\x98", 3) == 3);            // 😀 but its last byte
    CHECK(utf8_incomplete_tail("\xed\xa0", 2) == 0);                 // a surrogate never completes
    CHECK(utf8_incomplete_tail("\x80", 1) == 0);                     // nor a lone continuation byte
    CHECK(utf8_incomplete_tail("\xff", 1) == 0);
    CHECK(utf8_incomplete_tail("", 0) == 0);
}

// Whether text is valid UTF-8.
static bool is_utf8(const std::string &text) {
    size_t clean_len;
    char *clean = utf8_clean(text.data(), text.size(), &clean_len);
    bool same = clean && std::string(clean, clean_len) == text;
    free(clean);
    return same;
}

TEST_CASE("inputs: decode and the token stream give whole characters; a cut one ends as U+FFFD") {
    const Tokenizer *tok = default_model().tokenizer;
    const std::string text = "한국어 답변입니다 😀 é";
    int *ids = nullptr;
    int n = tokenizer_encode(tok, text.data(), text.size(), 0, &ids);
    REQUIRE(n > 0);
    int cut_seen = 0;
    for (int k = 1; k <= n; k++) {
        std::string raw;
        for (int i = 0; i < k; i++) {
            size_t len;
            const char *bytes = tokenizer_token_bytes(tok, ids[i], &len);
            raw.append(bytes, len);
        }
        size_t len;
        char *decoded = tokenizer_decode(tok, ids, k, &len);
        std::string d(decoded, len);
        free(decoded);
        CHECK(is_utf8(d));
        TokenStream stream = {};
        std::string streamed;
        for (int i = 0; i < k; i++) {
            char *piece = tokenizer_stream_next(tok, &stream, ids[i], &len);
            REQUIRE(piece);
            CHECK(is_utf8(std::string(piece, len)));
            streamed.append(piece, len);
            free(piece);
        }
        char *end = tokenizer_stream_end(&stream, &len);
        streamed.append(end, len);
        free(end);
        CHECK(streamed == d);   // streaming prints what decode gives
        size_t tail = utf8_incomplete_tail(raw.data(), raw.size());
        if (tail) {
            cut_seen++;
            CHECK(d == raw.substr(0, raw.size() - tail) + UTF8_REPLACEMENT);   // one U+FFFD, as HF's decode
        } else {
            CHECK(d == raw);
        }
    }
    CHECK(cut_seen > 0);   // the byte-level tokens split some characters
    free(ids);
}

// ---- options --------------------------------------------------------------------------------------

// cli_check_options on args with generate's flags; "" when they are fine.
static std::string check(std::vector<const char *> args) {
    const char *const flags[] = {"--prompt", "--system", "--lr", NULL};
    const char *const conflicts[] = {"--prompt", "--prompt-file", NULL}, *const needs[] = {"--system", "--chat", NULL};
    args.insert(args.begin(), "program");
    char err[256] = "";
    int status = cli_check_options((int)args.size(), (char **)args.data(), flags, conflicts, needs, err, sizeof err);
    return status == 0 ? "" : err;
}

TEST_CASE("inputs: an option given twice, two that conflict, one without the one it needs") {
    CHECK(check({"--lr", "1e-4", "--lr", "2e-4"}) == "--lr given twice (which one was meant?)");
    CHECK(check({"--chat", "--lr", "1", "--chat"}) == "--chat given twice (which one was meant?)");
    CHECK(check({"--prompt", "--lr", "--lr", "1"}) == "");   // the first "--lr" is the prompt
    CHECK(check({"--prompt", "x", "--prompt-file", "f"}) == "--prompt and --prompt-file cannot go together: give one");
    CHECK(check({"--system", "s", "--prompt", "x"}) == "--system needs --chat");
    CHECK(check({"--system", "s", "--chat", "--prompt", "--prompt-file"}) == "");
}

TEST_CASE("inputs: every program refuses an option given twice; ./generate and ./prepare conflicts; ./train an absurd --lr") {
    const std::string cases[][2] = {
        {"./generate --prompt a --prompt b", "generate: --prompt given twice"},
        {"./generate --prompt a --prompt-file /dev/null", "generate: --prompt and --prompt-file cannot go together"},
        {"./generate --prompt a --system s", "generate: --system needs --chat"},
        {"./train --lr 1e-4 --lr 2e-4", "train: --lr given twice"},
        {"./train --val-data a.jsonl --val-frac 0.1", "train: --val-data and --val-frac cannot go together"},
        {"./train --lr 1e30", "train: --lr must be in (0, 1]"},
        {"./prepare --seed 1 --seed 2", "prepare: --seed given twice"},
        // --input's samples are ready: options that build samples from documents would do nothing
        {"./prepare --input data/sample_raft.jsonl --no-oracle 0.5", "prepare: --input's samples are used as they are"},
        {"./prepare --input data/sample_raft.jsonl --distractors 2", "it takes no --distractors"},
        {"./evaluate --seed 1 --seed 2", "evaluate: --seed given twice"},
    };
    for (const auto &c : cases) {
        std::string output;
        CHECK_MESSAGE(run(c[0], output) == 2, c[0]);
        CHECK_MESSAGE(output.find(c[1]) != std::string::npos, output);
    }
}

TEST_CASE("inputs: --device names the choices in ./train, ./generate and ./serve") {
    const std::string cases[][2] = {
        {"./train --device gpu", "train: --device expects cpu, cuda or auto, got gpu"},
        {"./generate --prompt x --device gpu", "generate: --device expects cpu, cuda or auto, got gpu"},
        {"./serve --device gpu", "serve: --device expects cpu, cuda or auto, got gpu"},
        {"./serve --device cpu --device cpu", "serve: --device given twice"},
    };
    for (const auto &c : cases) {
        std::string output;
        CHECK_MESSAGE(run(c[0], output) == 2, c[0]);
        CHECK_MESSAGE(output.find(c[1]) != std::string::npos, output);
    }
}

TEST_CASE("inputs: ./train --precision names the choices, and one the CPU cannot run is refused") {
    // this process's ./train runs on the CPU (no GPU here, or --device cpu): fp32 only
    const std::string cases[][2] = {
        {"./train --device cpu --precision fp8", "train: --precision expects auto, bf16, fp16 or fp32, got fp8"},
        {"./train --device cpu --precision fp16", "train: --precision fp16: the CPU trainer computes in fp32"},
        {"./train --device cpu --precision bf16", "train: --precision bf16: the CPU trainer computes in fp32"},
    };
    for (const auto &c : cases) {
        std::string output;
        CHECK_MESSAGE(run(c[0], output) == 2, c[0]);
        CHECK_MESSAGE(output.find(c[1]) != std::string::npos, output);
    }
}

TEST_CASE("inputs: ./train --paged-optim and --offload need a GPU, and --offload needs --recompute 1") {
    const std::string cases[][2] = {
        {"./train --device cpu --paged-optim", "train: --paged-optim pages AdamW's state out of GPU memory: it needs "
                                               "--device cuda"},
        {"./train --device cpu --offload --recompute 1", "train: --offload moves activations out of GPU memory: it "
                                                          "needs --device cuda"},
        {"./train --device cpu --offload", "train: --offload moves activations out of GPU memory"},
        {"./train --plan --offload", "train: --offload offloads the block inputs that recompute keeps: it needs "
                                     "--recompute 1"},
    };
    for (const auto &c : cases) {
        std::string output;
        CHECK_MESSAGE(run(c[0], output) == 2, c[0]);
        CHECK_MESSAGE(output.find(c[1]) != std::string::npos, output);
    }
    // --plan plans for a GPU, so it takes both on any machine and says what they move
    std::string output;
    REQUIRE(run("./train --plan --model dev/bench/shapes/llama-3.2-1b --recompute 1 --offload --paged-optim",
                 output) == 0);
    CHECK_MESSAGE(output.find("recompute on, offload, paged AdamW") != std::string::npos, output);
    CHECK_MESSAGE(output.find("offload: the inputs of 15 blocks") != std::string::npos, output);
    CHECK_MESSAGE(output.find("paged AdamW: m and v") != std::string::npos, output);
    std::string help;
    REQUIRE(run("./train --help", help) == 0);
    CHECK(help.find("--paged-optim") != std::string::npos);
    CHECK(help.find("--offload") != std::string::npos);
}
