// Never lose a user's work: ./train paused with --stop-at and continued with
// --resume writes bitwise the same losses and gradient norms as one
// uninterrupted run (same data order, dropout masks, AdamW state, schedule).
// Runs the real ./train (built by `make test`) for 3 short steps twice.
// Also trainer/checkpoint.cpp on its own: every field (the early-stop count
// included) comes back, version 1 and 2 files still load, bad ones (a flipped
// bit included: the checksum) are refused.
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

#include <sys/wait.h>

#include "trainer/checkpoint.h"

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
    // the uninterrupted run also writes the merged model (test_merge.cpp checks its contents)
    REQUIRE(system((common + " --merge --out " + d + "/full" + quiet).c_str()) == 0);
    for (const char *name : {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"})
        CHECK_MESSAGE(std::filesystem::exists(d + "/full/merged/" + name), name);
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
    // a checkpoint of another shape is refused with a clear message
    int status = system((common + " --rank 8 --out " + d + "/other --resume " + d + "/part" + quiet).c_str());
    CHECK(status != 0);
    std::ifstream out(d + "/out.txt");
    std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
    CHECK(text.find("rank 4") != std::string::npos);
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
    std::string common = "./train --data data/sample_raft.jsonl --steps 1 --seq 160 --device cpu --out " + d + "/run ";
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
        {"--data ''", "train: --data expects a value, got ''"},
        {"--rank 193", "train: --rank 193 is more than 192, the smallest dimension of the adapted matrices"},
        {"--warmup 5", "train: --warmup 5 steps is more than the run's 1 steps"},
        {"--stop-at 2", "train: --stop-at 2 is past the run's last step, 1"},
        {"--val-data data/faq/val.bin", "train: --val-data is a .bin file from ./prepare, so --data must be one too"},
        {"--data /dev/zero", "train: /dev/zero: is a device, not a file"},   // read until memory ran out before
    };
    for (const auto &[options, message] : cases) {
        CHECK(system((common + options + " > " + log + " 2>&1").c_str()) != 0);
        std::ifstream out(log);
        std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
        CHECK_MESSAGE(text.find(message) != std::string::npos, options, "\n", text);
    }
    CHECK(!std::filesystem::exists(d + "/run"));
    REQUIRE(system(("rm -rf " + d).c_str()) == 0);
}

TEST_CASE("train: weights that diverge are not saved: a clear error, no adapter, non-zero exit") {
    char dir[] = "/tmp/qlora_diverge_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir, log = d + "/out.txt";
    // lr 1e30: one AdamW step moves every weight by about 1e30; the next forward gives NaN.
    // With a validation set that is the val loss; without one, the check before the adapter is written.
    for (const char *val : {"", " --val-frac 0"}) {
        INFO("options:" << val);
        std::string command = "./train --data data/sample_raft.jsonl --steps 1 --rank 2 --lr 1e30 --device cpu --out " +
                              d + "/run" + val + " > " + log + " 2>&1";
        CHECK(system(command.c_str()) != 0);
        std::ifstream out(log);
        std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
        CHECK_MESSAGE(text.find("training diverged; lower --lr") != std::string::npos, text);
        CHECK(!std::filesystem::exists(d + "/run/adapter"));
        REQUIRE(system(("rm -rf " + d + "/run").c_str()) == 0);
    }
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
              "--device cpu --out " + d + "/run' > " + log + " 2>&1";
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

// A tiny model's adapters on q and down with their AdamW moments.
struct TrainState {
    LoraSet set;
    std::vector<AdamWState> moments;
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
        REQUIRE(lora_set_init(&set, &c, enabled, 2, 4.0f, 0, 0.0f, 1) == 0);
        moments.resize((size_t)c.n_layers * N_LINEARS * 2);
        for (int i = 0; i < c.n_layers * N_LINEARS; i++) {
            LoraAdapter *a = &set.adapters[i];
            if (!a->A) continue;
            size_t a_size = (size_t)a->rank * a->in_dim, b_size = (size_t)a->out_dim * a->rank;
            REQUIRE(adamw_init(&moments[2 * i], a_size) == 0);
            REQUIRE(adamw_init(&moments[2 * i + 1], b_size) == 0);
            for (size_t k = 0; k < a_size; k++) a->A[k] = moments[2 * i].m[k] = moments[2 * i].v[k] = fill + k;
            for (size_t k = 0; k < b_size; k++) a->B[k] = moments[2 * i + 1].m[k] = moments[2 * i + 1].v[k] = fill - k;
            moments[2 * i].step = moments[2 * i + 1].step = (int64_t)fill;
        }
    }
    ~TrainState() {
        for (AdamWState &m : moments) adamw_free(&m);
        lora_set_free(&set);
    }
    bool same_values(const TrainState &other) const {
        for (int i = 0; i < set.n_layers * N_LINEARS; i++) {
            const LoraAdapter *a = &set.adapters[i], *b = &other.set.adapters[i];
            if (!a->A) continue;
            size_t a_bytes = sizeof(float) * a->rank * a->in_dim, b_bytes = sizeof(float) * a->out_dim * a->rank;
            const AdamWState *m = &moments[2 * i], *n = &other.moments[2 * i];
            if (memcmp(a->A, b->A, a_bytes) || memcmp(a->B, b->B, b_bytes) || memcmp(m[0].m, n[0].m, a_bytes) ||
                memcmp(m[0].v, n[0].v, a_bytes) || memcmp(m[1].m, n[1].m, b_bytes) || memcmp(m[1].v, n[1].v, b_bytes) ||
                m[0].step != n[0].step || m[1].step != n[1].step)
                return false;
        }
        return true;
    }
};

std::string read_bytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string &path, const std::string &bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

TEST_CASE("checkpoint: every field comes back, the early-stop count too; versions 1 and 2 still load") {
    char dir[] = "/tmp/qlora_checkpoint_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string path = std::string(dir) + "/checkpoint.bin";
    char err[1024];
    TrainState saved(3.0f), loaded(0.0f);
    int order[3] = {2, 0, 1}, loaded_order[3];
    TrainProgress progress = {7, 10, 12345, 1, 3, order, 1.5, 2};
    REQUIRE_MESSAGE(checkpoint_save(path.c_str(), &saved.set, saved.moments.data(), &progress, err, sizeof err) == 0, err);

    TrainProgress back = {0, 0, 0, 0, 3, loaded_order, 0.0, 0};
    REQUIRE_MESSAGE(checkpoint_load(path.c_str(), &loaded.set, loaded.moments.data(), &back, err, sizeof err) == 0, err);
    CHECK(back.step == 7);
    CHECK(back.total_steps == 10);
    CHECK(back.data_rng == 12345);
    CHECK(back.cursor == 1);
    CHECK(back.best_val == 1.5);
    CHECK(back.evals_without_improvement == 2);
    CHECK(memcmp(loaded_order, order, sizeof order) == 0);
    CHECK(loaded.same_values(saved));

    // version 2: "QLORACK2" and no checksum at the end
    std::string v3 = read_bytes(path), v2 = v3.substr(0, v3.size() - 8);
    REQUIRE(v3.compare(0, 8, "QLORACK3") == 0);
    v2.replace(0, 8, "QLORACK2");
    write_bytes(path, v2);
    REQUIRE_MESSAGE(checkpoint_load(path.c_str(), &loaded.set, loaded.moments.data(), &back, err, sizeof err) == 0, err);
    CHECK(back.evals_without_improvement == 2);
    CHECK(loaded.same_values(saved));

    // version 1: "QLORACK1" and the same header without the count (the
    // header is 80 bytes in version 2, 72 in version 1), then the same data
    std::string v1 = v2;
    v1.replace(0, 8, "QLORACK1");
    v1.erase(8 + 72, 8);
    write_bytes(path, v1);
    back.evals_without_improvement = 99;
    REQUIRE_MESSAGE(checkpoint_load(path.c_str(), &loaded.set, loaded.moments.data(), &back, err, sizeof err) == 0, err);
    CHECK(back.evals_without_improvement == 0);
    CHECK(back.step == 7);
    CHECK(loaded.same_values(saved));

    // refused: an unknown version, a truncated file, a negative count (version 2, no checksum to stop it first)
    std::string unknown = v3, truncated = v3.substr(0, v3.size() - 3), negative = v2;
    unknown[7] = '9';
    int32_t minus_one = -1;
    negative.replace(8 + 72, 4, (const char *)&minus_one, 4);
    const std::pair<std::string, const char *> bad[] = {
        {unknown, "not a qlora.c checkpoint"}, {truncated, "truncated"}, {negative, "negative early-stop count"}};
    for (const auto &[bytes, message] : bad) {
        write_bytes(path, bytes);
        CHECK(checkpoint_load(path.c_str(), &loaded.set, loaded.moments.data(), &back, err, sizeof err) != 0);
        CHECK_MESSAGE(std::string(err).find(message) != std::string::npos, err);
    }

    // refused: a flipped bit anywhere in version 3 (here in a weight, which stays a
    // finite number); in version 2, a flipped byte that makes the step count
    // impossible or a weight NaN (the step is the header's 10th int32; the first
    // tensor, layer 0's q lora_A, follows the 3-entry data order)
    size_t weight_at = 8 + 80 + 3 * 4 + 4 * 5;
    std::string flipped = v3, flipped_header = v3, late = v2, nan_weight = v2;
    flipped[weight_at] ^= 1;
    flipped_header[8] ^= 1;   // the layer count: corruption, not "a checkpoint of another shape"
    int32_t step_1000 = 1000;
    late.replace(8 + 9 * 4, 4, (const char *)&step_1000, 4);
    float nan = NAN;
    nan_weight.replace(weight_at, 4, (const char *)&nan, 4);
    const std::pair<std::string, const char *> corrupted[] = {
        {flipped, "checksum does not match its contents"},
        {flipped_header, "checksum does not match its contents"},
        {late, "invalid step (1000 of 10)"},
        {nan_weight, "NaN or Inf in a lora_A weight or moment"}};
    for (const auto &[bytes, message] : corrupted) {
        write_bytes(path, bytes);
        CHECK(checkpoint_load(path.c_str(), &loaded.set, loaded.moments.data(), &back, err, sizeof err) != 0);
        CHECK_MESSAGE(std::string(err).find(message) != std::string::npos, err);
    }
    REQUIRE(system((std::string("rm -rf ") + dir).c_str()) == 0);
}
