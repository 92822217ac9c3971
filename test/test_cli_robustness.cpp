// Robustness of the programs' edges, found by fuzzing: option parsing (formats/cli.c)
// names an unknown option and the "--name=value" form instead of a missing
// value; a huge --limit does not crash eval_load_samples; ./generate and
// ./evaluate stop with a message when an adapter's weights overflow the model,
// and when the model file holds a layer its metadata does not count;
// ./evaluate's data errors name the program; an adapter with adapter_model.bin
// only is refused with the conversion; every program's --help lists exactly the
// options its parser accepts. Runs the real programs (built by `make test`).
#include <doctest/doctest.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include "formats/cli.h"
#include "eval/eval.h"
#include "infer/adapter.h"
#include "test_util.h"

// The message cli_option_value gives for argv, or its value.
static std::string option_value(std::initializer_list<const char *> args) {
    const char *const flags[] = {"--steps", "--model", NULL};
    char *argv[8];
    int argc = 0;
    for (const char *a : args) argv[argc++] = (char *)a;
    int i = 1;
    char err[256];
    const char *v = cli_option_value(argc, argv, &i, flags, err, sizeof err);
    return v ? std::string("value ") + v : std::string(err);
}

TEST_CASE("cli: an unknown option, the --name=value form and a missing value are told apart") {
    CHECK(option_value({"train", "--bogus"}) == "unknown option --bogus");
    CHECK(option_value({"train", "--steps=1"}) == "--steps=1: the value goes after a space: --steps 1");
    CHECK(option_value({"train", "--bogus=1", "x"}) == "unknown option --bogus=1");
    CHECK(option_value({"train", "--steps"}) == "missing value for --steps");
    CHECK(option_value({"train", "--steps", "3"}) == "value 3");
    // an unknown option with a value is left to the caller's "unknown option"
    CHECK(option_value({"train", "--bogus", "3"}) == "value 3");
}

TEST_CASE("eval: a --limit far beyond the samples there are loads them all") {
    int count = 0;
    char err[1024];
    EvalSample *samples = eval_load_samples("data/sample_raft.jsonl", default_model().tokenizer, INT_MAX, &count, err,
                                            sizeof err);
    REQUIRE(samples);
    CHECK(count == 8);
    eval_free_samples(samples, count);
}

// Runs command; its exit status, and stdout and stderr together in output.
static int run(const std::string &command, std::string &output) {
    std::string log = "/tmp/qlora_cli_robustness.log";
    int status = system((command + " > " + log + " 2>&1").c_str());
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    output = text.str();
    std::remove(log.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// n RAFT samples "What is i?" / "It is i." with a one-line context, for ./train runs of a few steps.
static void write_number_questions(const std::string &path, int n) {
    std::ofstream data(path);
    for (int i = 0; i < n; i++)
        data << "{\"question\": \"What is " << i << "?\", \"answer\": \"It is " << i << ".\", \"context\": \"" << i
             << " is a number.\"}\n";
}

// An adapter whose lora_alpha (1e30) makes the merged weights overflow the hidden state.
static std::string overflowing_adapter() {
    char dir[] = "/tmp/qlora_overflow_XXXXXX";
    REQUIRE(mkdtemp(dir));
    std::string d = dir;
    REQUIRE(system(("cp test/fixtures/peft_adapter/adapter_model.safetensors " + d).c_str()) == 0);
    std::ifstream in("test/fixtures/peft_adapter/adapter_config.json");
    std::stringstream text;
    text << in.rdbuf();
    std::string config = text.str();
    size_t at = config.find("\"lora_alpha\": 32");
    REQUIRE(at != std::string::npos);
    config.replace(at, 16, "\"lora_alpha\": 1e30");
    std::ofstream(d + "/adapter_config.json") << config;
    return d;
}

TEST_CASE("generate and evaluate: an adapter that overflows the model stops them with a message") {
    std::string adapter = overflowing_adapter(), output;
    CHECK(run("./generate --quant none --prompt hi --max-new 3 --adapter " + adapter, output) == 1);
    CHECK(output.find("generate: the model's output is NaN/Inf (or overflowed) at token 1") != std::string::npos);
    CHECK(run("./evaluate --quant none --data data/sample_raft.jsonl --limit 1 --out " + adapter +
                  "/eval.json --adapter " + adapter,
              output) == 1);
    CHECK(output.find("evaluate: the fine-tuned model's output is NaN/Inf (or overflowed) on sample 1") !=
          std::string::npos);
    REQUIRE(system(("rm -rf " + adapter).c_str()) == 0);
}

// A copy of the default model whose metadata says 29 layers where it holds 30.
static std::string model_with_a_layer_too_many() {
    std::ifstream in(DEFAULT_MODEL, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string key = "llama.block_count";
    size_t at = bytes.find(std::string(1, (char)key.size()) + std::string(7, '\0') + key);
    REQUIRE(at != std::string::npos);
    at += 8 + key.size() + 4;   // the length, the key, the type: the u32 value
    REQUIRE(bytes[at] == 30);
    bytes[at] = 29;
    std::string path = "/tmp/qlora_cli_layers.gguf";
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
}

TEST_CASE("generate and evaluate: a model file holding tensors it does not use stops them, naming the tensor") {
    std::string model = model_with_a_layer_too_many(), output;
    CHECK(run("./generate --quant none --prompt hi --max-new 1 --model " + model, output) == 1);
    CHECK_MESSAGE(output.find("generate: " + model + ": tensor 'blk.29.") != std::string::npos, output);
    CHECK_MESSAGE(output.find("llama.block_count says 29 layers") != std::string::npos, output);
    CHECK(run("./evaluate --quant none --data data/sample_raft.jsonl --limit 1 --out /tmp/qlora_cli_eval.json "
              "--model " + model, output) == 1);
    CHECK_MESSAGE(output.find("evaluate: " + model + ": tensor 'blk.29.") != std::string::npos, output);
    std::remove(model.c_str());
}

TEST_CASE("evaluate: an --out that is the --data file is refused before any answer, the data untouched") {
    std::string data = "/tmp/qlora_cli_same_" + std::to_string(getpid()) + ".jsonl", output;
    REQUIRE(system(("cp data/sample_raft.jsonl " + data).c_str()) == 0);
    CHECK(run("./evaluate --model test/fixtures/serve/model --data " + data + " --out " + data, output) == 2);
    CHECK_MESSAGE(output.find("evaluate: --out " + data + " is the --data file") != std::string::npos, output);
    CHECK(system(("cmp -s data/sample_raft.jsonl " + data).c_str()) == 0);
    std::remove(data.c_str());
}

TEST_CASE("evaluate and generate: option and data errors name the program and what is wrong") {
    std::string output;
    CHECK(run("./evaluate --data /nonexistent/val.jsonl", output) == 1);
    CHECK(output.find("evaluate: /nonexistent/val.jsonl: cannot open") != std::string::npos);
    CHECK(run("./evaluate --limit", output) == 2);
    CHECK(output.find("evaluate: missing value for --limit") != std::string::npos);
    CHECK(run("./evaluate --bogus", output) == 2);
    CHECK(output.find("evaluate: unknown option --bogus") != std::string::npos);
    CHECK(run("./generate --prompt hi --max-new=3", output) == 2);
    CHECK(output.find("generate: --max-new=3: the value goes after a space: --max-new 3") != std::string::npos);
}

// A prompt file saved with a UTF-8 byte-order mark (some editors write one)
// generates what the same file without it generates: the mark is no part of the prompt.
TEST_CASE("generate: a --prompt-file's byte-order mark is not part of the prompt") {
    char dir[] = "/tmp/qlora_bom_XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    std::string plain = std::string(dir) + "/plain.txt", marked = std::string(dir) + "/marked.txt";
    std::ofstream(plain) << "What is Debian?";
    std::ofstream(marked) << "\xEF\xBB\xBFWhat is Debian?";
    std::string command = "./generate --model test/fixtures/serve/model --device cpu --max-new 6 --prompt-file ";
    std::string without, with;
    REQUIRE(run(command + plain, without) == 0);
    REQUIRE(run(command + marked, with) == 0);
    // the text and the prompt's token count, up to the timings
    auto text_of = [](const std::string &output) { return output.substr(0, output.find(" tokens in ")); };
    CHECK(text_of(with) == text_of(without));
    CHECK(text_of(without).find("[prompt: ") != std::string::npos);
    remove(plain.c_str());
    remove(marked.c_str());
    rmdir(dir);
}

// An adapter directory in older peft's format (adapter_model.bin, a PyTorch pickle) or without
// its weights file is refused before the model loads (the model here is not there), naming the
// file and, for the pickle, the command that converts it; ./merge and ./train --init-adapter say the same.
TEST_CASE("generate, evaluate, merge, train: an adapter with adapter_model.bin only is refused, naming the conversion") {
    char dir[] = "/tmp/qlora_pickle_XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    std::string adapter = dir, output;
    REQUIRE(system(("cp test/fixtures/peft_adapter/adapter_config.json " + adapter).c_str()) == 0);
    std::string missing = adapter + "/adapter_model.safetensors: no such file";
    char err[2048];
    CHECK(adapter_check_config(adapter.c_str(), err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find(missing + " (an adapter directory holds") != std::string::npos, err);
    std::ofstream(adapter + "/adapter_model.bin") << "PK";
    std::string pickle = missing + "; " + adapter + "/adapter_model.bin is there instead, PyTorch's pickle format";
    CHECK(run("./generate --model /nonexistent.gguf --prompt hi --adapter " + adapter, output) == 1);
    CHECK_MESSAGE(output.find("generate: " + pickle) != std::string::npos, output);
    CHECK_MESSAGE(output.find("st.save_file(torch.load('" + adapter + "/adapter_model.bin'") != std::string::npos,
                  output);
    CHECK(run("./evaluate --model /nonexistent.gguf --out " + adapter + "/eval.json --adapter " + adapter, output) == 1);
    CHECK_MESSAGE(output.find("evaluate: " + pickle) != std::string::npos, output);
    CHECK(run("./merge --method cat --weights 1,1 --out " + adapter + "/merged test/fixtures/peft_adapter " + adapter,
              output) == 1);
    CHECK_MESSAGE(output.find("merge: " + pickle) != std::string::npos, output);
    std::ofstream(adapter + "/data.jsonl") << R"({"question": "What is 1?", "answer": "One.", "context": "1 is one."})"
                                           << "\n";
    CHECK(run("./train --device cpu --model test/fixtures/serve/model --data " + adapter + "/data.jsonl --val-frac 0 "
              "--steps 1 --out " + adapter + "/run --init-adapter " + adapter, output) == 1);
    CHECK_MESSAGE(output.find("train: " + pickle) != std::string::npos, output);
    REQUIRE(system(("rm -rf " + adapter).c_str()) == 0);
}

TEST_CASE("generate and evaluate: a number beyond int's range names the range, a --max-new beyond the context is refused") {
    std::string output;
    CHECK(run("./generate --prompt hi --max-new 99999999999", output) == 2);
    CHECK_MESSAGE(output.find("generate: --max-new expects a whole number from -2147483648 to 2147483647, got "
                              "'99999999999'") != std::string::npos, output);
    CHECK(run("./generate --prompt hi --max-new 1.5", output) == 2);
    CHECK_MESSAGE(output.find("generate: --max-new expects a whole number, got '1.5'") != std::string::npos, output);
    // (it overflowed the inference state's size: "out of memory")
    CHECK(run("./evaluate --model test/fixtures/serve/model --data data/sample_raft.jsonl --out /tmp/qlora_cli_ctx.json "
              "--max-new 2147483647", output) == 2);
    CHECK_MESSAGE(output.find("evaluate: --max-new 2147483647 is not less than the model's context of") !=
                  std::string::npos, output);
}

// RAFT JSONL is rendered whole: samples longer than the model's context (256 tokens for the
// tiny serve model) are evaluated with a warning that names them; short ones without.
TEST_CASE("evaluate: samples that reach past the model's context are warned about") {
    std::string output, data = "/tmp/qlora_cli_short_" + std::to_string(getpid()) + ".jsonl";
    std::string command = "./evaluate --model test/fixtures/serve/model --max-new 4 --out /tmp/qlora_cli_ctx.json --data ";
    CHECK(run(command + "data/sample_raft.jsonl --limit 2", output) == 0);
    CHECK_MESSAGE(output.find("evaluate: warning: 2 of the 2 samples of data/sample_raft.jsonl, with --max-new 4, "
                              "reach past the model's context of 256 tokens (the longest, sample 1, has ") !=
                  std::string::npos, output);
    std::ofstream(data) << R"({"question": "What is 1?", "answer": "One.", "context": "1 is one."})" << "\n";
    CHECK(run(command + data, output) == 0);
    CHECK_MESSAGE(output.find("warning") == std::string::npos, output);
    std::remove(data.c_str());
    std::remove("/tmp/qlora_cli_ctx.json");
    std::remove("/tmp/qlora_cli_ctx.svg");
}

// The options a program's --help lists: every "--name" in it but those it names
// as another program's ("as ./train's --quant", "./prepare --no-oracle-answer").
static std::set<std::string> help_options(const std::string &help) {
    std::set<std::string> options;
    std::regex option(R"((\./[a-z]+(?:'s)? )?(--[a-z][a-z0-9-]*))");
    for (std::sregex_iterator m(help.begin(), help.end(), option), end; m != end; ++m)
        if (!(*m)[1].matched) options.insert((*m)[2]);
    return options;
}

// The options a program's parser compares its arguments with: strcmp(f, "--name").
static std::set<std::string> parsed_options(const std::string &source_path) {
    std::ifstream in(source_path);
    std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::set<std::string> options;
    std::regex compared(R"re(strcmp\(\w+(?:\[\w+\])?, "(--[a-z][a-z0-9-]*)"\) == 0)re");
    for (std::sregex_iterator m(source.begin(), source.end(), compared), end; m != end; ++m) options.insert((*m)[1]);
    return options;
}

// Whether program accepts option: a value option answers "--name=1" with where the
// value goes; a flag is taken, and the unknown option after it is the one named.
static bool accepts(const std::string &program, const std::string &option) {
    std::string output;
    run(program + " " + option + "=1", output);
    if (output.find("the value goes after a space") != std::string::npos) return true;
    run(program + " " + option + " --no-such-option", output);
    return output.find("unknown option --no-such-option") != std::string::npos;
}

TEST_CASE("every program: --help lists exactly the options its parser accepts") {
    const char *const programs[][2] = {{"./prepare", "data/prepare.c"}, {"./train", "train.cu"},
                                       {"./generate", "generate.c"},    {"./evaluate", "evaluate.c"},
                                       {"./merge", "merge.c"},          {"./serve", "serve.c"}};
    for (const auto &p : programs) {
        std::string program = p[0], help;
        INFO(program);
        REQUIRE(run(program + " --help", help) == 0);
        std::set<std::string> listed = help_options(help), parsed = parsed_options(p[1]);
        CHECK(parsed.size() >= 10);
        for (const std::string &option : parsed) {
            INFO(option << " is parsed by " << p[1]);
            CHECK(listed.count(option) == 1);
        }
        for (const std::string &option : listed) {
            if (option == "--help") continue;
            INFO(option << " is listed by " << program << " --help");
            CHECK(accepts(program, option));
        }
    }
}

TEST_CASE("merge: --help says that --rank is svd's too, as the code takes it") {
    std::string help;
    REQUIRE(run("./merge --help", help) == 0);
    CHECK(help.find("--rank R          svd's and the *_svd methods' rank") != std::string::npos);
}

// 6 samples in micro-batches of 4 make an epoch of 2 (4 + 2): --epochs 3 is 6 steps (before: 5, each
// epoch dropping the 2 left over), and a --grad-accum past one epoch's 2 is lowered to 2, with a note
// (before: one step of 100 micro-batches took each sample about 67 times).
TEST_CASE("train: an epoch's micro-batches take every sample; --grad-accum beyond one epoch is lowered to it") {
    std::string output, dir = "/tmp/qlora_cli_accum_" + std::to_string(getpid());
    REQUIRE(system(("mkdir -p " + dir).c_str()) == 0);
    write_number_questions(dir + "/data.jsonl", 6);
    std::string command = "./train --device cpu --model test/fixtures/serve/model --data " + dir + "/data.jsonl "
                          "--val-frac 0 --seq 128 --rank 2 --targets q,v --batch 4 --overwrite --out " + dir + "/run ";
    CHECK(run(command + "--epochs 3 --grad-accum 1", output) == 0);
    CHECK_MESSAGE(output.find("training: 6 steps of 1 x 4 samples") != std::string::npos, output);
    CHECK(run(command + "--steps 1 --grad-accum 100", output) == 0);
    CHECK_MESSAGE(output.find("data: --grad-accum 100 is more than the 2 micro-batches of --batch 4 in the 6 training "
                              "samples: 2 per step (one epoch)") != std::string::npos, output);
    CHECK_MESSAGE(output.find("training: 1 steps of 2 x 4 samples") != std::string::npos, output);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

// A sample without its oracle shows the distractors alone: with none (--distractors 0, or a collection of
// one document) every sample keeps its oracle, and ./prepare says so (before: --no-oracle was ignored silently).
TEST_CASE("prepare: --no-oracle without a distractor to show is named as ignored") {
    std::string output, dir = "/tmp/qlora_cli_no_oracle_" + std::to_string(getpid());
    REQUIRE(system(("mkdir -p " + dir).c_str()) == 0);
    std::ofstream(dir + "/docs.jsonl") << "{\"id\": \"a\", \"text\": \"Alpha is the first letter.\"}\n";
    std::ofstream qa(dir + "/qa.jsonl");
    for (int i = 0; i < 4; i++) qa << "{\"question\": \"Q" << i << " about alpha?\", \"answer\": \"First.\", \"doc\": \"a\"}\n";
    qa.close();
    std::string prepare = "./prepare --model test/fixtures/serve/model --out " + dir + "/out ";
    CHECK(run(prepare + "--docs " + dir + "/docs.jsonl --qa " + dir + "/qa.jsonl --no-oracle 0.5", output) == 0);
    CHECK_MESSAGE(output.find("note: --no-oracle 0.5, but with no distractor (a collection of one document) a sample "
                              "without its oracle would show no document: every sample keeps its oracle") !=
                  std::string::npos, output);
    CHECK(run(prepare + "--docs data/example/docs.jsonl --qa data/example/qa.jsonl --distractors 0 --no-oracle 1",
              output) == 0);
    CHECK_MESSAGE(output.find("note: --no-oracle 1, but with no distractor (--distractors 0)") != std::string::npos,
                  output);
    CHECK(run(prepare + "--docs data/example/docs.jsonl --qa data/example/qa.jsonl --distractors 0 --no-oracle 0",
              output) == 0);
    CHECK_MESSAGE(output.find("note: --no-oracle") == std::string::npos, output);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}

// --targets given in another order, or with a name twice, is the same run: recorded as q,k,v,o,gate,up,down
// order names them (before, "v,q,v" went into the log and the run's identity as given, and a resume with
// --targets q,v was refused as another run).
TEST_CASE("train: --targets is recorded in one order, each name once") {
    std::string output, dir = "/tmp/qlora_cli_targets_" + std::to_string(getpid());
    REQUIRE(system(("mkdir -p " + dir).c_str()) == 0);
    write_number_questions(dir + "/data.jsonl", 4);
    std::string command = "./train --device cpu --model test/fixtures/serve/model --data " + dir + "/data.jsonl "
                          "--val-frac 0 --seq 128 --rank 2 --out " + dir + "/run ";
    CHECK(run(command + "--steps 2 --stop-at 1 --targets v,q,v", output) == 0);
    CHECK_MESSAGE(output.find("targets q,v:") != std::string::npos, output);
    CHECK(run(command + "--steps 2 --resume " + dir + "/run --targets q,v", output) == 0);
    CHECK_MESSAGE(output.find("targets q,v:") != std::string::npos, output);
    REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
}
