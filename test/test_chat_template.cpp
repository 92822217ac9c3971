// Tests for chat_template.c and chat_encode: each family's real template
// (test/fixtures/chat_templates/*.jinja) is recognised from a tokenizer's
// tokenizer_config.json, and what we render equals, character for character
// and token for token with the answer flags, what transformers'
// apply_chat_template renders from it (dev/fixtures/make_chat_template_fixtures.py);
// --template's errors and overrides; the exported template.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <unistd.h>

#include "chat_template.h"
#include "data/raft.h"
#include "data/tokfile.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "infer/merge.h"
#include "model.h"
#include "test_util.h"
#include "tokenizer.h"

namespace {

const char *const CHAT_FIXTURES = "test/fixtures/chat_templates/";
const char *const CASES[] = {"smollm2", "qwen2.5", "llama3", "llama3.2", "exaone3"};

JsonValue *load_cases(const std::string &name) {
    std::string path = CHAT_FIXTURES + name + "/cases.json";
    char err[512] = "";
    JsonValue *root = json_parse_file(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(root, err, " (regenerate with python3 dev/fixtures/make_chat_template_fixtures.py)");
    return root;
}

Tokenizer *load_tokenizer_at(const std::string &path) {
    char err[512] = "";
    Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    return t;
}

Tokenizer *load_tokenizer(const std::string &name) {
    std::string path = CHAT_FIXTURES + name + "/tokenizer.json";
    char err[512] = "";
    Tokenizer *t = tokenizer_from_json(path.c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    return t;
}

std::vector<ChatMessage> messages_of(const JsonValue *c) {
    const JsonValue *messages = json_get(c, "messages");
    std::vector<ChatMessage> chat;
    for (size_t m = 0; m < messages->count; m++)
        chat.push_back({json_get_string(&messages->items[m], "role", ""),
                        json_get_string(&messages->items[m], "content", "")});
    return chat;
}

std::string template_file(const std::string &name) {
    std::string path = CHAT_FIXTURES + name + ".jinja";
    char err[512] = "";
    size_t len = 0;
    char *text = read_file(path.c_str(), &len, err, sizeof err);
    REQUIRE_MESSAGE(text, err);
    std::string out(text, len);
    free(text);
    return out;
}

std::string read_text_file(const std::string &path) {
    char err[512] = "";
    size_t len = 0;
    char *text = read_file(path.c_str(), &len, err, sizeof err);
    if (!text) return err;
    std::string out(text, len);
    free(text);
    return out;
}

std::string decoded(const Tokenizer *t, const int *ids, int n) {
    size_t len = 0;
    char *text = tokenizer_decode(t, ids, n, &len);
    REQUIRE(text);
    std::string out(text, len);
    free(text);
    return out;
}

}  // namespace

// Checks that t renders each conversation of root's cases as transformers did.
void check_renders(Tokenizer *t, const JsonValue *root, const char *name) {
    const JsonValue *cases = json_get(root, "cases");
    for (size_t i = 0; i < cases->count; i++) {
        const JsonValue *c = &cases->items[i];
        std::string case_name = std::string(name) + "/" + json_get_string(c, "name", "?");
        std::vector<ChatMessage> chat = messages_of(c);
        int generation_prompt = json_get(c, "add_generation_prompt")->boolean;
        int *ids = nullptr;
        unsigned char *is_answer = nullptr;
        int n = chat_encode(t, chat.data(), (int)chat.size(), generation_prompt, &ids, &is_answer);
        REQUIRE_MESSAGE(n >= 0, case_name);
        size_t len = 0;
        char *text = tokenizer_decode(t, ids, n, &len);
        CHECK_MESSAGE(std::string(text, len) == json_get_string(c, "text", ""), case_name);
        free(text);
        CHECK_MESSAGE(std::vector<int>(ids, ids + n) == json_ints(json_get(c, "ids")), case_name);
        CHECK_MESSAGE(std::vector<int>(is_answer, is_answer + n) == json_ints(json_get(c, "is_answer")),
                      "answer flags of ", case_name);
        free(ids);
        free(is_answer);
    }
}

TEST_CASE("chat templates: each family renders what transformers renders from the real template") {
    for (const char *name : CASES) {
        JsonValue *root = load_cases(name);
        Tokenizer *t = load_tokenizer(name);
        const ChatFamily *family = tokenizer_chat_family(t);
        REQUIRE_MESSAGE(family, name, ": its template is not recognised");
        CHECK_MESSAGE(std::string(family->name) == json_get_string(root, "family", ""), name);
        char err[512];
        CHECK(tokenizer_use_chat_template(t, NULL, err, sizeof err) == 0);
        CHECK(tokenizer_end_of_turn_id(t) == tokenizer_find(t, json_get_string(root, "end_of_turn", "")));
        check_renders(t, root, name);
        tokenizer_free(t);
        json_free(root);
    }
}

TEST_CASE("chat templates: the template in chat_template.jinja (transformers' save_pretrained) is the model's") {
    // qwen2.5_saved/: qwen2.5/ as transformers 5.24 saves it: the template in its own file, not in the config
    JsonValue *root = load_cases("qwen2.5");
    Tokenizer *t = load_tokenizer("qwen2.5_saved");
    CHECK(std::string(tokenizer_chat_origin(t)) == "the model's chat template");
    check_renders(t, root, "qwen2.5_saved");   // with Qwen's own default system message
    tokenizer_free(t);
    json_free(root);
}

TEST_CASE("chat templates: of named templates (a list in tokenizer_config.json) the one named default is the model's") {
    // llama3_named/: llama3/ with its template named "default" beside a "tool_use" one (as Hermes-3 publishes);
    // the dev script checked that transformers renders llama3/cases.json from it
    JsonValue *root = load_cases("llama3");
    Tokenizer *t = load_tokenizer("llama3_named");
    REQUIRE(tokenizer_chat_family(t));
    CHECK(std::string(tokenizer_chat_family(t)->name) == "llama3");
    check_renders(t, root, "llama3_named");
    tokenizer_free(t);
    json_free(root);

    // with no "default" (transformers refuses to guess), or not a list of {name, template}
    std::string dir = "/tmp/qlora_named_XXXXXX";
    REQUIRE(mkdtemp(&dir[0]));
    std::string source = std::string(CHAT_FIXTURES) + "smollm2/tokenizer.json";
    REQUIRE(system(("cp " + source + " " + dir + "/tokenizer.json").c_str()) == 0);
    auto with_config = [&](const char *config) {
        FILE *f = fopen((dir + "/tokenizer_config.json").c_str(), "w");
        REQUIRE(f);
        fputs(config, f);
        fclose(f);
        char err[512] = "";
        Tokenizer *loaded = tokenizer_from_json((dir + "/tokenizer.json").c_str(), err, sizeof err);
        return std::make_pair(loaded, std::string(err));
    };
    auto [nameless, no_err] = with_config("{\"eos_token\": \"<|im_end|>\", \"chat_template\": ["
                                          "{\"name\": \"tool_use\", \"template\": \"{{ 'T' }}\"}, "
                                          "{\"name\": \"rag\", \"template\": \"{{ 'R' }}\"}]}");
    REQUIRE_MESSAGE(nameless, no_err);
    CHECK(tokenizer_chat_family(nameless) == NULL);   // never ChatML from the vocabulary
    char err[512] = "";
    CHECK(tokenizer_use_chat_template(nameless, NULL, err, sizeof err) == -1);
    CHECK_MESSAGE(std::string(err).find("named (tool_use, rag), none \"default\"") != std::string::npos, err);
    CHECK_MESSAGE(std::string(err).find("chatml, llama3") != std::string::npos, err);
    CHECK(tokenizer_use_chat_template(nameless, "chatml", err, sizeof err) == 0);
    tokenizer_free(nameless);
    const char *bad[] = {"{\"chat_template\": 7}", "{\"chat_template\": [{\"name\": \"default\"}]}",
                         "{\"chat_template\": [\"{{ x }}\"]}"};
    for (const char *config : bad) {
        auto [refused, message] = with_config(config);
        CHECK_MESSAGE(refused == NULL, config);
        tokenizer_free(refused);
        CHECK_MESSAGE(message.find(dir + "/tokenizer_config.json: chat_template") == 0, message);
    }
    remove((dir + "/tokenizer.json").c_str());
    remove((dir + "/tokenizer_config.json").c_str());
    rmdir(dir.c_str());
}

TEST_CASE("chat templates: recognised from the real template strings, others refused") {
    CHECK(std::string(chat_family_recognise(template_file("smollm2").c_str())->name) == "chatml");
    CHECK(std::string(chat_family_recognise(template_file("qwen2.5").c_str())->name) == "chatml");
    CHECK(std::string(chat_family_recognise(template_file("llama3").c_str())->name) == "llama3");
    CHECK(std::string(chat_family_recognise(template_file("llama3.2").c_str())->name) == "llama3.1");
    CHECK(std::string(chat_family_recognise(template_file("exaone3").c_str())->name) == "exaone");
    // Phi-4 and Qwen3 share ChatML's marker but render otherwise; Gemma has its own
    CHECK(chat_family_recognise("{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}") == NULL);
    CHECK(chat_family_recognise("<|im_start|>assistant\n<think>\n\n</think>\n\n") == NULL);
    CHECK(chat_family_recognise("{{ '<start_of_turn>' + role + '\n' }}") == NULL);
    int failed = 0;
    char *system = chat_default_system(chat_family_named("chatml"), template_file("qwen2.5").c_str(), &failed);
    REQUIRE(system);
    CHECK(std::string(system) == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
    free(system);
    system = chat_default_system(chat_family_named("exaone"), template_file("exaone3").c_str(), &failed);
    REQUIRE(system);
    CHECK(std::string(system) == "");
    free(system);
    CHECK(chat_default_system(chat_family_named("chatml"), "{{'<|im_start|>' + m + '<|im_end|>'}}", &failed) == NULL);
}

TEST_CASE("chat templates: an unrecognised template is an error naming the families; --template overrides") {
    std::string dir = "/tmp/qlora_chat_XXXXXX";
    REQUIRE(mkdtemp(&dir[0]));
    std::string source = std::string(CHAT_FIXTURES) + "smollm2/tokenizer.json";
    char err[512] = "";
    size_t len = 0;
    char *json = read_file(source.c_str(), &len, err, sizeof err);
    REQUIRE(json);
    AtomicFile file;
    FILE *f = atomic_file_open(&file, (dir + "/tokenizer.json").c_str(), err, sizeof err);
    REQUIRE(f);
    fwrite(json, 1, len, f);
    REQUIRE(atomic_file_commit(&file, err, sizeof err) == 0);
    free(json);
    f = atomic_file_open(&file, (dir + "/tokenizer_config.json").c_str(), err, sizeof err);
    REQUIRE(f);
    fputs("{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"{{ '<start_of_turn>' + role }}\"}", f);
    REQUIRE(atomic_file_commit(&file, err, sizeof err) == 0);

    Tokenizer *t = tokenizer_from_json((dir + "/tokenizer.json").c_str(), err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    CHECK(tokenizer_chat_family(t) == NULL);
    ChatMessage chat[] = {{"user", "Hi"}, {"assistant", "Hello"}};
    int *ids = nullptr;
    unsigned char *answer = nullptr;
    CHECK(chat_encode(t, chat, 2, 0, &ids, &answer) == -1);   // never a silent ChatML
    CHECK(tokenizer_use_chat_template(t, NULL, err, sizeof err) == -1);
    CHECK(std::string(err).find("chatml, llama3, llama3.1, exaone") != std::string::npos);
    CHECK(tokenizer_use_chat_template(t, "vicuna", err, sizeof err) == -1);
    CHECK(std::string(err).find("--template vicuna") != std::string::npos);
    CHECK(std::string(err).find("chatml, llama3, llama3.1, exaone") != std::string::npos);
    CHECK(tokenizer_use_chat_template(t, "llama3", err, sizeof err) == -1);   // no <|eot_id|> in the vocabulary
    CHECK(std::string(err).find("<|eot_id|>") != std::string::npos);
    REQUIRE(tokenizer_use_chat_template(t, "chatml", err, sizeof err) == 0);
    int n = chat_encode(t, chat, 2, 0, &ids, &answer);
    REQUIRE(n > 0);
    size_t text_len = 0;
    char *text = tokenizer_decode(t, ids, n, &text_len);
    CHECK(std::string(text, text_len) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");
    free(text);
    free(ids);
    free(answer);
    // the exported template is the one rendered, not the source's
    char *exported = tokenizer_chat_template(t);
    REQUIRE(exported);
    CHECK(std::string(exported).find("<|im_start|>") != std::string::npos);
    CHECK(std::string(exported).find("<start_of_turn>") == std::string::npos);
    free(exported);
    tokenizer_free(t);
    remove((dir + "/tokenizer.json").c_str());
    remove((dir + "/tokenizer_config.json").c_str());
    rmdir(dir.c_str());
}

TEST_CASE("chat templates: each family's exported Jinja template is recognised as that family") {
    const char *names[] = {"chatml", "llama3", "llama3.1", "exaone"};
    for (const char *name : names) {
        const ChatFamily *family = chat_family_named(name);
        REQUIRE(family);
        char *jinja = chat_family_jinja(family, family->default_system);
        REQUIRE(jinja);
        CHECK_MESSAGE(chat_family_recognise(jinja) == family, name);
        free(jinja);
    }
}

// A tiny random-weight model of each family in HF layout (config.json, safetensors,
// the fixture's tokenizer with the family's special tokens and real template)
// goes through ./prepare and one ./train step, rendered with the family's markers.
TEST_CASE("chat templates: a tiny model of each family goes through ./prepare and a ./train step") {
    struct Family { const char *fixture; Arch arch; const char *assistant_header; };
    const Family families[] = {
        {"smollm2", ARCH_LLAMA, "<|im_start|>assistant\n"},
        {"qwen2.5", ARCH_QWEN2, "<|im_start|>assistant\n"},
        {"llama3", ARCH_LLAMA, "<|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"llama3.2", ARCH_LLAMA, "<|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"exaone3", ARCH_EXAONE, "[|assistant|]"},
    };
    for (const Family &family : families) {
        std::string dir = "/tmp/qlora_chat_model_XXXXXX";
        REQUIRE(mkdtemp(&dir[0]));
        Tokenizer *t = load_tokenizer(family.fixture);
        const std::string end_of_turn = tokenizer_chat_family(t)->end_of_turn;
        const std::string name = tokenizer_chat_family(t)->name;
        Config c = {};
        c.arch = family.arch;
        c.dim = 64;
        c.hidden_dim = 128;
        c.n_layers = 1;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.head_dim = 16;
        c.vocab_size = tokenizer_vocab_size(t);
        c.max_seq_len = 1024;
        c.norm_eps = 1e-5f;
        c.rope_theta = 10000.0f;
        c.attention_bias = family.arch == ARCH_QWEN2;
        c.tied_embeddings = 1;
        Model m;
        char err[1024] = "";
        REQUIRE_MESSAGE(model_init_random(&m, &c, 7, err, sizeof err) == 0, err);
        m.tokenizer = t;   // model_free frees it
        REQUIRE_MESSAGE(model_save_hf(&m, dir.c_str(), err, sizeof err) == 0, err);
        model_free(&m);

        std::string log = dir + "/log.txt";
        std::string prepare = "./prepare --input data/sample_raft.jsonl --model " + dir + " --out " + dir +
                              "/data --max-seq 768 --val-frac 0.5 --val-min 1 > " + log + " 2>&1";
        REQUIRE_MESSAGE(system(prepare.c_str()) == 0, family.fixture, ": ", prepare);
        std::string output = read_text_file(log);
        CHECK_MESSAGE(output.find("chat template " + name + " (the model's chat template)") != std::string::npos,
                      output);
        Tokenizer *reloaded = load_tokenizer_at(dir + "/tokenizer.json");
        TokFile data;
        REQUIRE_MESSAGE(tokfile_read(&data, (dir + "/data/train.bin").c_str(), reloaded, err, sizeof err) == 0, err);
        REQUIRE(data.count > 0);
        const TokSample &s = data.samples[0];
        std::string text = decoded(reloaded, s.ids, s.n_tokens);
        CHECK_MESSAGE(text.find(family.assistant_header) != std::string::npos, family.fixture, ": ", text);
        std::vector<int> labels;
        for (int i = 0; i < s.n_tokens; i++)
            if (s.targets[i] != IGNORE_TARGET) labels.push_back(s.targets[i]);
        REQUIRE(!labels.empty());
        CHECK_MESSAGE(labels.back() == tokenizer_find(reloaded, end_of_turn.c_str()), family.fixture);
        tokfile_free(&data);
        tokenizer_free(reloaded);

        std::string train = "./train --model " + dir + " --data " + dir + "/data/train.bin --steps 1 --device cpu "
                            "--seq 768 --rank 4 --out " + dir + "/out > " + log + " 2>&1";
        CHECK_MESSAGE(system(train.c_str()) == 0, family.fixture, ": ", read_text_file(log));
        REQUIRE(system(("rm -rf " + dir).c_str()) == 0);
    }
}
