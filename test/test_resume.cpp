// Never lose a user's work: ./train paused with --stop-at and continued with
// --resume writes bitwise the same losses and gradient norms as one
// uninterrupted run (same data order, dropout masks, AdamW state, schedule).
// Runs the real ./train (built by `make test`) for 3 short steps twice.
// Also trainer/checkpoint.cpp on its own: every field (the early-stop count
// included) comes back, the flat arrays lie in the file as in memory, files of
// older versions and bad ones (a flipped bit included: the checksum) are refused.
// The uninterrupted run also writes --merge's directory and --merge-gguf's
// file: the same merged model (every weight of the fp16 GGUF within the fp16
// and bf16 roundings of the directory's).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model.h"
#include "trainer/checkpoint.h"

// Every weight of a (fp16) within the roundings of b (bf16) of the same fp32
// value: |a - b| <= |b| (2^-8 + 2^-11) (1 + 2^-7) + 2^-24 (half an ulp of each); returns how many are not.
static long count_far_weights(const Model &a, const Model &b) {
    std::vector<ModelTensor> ta(model_max_tensors(&a.config)), tb(model_max_tensors(&b.config));
    int n = model_gguf_tensors(&a, ta.data());
    REQUIRE(model_gguf_tensors(&b, tb.data()) == n);
    long far = 0;
    for (int i = 0; i < n; i++) {
        int64_t count = ta[i].cols ? ta[i].rows * ta[i].cols : ta[i].rows;
        for (int64_t k = 0; k < count; k++) {
            double x = tb[i].values[k];
            far += std::fabs(ta[i].values[k] - x) > std::fabs(x) * (std::ldexp(1.0, -8) + std::ldexp(1.0, -11)) *
                                                        (1 + std::ldexp(1.0, -7)) + std::ldexp(1.0, -24);
        }
    }
    return far;
}

// The step, train_loss and grad_norm columns of a log.csv, one string per step.
static std::vector<std::string> logged_steps(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::string> rows;
    std::string line;
    std::getline(in, line);   // header
    while (std::getline(in, line)) {
        std::stringstream fields(line);
        std::string step, loss, val, norm;
        std::getline(fields, step, ',');
        std::getline(fields, loss, ',');
        std::getline(fields, val, ',');
        std::getline(fields, norm, ',');
        rows.push_back(step + " " + loss + " " + norm);
    }
    return rows;
}

TEST_CASE("train: pause and resume reproduce an uninterrupted run bitwise") {
    char dir[] = "/tmp/qlora_resume_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    std::string common = "./train --data data/sample_raft.jsonl --steps 3 --grad-accum 1 --seq 160 --val-frac 0 --rank 4 "
                         "--lora-dropout 0.1 --warmup 1";
    std::string quiet = " > " + d + "/out.txt 2>&1";
    // the uninterrupted run also writes the merged model (test_merge.cpp checks its contents), and as GGUF
    REQUIRE(system((common + " --merge --merge-gguf --out " + d + "/full" + quiet).c_str()) == 0);
    for (const char *name : {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"})
        CHECK_MESSAGE(std::filesystem::exists(d + "/full/merged/" + name), name);
    {
        Model hf, gguf;
        char err[1024] = "";
        REQUIRE_MESSAGE(model_load(&hf, (d + "/full/merged").c_str(), err, sizeof err) == 0, err);
        REQUIRE_MESSAGE(model_load(&gguf, (d + "/full/merged.gguf").c_str(), err, sizeof err) == 0, err);
        CHECK(count_far_weights(gguf, hf) == 0);
        model_free(&gguf);
        model_free(&hf);
    }
    REQUIRE(system((common + " --out " + d + "/part --stop-at 1" + quiet).c_str()) == 0);
    std::vector<std::string> paused = logged_steps(d + "/part/log.csv");
    CHECK(paused.size() == 1);
    std::filesystem::copy_file(d + "/part/checkpoint.bin", d + "/step1.bin");
    // --out defaults to the --resume folder
    REQUIRE(system((common + " --resume " + d + "/part" + quiet).c_str()) == 0);
    std::vector<std::string> full = logged_steps(d + "/full/log.csv");
    std::vector<std::string> resumed = logged_steps(d + "/part/log.csv");
    REQUIRE(full.size() == 3);
    std::string full_text, resumed_text;
    for (const std::string &row : full) full_text += row + "\n";
    for (const std::string &row : resumed) resumed_text += row + "\n";
    CHECK_MESSAGE(resumed == full, "uninterrupted:\n", full_text, "paused + resumed:\n", resumed_text);
    // interrupted after a checkpoint (steps 2 and 3 logged, the checkpoint at 1):
    // the resumed run does steps 2 and 3 again, and the log holds each step once
    std::filesystem::copy_file(d + "/step1.bin", d + "/part/checkpoint.bin",
                               std::filesystem::copy_options::overwrite_existing);
    REQUIRE(system((common + " --resume " + d + "/part" + quiet).c_str()) == 0);
    CHECK(logged_steps(d + "/part/log.csv") == full);
    // --resume A --out B carries A's log over (A's run is done: no step is run again)
    REQUIRE(system((common + " --resume " + d + "/part --out " + d + "/carried" + quiet).c_str()) == 0);
    CHECK(logged_steps(d + "/carried/log.csv") == full);
    // another run's options are refused, each option that differs named with both values
    std::string other = common;
    other.replace(other.find("--rank 4"), strlen("--rank 4"), "--rank 8");
    int status = system((other + " --seed 5 --out " + d + "/other --resume " + d + "/part" + quiet).c_str());
    CHECK(status != 0);
    std::ifstream out(d + "/out.txt");
    std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(text.find("this run is not the one the checkpoint holds") != std::string::npos, text);
    CHECK_MESSAGE(text.find("--rank: the checkpoint's 4, this run's 8") != std::string::npos, text);
    CHECK_MESSAGE(text.find("--seed: the checkpoint's 1234, this run's 5") != std::string::npos, text);
    CHECK_MESSAGE(text.find("--lr:") == std::string::npos, text);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

// The test file's text.
static std::string file_text(const std::string &path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST_CASE("train: a new run into an --out that holds a run is refused; --overwrite removes that run's files first") {
    char dir[] = "/tmp/qlora_overwrite_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, out = d + "/run", quiet = " > " + d + "/out.txt 2>&1";
    // an earlier run's files: its best checkpoint and adapter, its log
    REQUIRE(system(("mkdir -p " + out + "/best_adapter && touch " + out + "/checkpoint_best.bin " + out +
                    "/best_adapter/adapter_config.json && echo old > " + out + "/log.csv").c_str()) == 0);
    std::string command = "./train --data data/sample_raft.jsonl --steps 1 --grad-accum 1 --seq 160 --val-frac 0 "
                          "--rank 2 --device cpu --out " + out;
    int status = system((command + quiet).c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 2);
    std::string text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("train: " + out + ": holds an earlier run (" + out + "/checkpoint_best.bin): continue it "
                            "with --resume " + out + ", start this one in another --out, or replace it with "
                            "--overwrite") != std::string::npos, text);
    CHECK(file_text(out + "/log.csv") == "old\n");   // untouched
    // --overwrite: nothing of the earlier run is left to pass for this one's
    REQUIRE(system((command + " --overwrite" + quiet).c_str()) == 0);
    CHECK(!std::filesystem::exists(out + "/best_adapter"));
    CHECK(!std::filesystem::exists(out + "/checkpoint_best.bin"));
    CHECK(file_text(out + "/log.csv").find("old") == std::string::npos);
    CHECK(std::filesystem::exists(out + "/adapter/adapter_model.safetensors"));
    // --overwrite with --resume of that same run would remove the checkpoint it resumes from (and did)
    REQUIRE(system(("echo checkpoint > " + out + "/checkpoint.bin").c_str()) == 0);
    for (std::string resume : {" --resume " + out, " --resume " + out + "/."}) {
        status = system((command + resume + " --overwrite" + quiet).c_str());
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 2);
        text = file_text(d + "/out.txt");
        CHECK_MESSAGE(text.find("train: --overwrite removes the run in " + out) != std::string::npos, text);
        CHECK(file_text(out + "/checkpoint.bin") == "checkpoint\n");
    }
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: an input that lies in a file the run writes in --out (--overwrite removes) is refused, untouched") {
    char dir[] = "/tmp/qlora_input_in_out_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, out = d + "/run", quiet = " > " + d + "/out.txt 2>&1";
    // an earlier run's adapter and merged model, trained on and from again
    REQUIRE(system(("mkdir -p " + out + " && cp -r test/fixtures/serve/faq " + out + "/adapter && cp -r "
                    "test/fixtures/serve/model " + out + "/merged").c_str()) == 0);
    struct Case {
        std::string options, message;
    } cases[] = {
        {"--init-adapter " + out + "/adapter --overwrite", "train: --init-adapter " + out + "/adapter lies in " + out +
                                                               "/adapter, which this run writes (and --overwrite removes)"},
        {"--model " + out + "/./merged/ --merge --overwrite", "train: --model " + out + "/./merged/ lies in " + out +
                                                                  "/merged, which this run writes"},
        {"--data " + out + "/adapter/adapter_config.json", "train: --data " + out + "/adapter/adapter_config.json lies in " +
                                                               out + "/adapter, which this run writes: copy it out"},
    };
    for (const Case &c : cases) {
        std::string command = "./train --steps 1 --device cpu --out " + out + " " + c.options;
        int status = system((command + quiet).c_str());
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 2);
        std::string text = file_text(d + "/out.txt");
        CHECK_MESSAGE(text.find(c.message) != std::string::npos, text);
    }
    CHECK(file_text(out + "/adapter/adapter_model.safetensors") ==
          file_text("test/fixtures/serve/faq/adapter_model.safetensors"));
    CHECK(file_text(out + "/merged/model.safetensors") == file_text("test/fixtures/serve/model/model.safetensors"));
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: a second ./train into the --out a running one writes is refused, the first untouched") {
    char dir[] = "/tmp/qlora_two_runs_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, out = d + "/run";
    std::ofstream(d + "/data.jsonl") << "{\"question\": \"q?\", \"documents\": [\"d\"], \"oracle\": 0, \"answer\": \"a.\"}\n"
                                        "{\"question\": \"r?\", \"documents\": [\"e\"], \"oracle\": 0, \"answer\": \"b.\"}\n";
    std::string command = "./train --device cpu --model test/fixtures/serve/model --data " + d + "/data.jsonl "
                          "--val-frac 0 --rank 2 --out " + out;
    // the first: long enough to be running when the second starts (its log shows step 1)
    REQUIRE(system(("(" + command + " --steps 1000000 > " + d + "/first.txt 2>&1 & echo $! > " + d + "/pid)").c_str()) == 0);
    for (int tries = 0; tries < 600 && file_text(d + "/first.txt").find("step    1/") == std::string::npos; tries++)
        usleep(100000);
    REQUIRE_MESSAGE(file_text(d + "/first.txt").find("step    1/") != std::string::npos, file_text(d + "/first.txt"));
    for (const char *second : {" --steps 1 --overwrite", " --steps 1000000 --resume "}) {
        std::string extra = second;
        if (extra.find("--resume") != std::string::npos) extra += out;
        int status = system((command + extra + " > " + d + "/second.txt 2>&1").c_str());
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) != 0);
        std::string text = file_text(d + "/second.txt");
        CHECK_MESSAGE(text.find("train: " + out + ": another ./train is writing into it") != std::string::npos, text);
    }
    int pid = atoi(file_text(d + "/pid").c_str());
    REQUIRE(pid > 0);
    CHECK(kill(pid, 0) == 0);   // the first still runs
    kill(pid, SIGKILL);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: log.csv keeps the val loss before training, and a resumed run's chart joins every val point") {
    char dir[] = "/tmp/qlora_val_curve_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    std::string common = "./train --data data/sample_raft.jsonl --steps 2 --eval-every 1 --rank 2 --out " + d;
    std::string quiet = " > " + d + "/out.txt 2>&1";
    REQUIRE(system((common + " --stop-at 1" + quiet).c_str()) == 0);
    REQUIRE(system((common + " --resume " + d + quiet).c_str()) == 0);
    std::ifstream log(d + "/log.csv");
    std::string header, first_row;
    std::getline(log, header);
    std::getline(log, first_row);
    CHECK_MESSAGE(first_row.rfind("0,,", 0) == 0, first_row);   // step 0: no train loss, the val loss
    // the chart's second path is the val curve: steps 0, 1 and 2 in one line (M, then L twice)
    std::ifstream svg(d + "/loss.svg");
    std::string text((std::istreambuf_iterator<char>(svg)), std::istreambuf_iterator<char>());
    size_t val_path = text.find("class=\"series\"", text.find("class=\"series\"") + 1);
    REQUIRE(val_path != std::string::npos);
    std::string path = text.substr(val_path, text.find("/>", val_path) - val_path);
    CHECK_MESSAGE(std::count(path.begin(), path.end(), 'M') == 1, path);
    CHECK_MESSAGE(std::count(path.begin(), path.end(), 'L') == 2, path);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: a bad option value is refused with one line naming the option") {
    char dir[] = "/tmp/qlora_options_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, log = d + "/out.txt";
    std::string common = "./train --steps 1 --seq 160 --device cpu --out " + d + "/run ";
    // {options, the message}; the last five load the model (and the data) first
    const std::pair<const char *, const char *> cases[] = {
        {"--lr 1e39", "train: --lr expects a number of at most 3.40282e+38 in size, got '1e39'"},
        {"--bogus", "train: unknown option --bogus"},   // last, with no value after it
        {"--steps=1", "train: --steps=1: the value goes after a space: --steps 1"},
        {"--alpha 0", "train: --alpha must be in (0, 10000]"},
        {"--alpha 1e30", "train: --alpha must be in (0, 10000]"},
        {"--grad-accum 100000", "train: --grad-accum must be in [1, 65536]"},
        {"--weight-decay -0.1", "train: --weight-decay must be at least 0"},
        {"--double-quant 2", "train: --double-quant expects 0 or 1, got '2'"},
        {"--recompute 5", "train: --recompute expects 0 or 1, got '5'"},
        {"--eval-answers -1", "train: --eval-answers must be at least 0"},
        {"--gpu-mem 0", "train: --gpu-mem must be more than 0"},
        {"--batch 0", "train: --batch must be at least 1"},
        {"--epochs 2", "train: --steps and --epochs both set the run's length: give one (or --epochs 0)"},
        {"--data ''", "train: --data expects a value, got ''"},
        {"--rank 193", "train: --rank 193 is more than 192, the smallest dimension of the adapted matrices"},
        {"--warmup 5", "train: --warmup 5 steps is more than the run's 1 steps"},
        {"--stop-at 2", "train: --stop-at 2 is past the run's last step, 1"},
        {"--val-data data/faq/val.bin", "train: --val-data is a .bin file from ./prepare, so --data must be one too"},
        {"--data /dev/zero", "train: /dev/zero: is a device, not a file"},   // read until memory ran out before
    };
    for (const auto &[options, message] : cases) {
        // the sample data, unless the case is about --data (an option given twice is an error of its own)
        std::string data = std::string(options).find("--data") == 0 ? "" : "--data data/sample_raft.jsonl ";
        CHECK(system((common + data + options + " > " + log + " 2>&1").c_str()) != 0);
        std::ifstream out(log);
        std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
        CHECK_MESSAGE(text.find(message) != std::string::npos, options, "\n", text);
    }
    CHECK(!std::filesystem::exists(d + "/run"));
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: an absurd --lr (1e30: every weight would move by about 1e30) is refused before training") {
    char dir[] = "/tmp/qlora_diverge_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, log = d + "/out.txt";
    std::string command = "./train --data data/sample_raft.jsonl --steps 1 --rank 2 --lr 1e30 --device cpu --out " +
                          d + "/run > " + log + " 2>&1";
    int status = system(command.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 2);
    std::ifstream out(log);
    std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(text.find("train: --lr must be in (0, 1]") != std::string::npos, text);
    CHECK(!std::filesystem::exists(d + "/run"));
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: host memory running out is a message naming the buffer and exit status 3, not a crash") {
    char dir[] = "/tmp/qlora_host_oom_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, log = d + "/out.txt";
    // 2 GB of address space holds the model but not the activations of 7 samples over 30 layers
    std::string command = "sh -c 'ulimit -v 2000000; exec ./train --data data/sample_raft.jsonl --steps 1 "
                          "--batch 64 --device cpu --out " + d + "/run' > " + log + " 2>&1";
    int status = system(command.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 3);
    std::ifstream out(log);
    std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(text.find("out of memory: activations") != std::string::npos, text);
    CHECK_MESSAGE(text.find("Lower --batch or --seq") != std::string::npos, text);
    // nor rank-192 adapters with their gradients and AdamW moments
    command = "sh -c 'ulimit -v 2000000; exec ./train --data data/sample_raft.jsonl --steps 1 --rank 192 "
              "--device cpu --out " + d + "/run2' > " + log + " 2>&1";
    status = system(command.c_str());
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 3);
    std::ifstream out_rank(log);
    text.assign(std::istreambuf_iterator<char>(out_rank), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(text.find("out of memory: the LoRA adapters and AdamW moments (rank 192)") != std::string::npos,
                  text);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

namespace {

// A tiny model's adapters on q and down with their AdamW moments, every value from fill.
struct TrainState {
    LoraSet set;
    AdamWState adam;
    explicit TrainState(float fill) {
        Config c = {};
        c.dim = 8;
        c.hidden_dim = 12;
        c.n_layers = 2;
        c.n_heads = 2;
        c.n_kv_heads = 1;
        c.head_dim = 4;
        int enabled[N_LINEARS] = {0};
        enabled[LINEAR_Q] = enabled[LINEAR_DOWN] = 1;
        REQUIRE(lora_set_init(&set, &c, enabled, 2, 4.0f, 0, 0.0f, 1, 0) == 0);
        REQUIRE(adamw_init(&adam, set.n_params) == 0);
        for (size_t k = 0; k < set.n_params; k++) {
            set.params[k] = fill + k;
            adam.m[k] = fill - k;
            adam.v[k] = fill * k;
        }
        adam.step = (int64_t)fill;
    }
    ~TrainState() {
        adamw_free(&adam);
        lora_set_free(&set);
    }
    bool same_values(const TrainState &other) const {
        size_t bytes = sizeof(float) * set.n_params;
        return set.n_params == other.set.n_params && memcmp(set.params, other.set.params, bytes) == 0 &&
               memcmp(adam.m, other.adam.m, bytes) == 0 && memcmp(adam.v, other.adam.v, bytes) == 0 &&
               adam.step == other.adam.step;
    }
};

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string &path, const std::string &bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

// The file with its last 8 bytes replaced by the FNV-1a hash of the others, as
// checkpoint_save writes it: a change that the checksum would not catch.
std::string with_checksum(std::string bytes) {
    uint64_t hash = 14695981039346656037ULL;
    for (size_t i = 0; i + 8 < bytes.size(); i++) hash = (hash ^ (unsigned char)bytes[i]) * 1099511628211ULL;
    bytes.replace(bytes.size() - 8, 8, (const char *)&hash, 8);
    return bytes;
}

}  // namespace

// Version 7's layout: "QLORACK7", the 128-byte header, the identity's length
// (u64) and text, the data order, then the parameters, AdamW's m and v, each
// one flat array, and the checksum. The header's fields: n_params at 0,
// adam_step 8, data_rng 16, best_val 24, n_layers 32, rank 36, enabled 40-67,
// step 68, total_steps 72, cursor 76, n_order 80, evals_without_improvement 84,
// then the loss scaler's: scale 88, growth factor 96, backoff factor 104,
// enabled 112, growth interval 116, growth tracker 120, skipped steps 124.
static const char IDENTITY[] = "--lr 0.0005\n--seed 1234\n";
static const size_t HEADER_AT = 8, HEADER_BYTES = 128, ORDER_AT = HEADER_AT + HEADER_BYTES + 8 + strlen(IDENTITY);

TEST_CASE("checkpoint: every field comes back; the flat arrays lie in the file as in memory") {
    char dir[] = "/tmp/qlora_checkpoint_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string path = std::string(dir) + "/checkpoint.bin";
    char err[1024];
    TrainState saved(3.0f), loaded(0.0f);
    int order[3] = {2, 0, 1}, loaded_order[3];
    // an fp16 run's loss scaler mid-run: halved twice, 5 steps since, 2 skipped
    GradScaler scaler = grad_scaler_default(1);
    scaler.scale = 16384.0f;
    scaler.growth_tracker = 5;
    scaler.skipped_steps = 2;
    TrainProgress progress = {7, 10, 12345, 1, 3, order, 1.5, 2, scaler};
    REQUIRE_MESSAGE(checkpoint_save(path.c_str(), IDENTITY, &saved.set, &saved.adam, &progress, err, sizeof err) == 0, err);

    TrainProgress back = {0, 0, 0, 0, 3, loaded_order, 0.0, 0, grad_scaler_default(0)};
    REQUIRE_MESSAGE(checkpoint_load(path.c_str(), IDENTITY, &loaded.set, &loaded.adam, &back, err, sizeof err) == 0, err);
    CHECK(back.step == 7);
    CHECK(back.total_steps == 10);
    CHECK(back.data_rng == 12345);
    CHECK(back.cursor == 1);
    CHECK(back.best_val == 1.5);
    CHECK(back.evals_without_improvement == 2);
    CHECK(back.scaler.enabled == 1);
    CHECK(back.scaler.scale == 16384.0f);
    CHECK(back.scaler.growth_factor == 2.0);
    CHECK(back.scaler.backoff_factor == 0.5);
    CHECK(back.scaler.growth_interval == 2000);
    CHECK(back.scaler.growth_tracker == 5);
    CHECK(back.scaler.skipped_steps == 2);
    CHECK(memcmp(loaded_order, order, sizeof order) == 0);
    CHECK(loaded.adam.step == 3);
    CHECK(loaded.same_values(saved));

    std::string file = read_bytes(path);
    size_t state_bytes = sizeof(float) * saved.set.n_params, params_at = ORDER_AT + sizeof order;
    REQUIRE(file.size() == params_at + 3 * state_bytes + 8);
    CHECK(file.compare(0, 8, "QLORACK7") == 0);
    CHECK(file.compare(HEADER_AT + HEADER_BYTES + 8, strlen(IDENTITY), IDENTITY) == 0);
    CHECK(memcmp(file.data() + params_at, saved.set.params, state_bytes) == 0);
    CHECK(memcmp(file.data() + params_at + state_bytes, saved.adam.m, state_bytes) == 0);
    CHECK(memcmp(file.data() + params_at + 2 * state_bytes, saved.adam.v, state_bytes) == 0);
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}

TEST_CASE("checkpoint: older versions, other shapes and corrupted files are refused with a message") {
    char dir[] = "/tmp/qlora_checkpoint_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string path = std::string(dir) + "/checkpoint.bin";
    char err[1024];
    TrainState saved(3.0f), loaded(0.0f);
    int order[3] = {2, 0, 1}, loaded_order[3];
    TrainProgress progress = {7, 10, 12345, 1, 3, order, 1.5, 2, grad_scaler_default(1)};
    REQUIRE_MESSAGE(checkpoint_save(path.c_str(), IDENTITY, &saved.set, &saved.adam, &progress, err, sizeof err) == 0, err);
    TrainProgress back = {0, 0, 0, 0, 3, loaded_order, 0.0, 0, grad_scaler_default(0)};
    std::string good = read_bytes(path);

    // a file of an older version (its magic is all this build reads of it)
    for (char version : {'1', '2', '3', '4', '5', '6'}) {
        std::string old = good;
        old[7] = version;
        write_bytes(path, old);
        CHECK(checkpoint_load(path.c_str(), IDENTITY, &loaded.set, &loaded.adam, &back, err, sizeof err) != 0);
        std::string want = std::string("checkpoint format version ") + version + " is from an older build of "
                           "qlora.c; this build reads version 7 only: restart the run, or finish it with the build "
                           "that wrote it";
        CHECK_MESSAGE(std::string(err).find(want) != std::string::npos, err);
    }

    // another run: every option that differs named with both values, one only one of them has too
    write_bytes(path, good);
    CHECK(checkpoint_load(path.c_str(), "--lr 0.001\n--seed 1234\n--pack 1\n", &loaded.set, &loaded.adam, &back, err,
                          sizeof err) != 0);
    CHECK_MESSAGE(std::string(err).find("this run is not the one the checkpoint holds") != std::string::npos, err);
    CHECK_MESSAGE(std::string(err).find("--lr: the checkpoint's 0.0005, this run's 0.001") != std::string::npos, err);
    CHECK_MESSAGE(std::string(err).find("--pack: the checkpoint's (none), this run's 1") != std::string::npos, err);
    CHECK_MESSAGE(std::string(err).find("--seed") == std::string::npos, err);

    // another sample count (the header is trusted once the checksum matches)
    TrainProgress fewer = {0, 0, 0, 0, 2, loaded_order, 0.0, 0, grad_scaler_default(0)};
    write_bytes(path, good);
    CHECK(checkpoint_load(path.c_str(), IDENTITY, &loaded.set, &loaded.adam, &fewer, err, sizeof err) != 0);
    CHECK_MESSAGE(std::string(err).find("checkpoint is for 2 layers, rank 2, targets q,down (144 parameters), 3 "
                                        "samples") != std::string::npos, err);

    // a flipped bit anywhere (here in a weight, which stays a finite number, or
    // in the layer count: corruption, not "a checkpoint of another shape")
    size_t weight_at = ORDER_AT + sizeof order + 4 * 5;
    std::string unknown = good, truncated = good.substr(0, good.size() - 3), flipped = good, flipped_header = good;
    unknown[7] = '9';
    flipped[weight_at] ^= 1;
    flipped_header[HEADER_AT + 32] ^= 1;
    // changes the checksum does not catch: an impossible step, a negative
    // early-stop count, a NaN weight (layer 1's down lora_B: the last tensor)
    std::string late = good, negative = good, nan_weight = good, odd_scale = good, tracker_past = good;
    int32_t step_1000 = 1000, minus_one = -1, tracker_2000 = 2000;
    float nan = NAN;
    double scale_3 = 3.0;
    late.replace(HEADER_AT + 68, 4, (const char *)&step_1000, 4);
    negative.replace(HEADER_AT + 84, 4, (const char *)&minus_one, 4);
    odd_scale.replace(HEADER_AT + 88, 8, (const char *)&scale_3, 8);            // not a power of two
    tracker_past.replace(HEADER_AT + 120, 4, (const char *)&tracker_2000, 4);   // at the growth interval
    nan_weight.replace(ORDER_AT + sizeof order + sizeof(float) * (saved.set.n_params - 1), 4,
                       (const char *)&nan, 4);
    const std::pair<std::string, const char *> bad[] = {
        {unknown, "not a qlora.c checkpoint"},
        {truncated, "checksum does not match its contents: the file is corrupted or truncated"},
        {flipped, "checksum does not match its contents"},
        {flipped_header, "checksum does not match its contents"},
        {with_checksum(late), "invalid step (1000 of 10, AdamW 3)"},
        {with_checksum(negative), "negative early-stop count"},
        {with_checksum(odd_scale), "invalid loss scaler (scale 3, tracker 0 of 2000, 0 skipped steps)"},
        {with_checksum(tracker_past), "invalid loss scaler (scale 65536, tracker 2000 of 2000"},
        {with_checksum(nan_weight), "NaN or Inf in the weights (first: layer 1 down lora_B)"}};
    for (const auto &[bytes, message] : bad) {
        write_bytes(path, bytes);
        CHECK(checkpoint_load(path.c_str(), IDENTITY, &loaded.set, &loaded.adam, &back, err, sizeof err) != 0);
        CHECK_MESSAGE(std::string(err).find(message) != std::string::npos, err);
    }
    // the good file still loads after all that
    write_bytes(path, good);
    CHECK(checkpoint_load(path.c_str(), IDENTITY, &loaded.set, &loaded.adam, &back, err, sizeof err) == 0);
    CHECK(loaded.same_values(saved));
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}

// The val_loss column of a log.csv, by step (the rows that have one).
static std::vector<std::pair<std::string, std::string>> logged_val_losses(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::pair<std::string, std::string>> rows;
    std::string line;
    std::getline(in, line);   // header
    while (std::getline(in, line)) {
        std::stringstream fields(line);
        std::string step, loss, val;
        std::getline(fields, step, ',');
        std::getline(fields, loss, ',');
        std::getline(fields, val, ',');
        if (!val.empty()) rows.push_back({step, val});
    }
    return rows;
}

TEST_CASE("train: --init-adapter trains on from an adapter: its options and weights (the val loss goes on where it "
          "ended); a different --rank is refused") {
    char dir[] = "/tmp/qlora_init_adapter_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    std::string common = "./train --data data/sample_raft.jsonl --grad-accum 1 --seq 400 --val-frac 0.3 --warmup 1 "
                         "--eval-every 1";
    std::string quiet = " > " + d + "/out.txt 2>&1";
    REQUIRE(system((common + " --steps 1 --rank 4 --alpha 8 --targets q,v --out " + d + "/a" + quiet).c_str()) == 0);
    REQUIRE(system((common + " --steps 1 --init-adapter " + d + "/a/adapter --out " + d + "/b" + quiet).c_str()) == 0);
    std::string text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("lora: training on from " + d + "/a/adapter: rank 4, alpha 8, targets q,v") !=
                      std::string::npos, text);
    // the run starts from a's final adapter: its val loss before training is a's last one
    auto a_losses = logged_val_losses(d + "/a/log.csv"), b_losses = logged_val_losses(d + "/b/log.csv");
    REQUIRE(a_losses.size() == 2);
    REQUIRE(b_losses.size() == 2);
    CHECK(b_losses[0].first == "0");
    CHECK(b_losses[0].second == a_losses[1].second);
    CHECK(b_losses[0].second != a_losses[0].second);   // not the base's
    CHECK(file_text(d + "/b/adapter/adapter_config.json").find("\"r\": 4,") != std::string::npos);
    int status = system((common + " --steps 1 --rank 8 --init-adapter " + d + "/a/adapter --out " + d + "/c" +
                         quiet).c_str());
    CHECK(WEXITSTATUS(status) == 2);
    text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("the adapter has --rank 4, but the command line gives --rank 8") != std::string::npos, text);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train --dora: resume is bitwise; the adapter has peft's magnitudes; --init-adapter carries them and "
          "takes use_dora; --dora onto a LoRA adapter is refused") {
    char dir[] = "/tmp/qlora_dora_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    std::string common = "./train --data data/sample_raft.jsonl --grad-accum 1 --seq 400 --val-frac 0.3 --warmup 1 "
                         "--eval-every 1 --lr 1e-2 --lora-dropout 0.1";
    std::string dora = common + " --dora --rank 2 --targets q,v --steps 2";
    std::string quiet = " > " + d + "/out.txt 2>&1";
    REQUIRE(system((dora + " --out " + d + "/full" + quiet).c_str()) == 0);
    std::string text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("dora: 23040 magnitudes") != std::string::npos, text);   // 30 layers x (576 + 192)
    REQUIRE(system((dora + " --stop-at 1 --out " + d + "/part" + quiet).c_str()) == 0);
    REQUIRE(system((dora + " --resume " + d + "/part" + quiet).c_str()) == 0);
    std::vector<std::string> full = logged_steps(d + "/full/log.csv");
    REQUIRE(full.size() == 3);   // the step-0 validation row, steps 1 and 2
    CHECK(logged_steps(d + "/part/log.csv") == full);
    std::string config = file_text(d + "/full/adapter/adapter_config.json");
    CHECK_MESSAGE(config.find("\"use_dora\": true") != std::string::npos, config);
    std::string weights = file_text(d + "/full/adapter/adapter_model.safetensors");
    CHECK(weights.find("base_model.model.model.layers.29.self_attn.v_proj.lora_magnitude_vector\"") !=
          std::string::npos);
    // training on from it: DoRA comes from its config, its magnitudes are the run's start
    REQUIRE(system((common + " --steps 1 --init-adapter " + d + "/full/adapter --out " + d + "/b" + quiet).c_str()) == 0);
    text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("alpha 32 (DoRA), targets q,v") != std::string::npos, text);
    auto a_losses = logged_val_losses(d + "/full/log.csv"), b_losses = logged_val_losses(d + "/b/log.csv");
    REQUIRE(a_losses.size() == 3);
    REQUIRE(b_losses.size() == 2);
    CHECK(b_losses[0].second == a_losses[2].second);
    // --dora onto a plain LoRA adapter: the conflict named
    int status = system((common + " --steps 1 --dora --init-adapter test/fixtures/peft_adapter --out " + d + "/c" +
                         quiet).c_str());
    CHECK(WEXITSTATUS(status) == 2);
    text = file_text(d + "/out.txt");
    CHECK_MESSAGE(text.find("the adapter has --dora off (use_dora false), but the command line gives --dora on") !=
                      std::string::npos, text);
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}
