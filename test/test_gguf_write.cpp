// test_gguf_write.cpp: the GGUF export (formats/gguf_write.h, infer/gguf_export.h):
//   - the stored types: F16, BF16 and Q8_0 bytes of a few fp32 blocks (ties,
//     halves, zeros, fp16-subnormal scales) equal the `gguf` package's, byte
//     for byte (test/fixtures/gguf_write_reference.json,
//     dev/fixtures/make_gguf_write_fixtures.py); the default file's Q8_0
//     embedding (llama.cpp's quantizer) dequantized and quantized again
//     comes back byte for byte;
//   - the default model written as F16 against the file llama.cpp's converter
//     made (the one we ship): every key of it that describes the model or the
//     tokenizer is in ours with the same type and value (tokens, token types,
//     merges, special ids, pre-tokenizer, chat template, hyperparameters),
//     only general.* provenance and the file type differ; the same tensor
//     names and shapes; the Wq/Wk rows in llama.cpp's order (our F16 Q/K
//     equal the shipped file's dequantized Q/K to fp16 rounding);
//   - read back by our loader, every weight is the in-memory one rounded to
//     fp16 bit for bit, the logits of a prompt are the in-memory model's
//     (rounding 135M weights to fp16 moves them by 0.017 measured,
//     tolerance 0.06), and the tokenizer gives the same ids (English,
//     Korean, code, special tokens, a chat);
//   - tiny random Llama, Qwen2 and EXAONE models with the tiny tokenizer
//     fixtures, in F16, BF16 and Q8_0: weights back as their rounding or
//     Q8_0 round trip bit for bit (a Q8_0 matrix whose rows are not whole
//     blocks as F16), logits within each type's error (F16 1.2e-3, BF16
//     9.5e-3, Q8_0 1.9e-2 measured on logits up to ~2; tolerances 4x), the
//     vocabulary padded to the embedding ("[PADn]", unused), EXAONE written
//     as llama;
//   - refused with a message naming the file: no tokenizer, Llama-3 RoPE
//     scaling, an unsupported type; a write that fails (missing folder, file
//     size limit as a full disk, read-only folder when not root) leaves no
//     temp file and an old file untouched; ./train refuses --gguf-type
//     without --merge-gguf and a type it cannot write (exit 2).
// dev/crosscheck/check_gguf_export.py checks the same file with the gguf
// package and transformers' GGUF loader (dev/README.md).
#include <doctest/doctest.h>

#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "formats/float16.h"
#include "formats/ggml_blocks.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "formats/json.h"
#include "infer/forward.h"
#include "infer/gguf_export.h"
#include "test_util.h"
#include "tokenizer.h"

namespace {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct ScratchDir {
    std::string path;
    ScratchDir() {
        char name[] = "/tmp/qlora_gguf_write_XXXXXX";
        REQUIRE(mkdtemp(name) != nullptr);
        path = name;
    }
    ~ScratchDir() {
        chmod(path.c_str(), 0700);
        std::filesystem::remove_all(path);
    }
};

std::string listing(const std::string &dir) {
    std::string names;
    for (const auto &entry : std::filesystem::directory_iterator(dir)) names += entry.path().filename().string() + "\n";
    return names;
}

std::string read_text(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<float> last_logits(const Model &m, const std::vector<int> &tokens) {
    InferState s;
    REQUIRE(infer_state_init(&s, &m.config, (int)tokens.size(), (int)tokens.size()) == 0);
    const float *logits = forward_cpu(&m, &s, tokens.data(), (int)tokens.size(), 0, 0, nullptr);
    std::vector<float> out(logits, logits + m.config.vocab_size);
    infer_state_free(&s);
    return out;
}

float max_abs_diff(const std::vector<float> &a, const std::vector<float> &b) {
    REQUIRE(a.size() == b.size());
    float worst = 0.0f;
    for (size_t i = 0; i < a.size(); i++) worst = std::fmax(worst, std::fabs(a[i] - b[i]));
    return worst;
}

std::vector<int> encode(const Tokenizer *t, const std::string &text, int allow_special) {
    int *ids = nullptr;
    int n = tokenizer_encode(t, text.data(), text.size(), allow_special, &ids);
    REQUIRE(n >= 0);
    std::vector<int> out(ids, ids + n);
    free(ids);
    return out;
}

void check_same_ids(const Tokenizer *original, const Tokenizer *reloaded) {
    CHECK(tokenizer_pretokenizer(reloaded) == tokenizer_pretokenizer(original));
    CHECK(tokenizer_bos_id(reloaded) == tokenizer_bos_id(original));
    CHECK(tokenizer_eos_id(reloaded) == tokenizer_eos_id(original));
    CHECK(tokenizer_unk_id(reloaded) == tokenizer_unk_id(original));
    CHECK(tokenizer_pad_id(reloaded) == tokenizer_pad_id(original));
    const char *texts[] = {
        "The quick brown fox jumps over the lazy dog. It's 2026-11-26, 3.14159!",
        "안녕하세요, 세계! 한국어 토크나이저 테스트입니다. ㅋㅋㅋ",
        "def f(x):\n    return x * 12345  # tab\there\n\n",
        "<|im_start|>user\nHi<|im_end|>\n<|endoftext|><file_sep>x<|im_start",
    };
    for (const char *text : texts)
        for (int allow_special = 0; allow_special < 2; allow_special++) {
            CAPTURE(text);
            CAPTURE(allow_special);
            CHECK(encode(reloaded, text, allow_special) == encode(original, text, allow_special));
        }
}

// The value a weight has after being stored as type and read back.
std::vector<float> stored(const float *values, int64_t n, DType type) {
    std::vector<float> out(values, values + n);
    if (type == DT_F16) for (auto &x : out) x = f16_to_f32(f32_to_f16(x));
    if (type == DT_BF16) for (auto &x : out) x = bf16_to_f32(f32_to_bf16(x));
    if (type == DT_Q8_0) {
        std::vector<unsigned char> blocks((size_t)n / 32 * 34);
        quantize_q8_0(values, blocks.data(), n);
        dequantize_q8_0(blocks.data(), out.data(), n);
    }
    return out;
}

// Every weight of reloaded equals original's stored as type (vectors as F32;
// Q8_0 rows that are not whole blocks as F16); returns how many differ.
int count_weight_mismatches(const Model &original, const Model &reloaded, DType type) {
    std::vector<ModelTensor> a(model_max_tensors(&original.config)), b(model_max_tensors(&reloaded.config));
    int n = model_gguf_tensors(&original, a.data());
    REQUIRE(model_gguf_tensors(&reloaded, b.data()) == n);
    int mismatches = 0;
    for (int i = 0; i < n; i++) {
        int64_t count = a[i].cols ? a[i].rows * a[i].cols : a[i].rows;
        DType t = !a[i].cols ? DT_F32 : (type == DT_Q8_0 && a[i].cols % 32 != 0 ? DT_F16 : type);
        std::vector<float> expected = stored(a[i].values, count, t);
        int same = std::memcmp(expected.data(), b[i].values, (size_t)count * sizeof(float)) == 0;
        if (!same) MESSAGE("differs: " << a[i].name);
        mismatches += !same;
    }
    return mismatches;
}

std::string value_text(const GGUFKeyValue *kv, uint64_t i) {
    if (kv->array_type == GGUF_STRING) return std::string(kv->array_strings[i].ptr, kv->array_strings[i].len);
    int32_t v;
    std::memcpy(&v, (const char *)kv->array_data + 4 * i, 4);
    return std::to_string(v);
}

// Whether ours has the reference's key with the same type and value; "" when so, else what differs.
std::string compare_key(const GGUFKeyValue *ref, const GGUFFile &ours) {
    const GGUFKeyValue *kv = gguf_find(&ours, ref->key);
    if (!kv) return "missing";
    if (kv->type != ref->type) return "type " + std::to_string(kv->type) + " != " + std::to_string(ref->type);
    if (ref->type == GGUF_STRING)
        return std::string(kv->string.ptr, kv->string.len) == std::string(ref->string.ptr, ref->string.len) ? ""
                                                                                                             : "value";
    if (ref->type != GGUF_ARRAY) return kv->int_value == ref->int_value && kv->float_value == ref->float_value ? "" : "value";
    if (kv->array_type != ref->array_type || kv->array_count != ref->array_count) return "array type or length";
    for (uint64_t i = 0; i < ref->array_count; i++)
        if (value_text(kv, i) != value_text(ref, i))
            return "element " + std::to_string(i) + ": " + value_text(kv, i) + " != " + value_text(ref, i);
    return "";
}

// Provenance and what says how the file is stored, which ours sets itself.
bool is_own_key(const std::string &key) {
    return (key.rfind("general.", 0) == 0 && key != "general.architecture") || key == "general.file_type";
}

}  // namespace

TEST_CASE("gguf_write: F16, BF16 and Q8_0 bytes equal the gguf package's") {
    char err[1024] = "";
    JsonValue *ref = json_parse_file("test/fixtures/gguf_write_reference.json", err, sizeof err);
    REQUIRE_MESSAGE(ref, err);
    const JsonValue *list = json_get(ref, "values");
    std::vector<float> values;
    for (size_t i = 0; i < list->count; i++) values.push_back((float)list->items[i].number);
    REQUIRE(values.size() % 32 == 0);
    const std::pair<const char *, DType> types[] = {{"f16", DT_F16}, {"bf16", DT_BF16}, {"q8_0", DT_Q8_0}};
    ScratchDir dir;
    for (auto [key, type] : types) {
        CAPTURE(key);
        // through the writer, read back as raw bytes
        GGUFWriter w;
        gguf_writer_init(&w);
        int64_t shape[1] = {(int64_t)values.size()};
        gguf_put_tensor(&w, "x", 1, shape, type, values.data());
        std::string path = dir.path + "/" + key + ".gguf";
        REQUIRE_MESSAGE(gguf_writer_save(&w, path.c_str(), err, sizeof err) == 0, err);
        gguf_writer_free(&w);
        GGUFFile f;
        REQUIRE_MESSAGE(gguf_open(&f, path.c_str(), err, sizeof err) == 0, err);
        REQUIRE(f.tensors.count == 1);
        std::string hex;
        const unsigned char *bytes = (const unsigned char *)f.tensors.tensors[0].data;
        for (size_t i = 0; i < f.tensors.tensors[0].nbytes; i++) {
            char pair[3];
            snprintf(pair, sizeof pair, "%02x", bytes[i]);
            hex += pair;
        }
        CHECK(hex == json_get_string(ref, key, ""));
        CHECK(f.tensors.tensors[0].dtype == type);
        gguf_close(&f);
    }
    json_free(ref);
}

TEST_CASE("gguf_write: Q8_0 of the default file's Q8_0 embedding gives llama.cpp's bytes back") {
    // llama.cpp quantized token_embd.weight: dequantized and quantized again
    // by quantize_q8_0, every block comes back byte for byte
    GGUFFile f;
    char err[1024] = "";
    REQUIRE_MESSAGE(gguf_open(&f, DEFAULT_MODEL, err, sizeof err) == 0, err);
    const TensorInfo *embed = tensor_find(&f.tensors, "token_embd.weight");
    REQUIRE(embed);
    REQUIRE(embed->dtype == DT_Q8_0);
    int64_t n = tensor_numel(embed);
    std::vector<float> values(n);
    dequantize_q8_0(embed->data, values.data(), n);
    std::vector<unsigned char> again(embed->nbytes);
    quantize_q8_0(values.data(), again.data(), n);
    CHECK(std::memcmp(again.data(), embed->data, embed->nbytes) == 0);
    gguf_close(&f);
}

TEST_CASE("gguf_write: the default model as F16 has every key of llama.cpp's file, and reloads to the same model") {
    const Model &original = default_model();
    ScratchDir dir;
    std::string path = dir.path + "/model.gguf";
    char err[1024] = "";
    REQUIRE_MESSAGE(gguf_write_model(&original, path.c_str(), DT_F16, err, sizeof err) == 0, err);
    CHECK(listing(dir.path) == "model.gguf\n");

    GGUFFile ours, theirs;
    REQUIRE_MESSAGE(gguf_open(&ours, path.c_str(), err, sizeof err) == 0, err);
    REQUIRE_MESSAGE(gguf_open(&theirs, DEFAULT_MODEL, err, sizeof err) == 0, err);
    int compared = 0;
    for (int i = 0; i < theirs.n_kv; i++) {
        if (is_own_key(theirs.kv[i].key)) continue;
        CAPTURE(theirs.kv[i].key);
        CHECK(compare_key(&theirs.kv[i], ours) == "");
        compared++;
    }
    CHECK(compared == 23);
    CHECK(gguf_get_int(&ours, "general.file_type", -1) == 1);              // LLAMA_FTYPE_MOSTLY_F16
    CHECK(gguf_get_int(&ours, "general.quantization_version", -1) == 2);
    CHECK(gguf_get_int(&ours, "general.alignment", -1) == GGUF_DEFAULT_ALIGNMENT);
    // the same tensors; ours F16 matrices and F32 vectors
    REQUIRE(ours.tensors.count == theirs.tensors.count);
    for (int i = 0; i < theirs.tensors.count; i++) {
        const TensorInfo *t = &theirs.tensors.tensors[i], *o = tensor_find(&ours.tensors, t->name);
        CAPTURE(t->name);
        REQUIRE(o);
        CHECK(o->ndim == t->ndim);
        CHECK(std::memcmp(o->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim) == 0);
        CHECK(o->dtype == (t->ndim == 2 ? DT_F16 : DT_F32));
    }
    // Wq/Wk rows in llama.cpp's order: ours equal the shipped file's values (fp16 rounding)
    for (const char *name : {"blk.0.attn_q.weight", "blk.29.attn_k.weight"}) {
        CAPTURE(name);
        const TensorInfo *t = tensor_find(&theirs.tensors, name), *o = tensor_find(&ours.tensors, name);
        int64_t n = tensor_numel(t);
        std::vector<float> expected(n), got(n);
        tensor_to_f32(t->dtype, t->data, expected.data(), n);
        tensor_to_f32(o->dtype, o->data, got.data(), n);
        CHECK(max_abs_diff(stored(expected.data(), n, DT_F16), got) == 0.0f);
    }
    gguf_close(&theirs);
    gguf_close(&ours);

    Model reloaded;
    REQUIRE_MESSAGE(model_load(&reloaded, path.c_str(), err, sizeof err) == 0, err);
    CHECK(std::memcmp(&reloaded.config, &original.config, sizeof(Config)) == 0);
    CHECK(count_weight_mismatches(original, reloaded, DT_F16) == 0);
    std::vector<int> prompt = encode(original.tokenizer, "The capital of France is", 0);
    float diff = max_abs_diff(last_logits(original, prompt), last_logits(reloaded, prompt));
    MESSAGE("F16 default model: max |logit difference| " << diff);
    CHECK(diff < 0.06f);
    check_same_ids(original.tokenizer, reloaded.tokenizer);
    model_free(&reloaded);
}

namespace {

// A tiny random model of arch with the tiny tokenizer fixture of that
// family; the embedding has 5 rows more than the vocabulary (padding), the
// MLP rows (hidden 80) are not whole Q8_0 blocks.
void tiny_model(Model *m, Arch arch) {
    const char *tokenizer = arch == ARCH_QWEN2 ? "test/fixtures/tokenizer_tiny_qwen2.json"
                                               : "test/fixtures/tokenizer_tiny_llama3.json";
    char err[1024] = "";
    Tokenizer *t = tokenizer_from_json(tokenizer, err, sizeof err);
    REQUIRE_MESSAGE(t, err);
    Config c = {};
    c.arch = arch;
    c.dim = 64;
    c.hidden_dim = 80;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = tokenizer_vocab_size(t) + 5;
    c.max_seq_len = 64;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.attention_bias = arch == ARCH_QWEN2;
    c.tied_embeddings = arch == ARCH_LLAMA;
    REQUIRE_MESSAGE(model_init_random(m, &c, 17, err, sizeof err) == 0, err);
    m->tokenizer = t;
}

}  // namespace

TEST_CASE("gguf_write: tiny Llama, Qwen2 and EXAONE models in F16, BF16 and Q8_0 reload to their rounding") {
    // max |logit difference| to the fp32 model (logits up to ~2), measured over the three
    // models: F16 1.2e-3, BF16 9.5e-3, Q8_0 1.9e-2 (its weights' error is up to d / 2 = max|x| / 254
    // per block, bf16's 2^-9 relative); tolerances 4x those
    const std::pair<DType, float> types[] = {{DT_F16, 5e-3f}, {DT_BF16, 4e-2f}, {DT_Q8_0, 8e-2f}};
    for (Arch arch : {ARCH_LLAMA, ARCH_QWEN2, ARCH_EXAONE}) {
        Model m;
        tiny_model(&m, arch);
        for (auto [type, tolerance] : types) {
            std::string what = std::string(arch_name(arch)) + " " + gguf_export_type_name(type);
            CAPTURE(what);
            ScratchDir dir;
            std::string path = dir.path + "/tiny.gguf";
            char err[1024] = "";
            REQUIRE_MESSAGE(gguf_write_model(&m, path.c_str(), type, err, sizeof err) == 0, err);
            Model reloaded;
            REQUIRE_MESSAGE(model_load(&reloaded, path.c_str(), err, sizeof err) == 0, err);
            Config expected = m.config;
            if (arch == ARCH_EXAONE) expected.arch = ARCH_LLAMA;   // written as llama
            CHECK(std::memcmp(&reloaded.config, &expected, sizeof(Config)) == 0);
            CHECK(count_weight_mismatches(m, reloaded, type) == 0);
            std::vector<int> prompt = encode(m.tokenizer, "Hello, world! 안녕 123", 0);
            REQUIRE(prompt.size() > 3);
            std::vector<float> expected_logits = last_logits(m, prompt);
            float diff = max_abs_diff(expected_logits, last_logits(reloaded, prompt));
            float scale = max_abs_diff(expected_logits, std::vector<float>(expected_logits.size(), 0.0f));
            MESSAGE(what << ": max |logit difference| " << diff << " (max |logit| " << scale << ")");
            CHECK(diff > 0.0f);
            CHECK(diff < tolerance);
            // the padded rows: "[PADn]", unused; the rest the same tokens
            int n = tokenizer_vocab_size(m.tokenizer);
            CHECK(tokenizer_vocab_size(reloaded.tokenizer) == n + 5);
            size_t len;
            const char *pad = tokenizer_token_text(reloaded.tokenizer, n + 2, &len);
            CHECK(std::string(pad, len) == "[PAD" + std::to_string(n + 2) + "]");
            check_same_ids(m.tokenizer, reloaded.tokenizer);
            model_free(&reloaded);
        }
        model_free(&m);
    }
}

TEST_CASE("gguf_write: a model it cannot write is refused with the file named") {
    Model m;
    tiny_model(&m, ARCH_QWEN2);
    ScratchDir dir;
    std::string path = dir.path + "/x.gguf";
    char err[1024] = "";
    CHECK(gguf_write_model(&m, path.c_str(), DT_Q4_1, err, sizeof err) != 0);
    CHECK(std::string(err).find(path + ": cannot store the weights as Q4_1") == 0);
    m.config.rope_factor = 8.0f;
    CHECK(gguf_write_model(&m, path.c_str(), DT_F16, err, sizeof err) != 0);
    CHECK(std::string(err).find("Llama-3 RoPE scaling") != std::string::npos);
    m.config.rope_factor = 0.0f;
    Tokenizer *t = m.tokenizer;
    m.tokenizer = nullptr;
    CHECK(gguf_write_model(&m, path.c_str(), DT_F16, err, sizeof err) != 0);
    CHECK(std::string(err) == path + ": the model has no tokenizer, which a GGUF file must hold");
    m.tokenizer = t;
    CHECK(listing(dir.path) == "");
    DType type;
    CHECK(gguf_export_type_from_name("q8_0", &type) == 0);
    CHECK(type == DT_Q8_0);
    CHECK(gguf_export_type_from_name("q4_1", &type) != 0);
    model_free(&m);
}

TEST_CASE("gguf_write: a write that fails leaves no temp and the old file as it was") {
    Model m;
    tiny_model(&m, ARCH_LLAMA);
    ScratchDir dir;
    char err[1024] = "";
    // a folder that is not there
    std::string missing = dir.path + "/no/such/model.gguf";
    CHECK(gguf_write_model(&m, missing.c_str(), DT_F16, err, sizeof err) != 0);
    CHECK(std::string(err).find(missing + ": cannot create") == 0);
    // a full disk, as a file size limit: writes past 64 KB fail (EFBIG) half way through the tensors
    std::string path = dir.path + "/model.gguf";
    std::ofstream(path) << "old";
    struct rlimit saved;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
    struct rlimit limit = saved;
    limit.rlim_cur = 64 * 1024;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &limit) == 0);
    int status = gguf_write_model(&m, path.c_str(), DT_F16, err, sizeof err);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &saved) == 0);
    signal(SIGXFSZ, old_handler);
    CHECK(status != 0);
    CHECK_MESSAGE(std::string(err).find(path + ": cannot write") == 0, err);
    CHECK(listing(dir.path) == "model.gguf\n");
    CHECK(read_text(path) == "old");
    // a read-only folder (root writes anyway: checked only for other users)
    if (geteuid() != 0) {
        std::string locked = dir.path + "/locked";
        REQUIRE(mkdir(locked.c_str(), 0500) == 0);
        CHECK(gguf_write_model(&m, (locked + "/model.gguf").c_str(), DT_F16, err, sizeof err) != 0);
        CHECK(std::string(err).find("Permission denied") != std::string::npos);
        CHECK(listing(locked) == "");
        chmod(locked.c_str(), 0700);
    }
    // and the file it writes is read by nothing we ship with a complaint: our loader takes it whole
    REQUIRE_MESSAGE(gguf_write_model(&m, path.c_str(), DT_Q8_0, err, sizeof err) == 0, err);
    CHECK(listing(dir.path) == "model.gguf\n");
    Model reloaded;
    CHECK_MESSAGE(model_load(&reloaded, path.c_str(), err, sizeof err) == 0, err);
    model_free(&reloaded);
    model_free(&m);
}

TEST_CASE("gguf_write: ./train refuses --gguf-type without --merge-gguf, and a type it cannot write") {
    const std::string cases[][2] = {
        {"./train --gguf-type q8_0", "train: --gguf-type needs --merge-gguf"},
        {"./train --merge-gguf --gguf-type q4_1", "train: --gguf-type expects f16, bf16 or q8_0, got q4_1"},
    };
    for (const auto &c : cases) {
        std::string log = "/tmp/qlora_gguf_write_cli.log";
        int status = system((c[0] + " > " + log + " 2>&1").c_str());
        std::string output = read_text(log);
        std::remove(log.c_str());
        CHECK_MESSAGE(WIFEXITED(status), c[0]);
        CHECK_MESSAGE(WEXITSTATUS(status) == 2, c[0]);
        CHECK_MESSAGE(output.find(c[1]) != std::string::npos, output);
    }
}
