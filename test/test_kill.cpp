// Crash tests: ./train --save-every 1 and ./prepare killed (SIGKILL) at
// random moments, drawn from a fixed seed, and what each leaves behind
// checked. A killed training run is continued (--resume, or started again
// when it died before its first checkpoint) and must end with the losses and
// the adapter of a run that was never killed; a killed ./prepare leaves the
// old set of files or the new one, each file complete (its checksum holds);
// a kill between its renames leaves temps that the reader finishes renaming.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/tokfile.h"
#include "formats/json.h"
#include "infer/merge.h"
#include "model.h"
#include "test/test_util.h"
#include "tokenizer.h"

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/qlora_kill_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

std::string file_text(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs argv (a program in the repository root) with its output to log_path and
// returns its pid.
pid_t start(const std::vector<std::string> &argv, const std::string &log_path) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        std::vector<char *> args;
        for (const std::string &a : argv) args.push_back(const_cast<char *>(a.c_str()));
        args.push_back(nullptr);
        execv(args[0], args.data());
        _exit(127);
    }
    return pid;
}

// Runs argv to its end. Returns its exit status (-1 when it did not exit).
int run(const std::vector<std::string> &argv, const std::string &log_path) {
    int status;
    waitpid(start(argv, log_path), &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs argv and kills it with SIGKILL after `seconds` (when it is still running).
void run_and_kill(const std::vector<std::string> &argv, const std::string &log_path, double seconds) {
    pid_t pid = start(argv, log_path);
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// log.csv's rows without the timing columns (ms, tokens_per_s), which differ between runs.
std::vector<std::string> losses(const std::string &log_path) {
    std::ifstream in(log_path);
    std::vector<std::string> rows;
    std::string line;
    while (std::getline(in, line)) {
        size_t cut = line.find(',');
        for (int field = 1; field < 5 && cut != std::string::npos; field++) cut = line.find(',', cut + 1);
        rows.push_back(line.substr(0, cut));
    }
    return rows;
}

std::string join(const std::vector<std::string> &rows) {
    std::string text;
    for (const std::string &row : rows) text += row + "\n";
    return text;
}

// The set id of a token file, or 0 when the file is missing or does not read back.
uint64_t set_id_of(const std::string &path) {
    TokFile f;
    char err[1024];
    if (tokfile_read(&f, path.c_str(), default_model().tokenizer, err, sizeof err) != 0) return 0;
    uint64_t id = f.set_id;
    tokfile_free(&f);
    return id;
}

// A small random-weight model with a small tokenizer of SmolLM2's kind (400 tokens,
// the chat-template fixture's), in HF layout, into dir: a
// training step in tens of milliseconds, so the kills land among many steps and
// checkpoint writes (what the kills are about), not in the default model's minutes.
void save_small_model(const std::string &dir) {
    char err[1024] = "";
    Tokenizer *t = tokenizer_from_json("test/fixtures/chat_templates/smollm2/tokenizer.json", err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    Config c = {};
    c.arch = ARCH_LLAMA;
    c.dim = 128;
    c.hidden_dim = 256;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 32;
    c.vocab_size = tokenizer_vocab_size(t);
    c.max_seq_len = 1024;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tied_embeddings = 1;
    Model m;
    REQUIRE_MESSAGE(model_init_random(&m, &c, 11, err, sizeof err) == 0, err);
    m.tokenizer = t;   // model_free frees it
    REQUIRE_MESSAGE(model_save_hf(&m, dir.c_str(), err, sizeof err) == 0, err);
    model_free(&m);
}

}  // namespace

TEST_CASE("crash: ./train --save-every 1 killed at random moments, then resumed, ends as a run never killed") {
    TempDir dir;
    save_small_model(dir.path + "/model");
    const std::vector<std::string> command = {"./train", "--model", dir.path + "/model", "--data",
                                              "data/sample_raft.jsonl", "--steps", "12", "--grad-accum", "1", "--seq",
                                              "768", "--val-frac", "0", "--rank", "4", "--lora-dropout", "0.1",
                                              "--warmup", "1", "--save-every", "1", "--device", "cpu"};
    auto with = [&](std::vector<std::string> extra) {
        std::vector<std::string> argv = command;
        argv.insert(argv.end(), extra.begin(), extra.end());
        return argv;
    };
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE_MESSAGE(run(with({"--out", dir.path + "/whole"}), dir.path + "/whole.txt") == 0,
                    file_text(dir.path + "/whole.txt"));
    double whole_seconds = seconds_since(t0);
    std::vector<std::string> expected = losses(dir.path + "/whole/log.csv");
    REQUIRE(expected.size() == 13);   // the header and 12 steps
    std::string expected_adapter = file_text(dir.path + "/whole/adapter/adapter_model.safetensors");
    REQUIRE(!expected_adapter.empty());

    std::mt19937 random(20261207);
    std::uniform_real_distribution<double> moment(0.0, whole_seconds);
    for (int trial = 0; trial < 6; trial++) {
        std::string out = dir.path + "/killed" + std::to_string(trial), log = out + ".txt";
        double kill_at = moment(random);
        run_and_kill(with({"--out", out}), log, kill_at);
        INFO("trial ", trial, ": killed after ", kill_at, " s of a ", whole_seconds, " s run");
        // what the kill left: log.csv's complete rows are the first rows of the whole run's
        if (std::filesystem::exists(out + "/log.csv")) {
            std::vector<std::string> left = losses(out + "/log.csv");
            REQUIRE(left.size() <= expected.size());
            CHECK(std::vector<std::string>(expected.begin(), expected.begin() + left.size()) == left);
        }
        // go on: from the checkpoint, or afresh when the kill came before the first one
        bool resumable = std::filesystem::exists(out + "/checkpoint.bin");
        int status = resumable ? run(with({"--resume", out}), log) : run(with({"--out", out, "--overwrite"}), log);
        CHECK_MESSAGE(status == 0, file_text(log));
        CHECK_MESSAGE(losses(out + "/log.csv") == expected, "whole run:\n", join(expected), "killed and resumed:\n",
                      join(losses(out + "/log.csv")));
        CHECK(file_text(out + "/adapter/adapter_model.safetensors") == expected_adapter);
    }
}

TEST_CASE("crash: ./prepare killed at random moments leaves the old files or the new ones, never a broken one") {
    TempDir dir;
    std::string out = dir.path + "/data";
    auto prepare = [&](int seed) {
        return std::vector<std::string>{"./prepare", "--docs", "data/example/docs.jsonl", "--qa", "data/example/qa.jsonl",
                                        "--val-frac", "0.2", "--seed", std::to_string(seed), "--out", out};
    };
    REQUIRE(run(prepare(3), dir.path + "/old.txt") == 0);
    uint64_t old_id = set_id_of(out + "/train.bin");
    REQUIRE(old_id != 0);
    std::string old_report = file_text(out + "/report.json");
    // the new set, written elsewhere once, to know its id and its time
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::string> elsewhere = prepare(4);
    elsewhere.back() = dir.path + "/new";
    REQUIRE(run(elsewhere, dir.path + "/new.txt") == 0);
    double whole_seconds = seconds_since(t0);
    uint64_t new_id = set_id_of(dir.path + "/new/train.bin");
    REQUIRE(new_id != 0);
    REQUIRE(new_id != old_id);

    std::mt19937 random(20261207);
    // most of a run is reading and rendering: the kills are drawn over its second half, where it writes
    std::uniform_real_distribution<double> moment(0.5 * whole_seconds, 1.1 * whole_seconds);
    int outcomes[3] = {0, 0, 0};   // the old set, the new one, the new one finished by its reader
    for (int trial = 0; trial < 6; trial++) {
        double kill_at = moment(random);
        run_and_kill(prepare(4), dir.path + "/killed.txt", kill_at);
        INFO("trial ", trial, ": killed after ", kill_at, " s of a ", whole_seconds, " s run");
        // what every reader (./train, ./evaluate) does first: finish a set the kill left half renamed
        char err[1024];
        int finished = tokfile_finish_set((out + "/train.bin").c_str(), err, sizeof err);
        REQUIRE_MESSAGE(finished >= 0, err);
        uint64_t train_id = set_id_of(out + "/train.bin");   // complete: it reads back, checksum and all
        CHECK((train_id == old_id || train_id == new_id));
        CHECK(set_id_of(out + "/val.bin") == train_id);
        JsonValue *report = json_parse_file((out + "/report.json").c_str(), err, sizeof err);
        REQUIRE_MESSAGE(report != nullptr, err);
        char train_hex[17];
        snprintf(train_hex, sizeof train_hex, "%016llx", (unsigned long long)train_id);
        CHECK(std::string(json_get_string(report, "set_id", "")) == train_hex);
        json_free(report);
        outcomes[finished > 0 ? 2 : train_id == new_id]++;
        // put the old set back for the next trial
        REQUIRE(run(prepare(3), dir.path + "/old.txt") == 0);
        REQUIRE(file_text(out + "/report.json") == old_report);
    }
    MESSAGE("./prepare killed 6 times: ", outcomes[0], " left the old set, ", outcomes[1], " the new one, ",
            outcomes[2], " the new one half renamed (finished by the reader)");
}

TEST_CASE("crash: a set ./prepare left half renamed is finished by its reader, and only with its own temps") {
    TempDir dir;
    auto prepare = [&](int seed, const std::string &out) {
        return std::vector<std::string>{"./prepare", "--docs", "data/example/docs.jsonl", "--qa", "data/example/qa.jsonl",
                                        "--val-frac", "0.2", "--seed", std::to_string(seed), "--out", out};
    };
    std::string out = dir.path + "/data", fresh = dir.path + "/new";
    REQUIRE(run(prepare(3, out), dir.path + "/log.txt") == 0);
    REQUIRE(run(prepare(4, fresh), dir.path + "/log.txt") == 0);
    std::string old_val = file_text(out + "/val.bin");
    // killed after renaming train.bin: val.bin and report.json still in their temps,
    // beside a temp of another run (the old set's val.bin) that must stay what it is
    namespace fs = std::filesystem;
    fs::copy_file(fresh + "/train.bin", out + "/train.bin", fs::copy_options::overwrite_existing);
    fs::copy_file(fresh + "/val.bin", out + "/val.bin.tmp.4242");
    fs::copy_file(fresh + "/report.json", out + "/report.json.tmp.4242");
    fs::copy_file(out + "/val.bin", out + "/val.bin.tmp.17");
    char err[1024];
    CHECK(tokfile_finish_set((out + "/val.bin").c_str(), err, sizeof err) == 2);
    CHECK(file_text(out + "/val.bin") == file_text(fresh + "/val.bin"));
    CHECK(file_text(out + "/report.json") == file_text(fresh + "/report.json"));
    CHECK(!fs::exists(out + "/val.bin.tmp.4242"));
    CHECK(file_text(out + "/val.bin.tmp.17") == old_val);
    // nothing left to do; a file of another name is not a set's
    CHECK(tokfile_finish_set((out + "/train.bin").c_str(), err, sizeof err) == 0);
    CHECK(tokfile_finish_set("data/sample_raft.jsonl", err, sizeof err) == 0);
}
