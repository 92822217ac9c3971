// test_nf4.cpp: NF4 quantization (nf4.h) against bitsandbytes 0.50.2: the
// code book re-derived from normal quantiles, the midpoint rule and its
// ties, the signed dynamic map, packed bytes and scales equal to
// quantize_4bit's on fixture tensors (test/fixtures/nf4_reference.safetensors,
// written by dev/fixtures/make_nf4_fixtures.py), bitsandbytes' error statistics on
// randn(1024, 1024), the per-block error bound, and the memory story.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "nf4.h"
#include "ops/random.h"
#include "formats/safetensors.h"

namespace {

const char *const FIXTURE = "test/fixtures/nf4_reference.safetensors";

// The fixture cases of dev/fixtures/make_nf4_fixtures.py.
const char *const CASES[] = {"weights64x64", "rows3x100", "odd1x99", "zero3x70", "ties2x64", "dq130x129"};

struct Fixture {
    SafetensorsFile file;
    Fixture() {
        char err[512];
        REQUIRE_MESSAGE(safetensors_open(&file, FIXTURE, err, sizeof err) == 0, err,
                        " (regenerate with python3 dev/fixtures/make_nf4_fixtures.py)");
    }
    ~Fixture() { safetensors_close(&file); }
    const TensorInfo *find(const std::string &name) const { return tensor_find(&file.tensors, name.c_str()); }
    const TensorInfo *get(const std::string &name) const {
        const TensorInfo *t = find(name);
        REQUIRE_MESSAGE(t, "fixture tensor missing: ", name);
        return t;
    }
    std::vector<float> floats(const std::string &name) const {
        const TensorInfo *t = get(name);
        REQUIRE(t->dtype == DT_F32);
        const float *p = (const float *)t->data;
        return std::vector<float>(p, p + tensor_numel(t));
    }
    // uint8 data, stored as int32 (0..255)
    std::vector<uint8_t> bytes(const std::string &name) const {
        const TensorInfo *t = get(name);
        REQUIRE(t->dtype == DT_I32);
        const int32_t *p = (const int32_t *)t->data;
        std::vector<uint8_t> out((size_t)tensor_numel(t));
        for (size_t i = 0; i < out.size(); i++) {
            REQUIRE((p[i] >= 0 && p[i] <= 255));
            out[i] = (uint8_t)p[i];
        }
        return out;
    }
};

// Number of floats between a and b (0 when equal; +0 and -0 are equal).
int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    // map the sign-magnitude bit patterns onto one ordered integer line
    int64_t oa = ia < 0 ? (int64_t)INT32_MIN - ia : ia;
    int64_t ob = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return oa > ob ? oa - ob : ob - oa;
}

// Deterministic N(0, 1) samples: splitmix64 uniforms through Box-Muller.
struct Gaussian {
    uint64_t state;
    explicit Gaussian(uint64_t seed) : state(seed) {}
    // uniform in (0, 1]
    double uniform() { return ((splitmix64_next(&state) >> 11) + 1) * 0x1.0p-53; }
    // x = sqrt(-2 ln u1) cos(2 pi u2)
    float next() { return (float)(std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * M_PI * uniform())); }
};

std::vector<float> gaussian(size_t n, uint64_t seed, float scale) {
    Gaussian g(seed);
    std::vector<float> x(n);
    for (float &v : x) v = g.next() * scale;
    return x;
}

// The inverse of Phi(x) = erfc(-x / sqrt 2) / 2, by bisection in double.
double inverse_normal_cdf(double p) {
    double lo = -40.0, hi = 40.0;
    for (int i = 0; i < 200; i++) {
        double mid = (lo + hi) / 2;
        if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) lo = mid;
        else hi = mid;
    }
    return (lo + hi) / 2;
}

// Point i of torch.linspace(start, end, steps) in float32, as torch computes
// it (from the start for the first half, from the end for the rest).
float torch_linspace(float start, float end, int steps, int i) {
    float step = (end - start) / (float)(steps - 1);
    if (i < steps / 2) return start + step * (float)i;
    return end - step * (float)(steps - 1 - i);
}

// max_k (code[k+1] - code[k]) / 2: the largest rounding error of a code book in [-1, 1]
float max_half_gap(const float *code, int n) {
    float worst = 0.0f;
    for (int k = 0; k + 1 < n; k++) worst = std::fmax(worst, (code[k + 1] - code[k]) / 2);
    return worst;
}

std::vector<float> dequantize(const NF4Tensor &q) {
    std::vector<float> out((size_t)q.n);
    nf4_dequantize(&q, out.data());
    return out;
}

std::vector<float> absmax_values(const NF4Tensor &q) {
    std::vector<float> out((size_t)nf4_num_blocks(q.n));
    nf4_absmax_values(&q, out.data());
    return out;
}

// True absmax of each 64-block of x.
std::vector<float> exact_absmax(const std::vector<float> &x) {
    std::vector<float> out((size_t)nf4_num_blocks((int64_t)x.size()), 0.0f);
    for (size_t i = 0; i < x.size(); i++) out[i / 64] = std::fmax(out[i / 64], std::fabs(x[i]));
    return out;
}

// bitsandbytes 0.50.2's CPU 8-bit quantizer reads a table of 65536 points
// over [-1, 1] (csrc/cpu_ops.cpp, build_quantize_lut) instead of searching
// the map, so near a midpoint it can pick the neighbouring code. Such a
// difference is accepted when the two codes are neighbours, v lies within two
// table steps (2 / 65535) of their midpoint, and ours is at least as near.
bool explained_by_lookup_table(const float *map, float v, int ours, int theirs) {
    if (std::abs(ours - theirs) != 1) return false;
    float midpoint = (map[ours] + map[theirs]) / 2;
    return std::fabs(v - midpoint) <= 2.0f / 65535 && std::fabs(v - map[ours]) <= std::fabs(v - map[theirs]);
}

}  // namespace

TEST_CASE("nf4: the code book is bitsandbytes' normal quantiles") {
    // bitsandbytes' create_normal_map(0.9677083): the inverse normal CDF at
    // torch.linspace(0.9677083, 0.5, 9)[:-1] (positive side) and minus it at
    // linspace(0.9677083, 0.5, 8)[:-1] (negative side), as float32, plus 0;
    // sorted and divided by the largest.
    std::vector<float> values;
    for (int i = 0; i < 8; i++) values.push_back((float)inverse_normal_cdf(torch_linspace(0.9677083f, 0.5f, 9, i)));
    for (int i = 0; i < 7; i++) values.push_back((float)-inverse_normal_cdf(torch_linspace(0.9677083f, 0.5f, 8, i)));
    values.push_back(0.0f);
    std::sort(values.begin(), values.end());
    REQUIRE(values.size() == 16);
    float largest = values[15];
    CHECK(largest == doctest::Approx(1.8481).epsilon(1e-4));
    for (int k = 0; k < 16; k++) {
        INFO("code ", k);
        CHECK(std::fabs(values[k] / largest - NF4_CODE[k]) <= 1e-7f);
    }
    CHECK(NF4_CODE[7] == 0.0f);

    Fixture fixture;
    std::vector<float> bnb_code = fixture.floats("nf4_code");
    REQUIRE(bnb_code.size() == 16);
    for (int k = 0; k < 16; k++) CHECK(NF4_CODE[k] == bnb_code[k]);
}

TEST_CASE("nf4: midpoints, and a value on a midpoint takes the lower code") {
    // REFERENCE.md's midpoints, in double; ours are the same rounded to fp32
    const double reference[15] = {
        -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
        -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
        0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
        0.5016634166240692, 0.6427869200706482, 0.8614784181118011};
    for (int k = 0; k < 15; k++) {
        INFO("midpoint ", k);
        CHECK(NF4_MIDPOINT[k] == (NF4_CODE[k] + NF4_CODE[k + 1]) / 2);
        CHECK(NF4_MIDPOINT[k] == (float)reference[k]);
        CHECK(nf4_nearest_code(NF4_MIDPOINT[k]) == k);
        CHECK(nf4_nearest_code(std::nextafter(NF4_MIDPOINT[k], 2.0f)) == k + 1);
        CHECK(nf4_nearest_code(std::nextafter(NF4_MIDPOINT[k], -2.0f)) == k);
    }
    for (int k = 0; k < 16; k++) CHECK(nf4_nearest_code(NF4_CODE[k]) == k);
    CHECK(nf4_nearest_code(-1.0f) == 0);
    CHECK(nf4_nearest_code(1.0f) == 15);
    CHECK(nf4_nearest_code(0.0f) == NF4_ZERO_CODE);
    CHECK(nf4_nearest_code(-0.0f) == NF4_ZERO_CODE);

    // Through the quantizer: one block with absmax 1, so x / absmax is x.
    std::vector<float> x(64, 0.0f);
    x[0] = 1.0f;
    for (int k = 0; k < 15; k++) x[1 + k] = NF4_MIDPOINT[k];
    NF4Tensor q;
    REQUIRE(nf4_quantize(&q, x.data(), 64, 0) == 0);
    CHECK((q.packed[0] >> 4) == 15);
    for (int k = 0; k < 15; k++) {
        int i = 1 + k;
        int code = i % 2 == 0 ? q.packed[i / 2] >> 4 : q.packed[i / 2] & 15;
        CHECK(code == k);
    }
    nf4_free(&q);
}

TEST_CASE("nf4: the signed dynamic map of the double quant") {
    float map[256];
    dynamic_map_signed(map);
    CHECK(ulp_distance(map[0], -0.992968738079071f) <= 1);
    CHECK(map[127] == 0.0f);
    CHECK(map[128] == doctest::Approx(5.5e-7).epsilon(1e-6));
    CHECK(map[255] == 1.0f);
    for (int i = 0; i < 255; i++) CHECK(map[i] < map[i + 1]);
    // symmetric except for the extra 1.0
    for (int i = 0; i < 127; i++) CHECK(map[i] == -map[254 - i]);

    Fixture fixture;
    std::vector<float> bnb_map = fixture.floats("dynamic_map");
    REQUIRE(bnb_map.size() == 256);
    int exact = 0;
    for (int i = 0; i < 256; i++) {
        INFO("entry ", i, ": ours ", map[i], ", bitsandbytes' ", bnb_map[i]);
        CHECK(ulp_distance(map[i], bnb_map[i]) <= 1);
        exact += map[i] == bnb_map[i];
    }
    MESSAGE("dynamic map: ", exact, " of 256 entries equal bitsandbytes' bit for bit, the rest within 1 ulp");
}

TEST_CASE("nf4: packed bytes and absmax equal bitsandbytes' quantize_4bit (no double quant)") {
    Fixture fixture;
    for (const char *name : CASES) {
        INFO("case ", std::string(name));
        std::string c = name;
        std::vector<float> x = fixture.floats(c + ".x");
        std::vector<uint8_t> want_packed = fixture.bytes(c + ".packed");
        std::vector<float> want_absmax = fixture.floats(c + ".absmax");
        NF4Tensor q;
        REQUIRE(nf4_quantize(&q, x.data(), (int64_t)x.size(), 0) == 0);
        REQUIRE(want_packed.size() == (x.size() + 1) / 2);
        REQUIRE(want_absmax.size() == (size_t)nf4_num_blocks(q.n));
        int bad_bytes = 0, bad_absmax = 0;
        for (size_t j = 0; j < want_packed.size(); j++) bad_bytes += q.packed[j] != want_packed[j];
        for (size_t b = 0; b < want_absmax.size(); b++) {
            // bitsandbytes stores its floor 1e-38 for an all-zero SHORT last block; we store 0
            bool zero_short_block = b + 1 == want_absmax.size() && x.size() % 64 != 0 && want_absmax[b] == 1e-38f;
            float want = zero_short_block ? 0.0f : want_absmax[b];
            bad_absmax += q.absmax[b] != want;
        }
        CHECK(bad_bytes == 0);
        CHECK(bad_absmax == 0);
        if (fixture.find(c + ".dequant")) {
            std::vector<float> want = fixture.floats(c + ".dequant");
            std::vector<float> got = dequantize(q);
            int bad = 0;
            for (size_t i = 0; i < got.size(); i++) bad += got[i] != want[i];
            CHECK(bad == 0);
        }
        nf4_free(&q);
    }
}

TEST_CASE("nf4: double quant equals bitsandbytes' compress_statistics=True") {
    float map[256];
    dynamic_map_signed(map);
    const float dyn_half_gap = max_half_gap(map, 256);
    Fixture fixture;
    for (const char *name : CASES) {
        INFO("case ", std::string(name));
        std::string c = name;
        std::vector<float> x = fixture.floats(c + ".x");
        std::vector<uint8_t> want_packed = fixture.bytes(c + ".packed");
        std::vector<float> bnb_absmax = fixture.floats(c + ".absmax");
        std::vector<uint8_t> want_q = fixture.bytes(c + ".dq.absmax_q");
        std::vector<float> want_absmax2 = fixture.floats(c + ".dq.absmax2");
        float bnb_offset = fixture.floats(c + ".dq.offset")[0];
        std::vector<float> bnb_dequant = fixture.floats(c + ".dq.absmax_dequant");
        int64_t n_blocks = (int64_t)bnb_absmax.size();
        REQUIRE(want_absmax2.size() == (size_t)((n_blocks + 255) / 256));

        // The 8-bit block quantizer on its own, fed bitsandbytes' absmax and
        // offset: equal absmax2, equal codes but for lookup-table cases.
        std::vector<uint8_t> codes((size_t)n_blocks);
        std::vector<float> absmax2(want_absmax2.size());
        nf4_double_quantize(bnb_absmax.data(), n_blocks, bnb_offset, codes.data(), absmax2.data());
        for (size_t k = 0; k < absmax2.size(); k++) CHECK(absmax2[k] == want_absmax2[k]);
        int table_cases = 0;
        for (int64_t b = 0; b < n_blocks; b++) {
            if (codes[b] == want_q[b]) continue;
            float v = (bnb_absmax[b] - bnb_offset) * (1.0f / want_absmax2[b / 256]);
            INFO("block ", b, ": v ", v, ", our code ", (int)codes[b], ", theirs ", (int)want_q[b]);
            CHECK(explained_by_lookup_table(map, v, codes[b], want_q[b]));
            table_cases++;
        }
        // Their codes through our map and our fused multiply-add: their
        // dequantized absmax up to the last bit of each term (our map entries
        // are within 1 ulp of theirs).
        for (int64_t b = 0; b < n_blocks; b++) {
            float product = map[want_q[b]] * want_absmax2[b / 256];
            float ours = std::fma(map[want_q[b]], want_absmax2[b / 256], bnb_offset);
            CHECK(std::fabs(ours - bnb_dequant[b]) <= 0x1.0p-22f * (std::fabs(product) + std::fabs(bnb_offset)));
        }

        // End to end: our offset is the mean summed in double, theirs torch's
        // float32 sum (within 2 ulp); codes of values near the offset may then
        // move by a step of the (very fine) map near 0. Both dequantized
        // absmax are within half a map step of the true one.
        NF4Tensor q;
        REQUIRE(nf4_quantize(&q, x.data(), (int64_t)x.size(), 1) == 0);
        CHECK(q.absmax == nullptr);
        CHECK(ulp_distance(q.absmax_offset, bnb_offset) <= 2);
        int bad_bytes = 0;
        for (size_t j = 0; j < want_packed.size(); j++) bad_bytes += q.packed[j] != want_packed[j];
        CHECK(bad_bytes == 0);
        int same_codes = 0;
        for (int64_t b = 0; b < n_blocks; b++) same_codes += q.absmax_q[b] == want_q[b];
        CHECK(same_codes >= n_blocks * 98 / 100);
        std::vector<float> ours = absmax_values(q);
        for (int64_t b = 0; b < n_blocks; b++) {
            float step = 2 * dyn_half_gap * want_absmax2[b / 256];
            CHECK(std::fabs(ours[b] - bnb_dequant[b]) <= step * 1.001f + 1e-6f * bnb_absmax[b]);
        }
        MESSAGE(std::string(name), ": offset ", q.absmax_offset, " vs bitsandbytes' ", bnb_offset, " (",
                ulp_distance(q.absmax_offset, bnb_offset), " ulp); with their offset ", n_blocks - table_cases, " of ",
                n_blocks, " codes equal (the rest lookup-table cases); end to end ", same_codes, " of ", n_blocks);
        nf4_free(&q);
    }
}

TEST_CASE("nf4: an all-zero block packs 0x77 with absmax 0 and dequantizes to 0") {
    Fixture fixture;
    std::vector<float> x = fixture.floats("zero3x70.x");
    REQUIRE(x.size() == 210);
    for (int dq = 0; dq <= 1; dq++) {
        NF4Tensor q;
        REQUIRE(nf4_quantize(&q, x.data(), (int64_t)x.size(), dq) == 0);
        // block 1 (values 64..127) and the short last block (192..209) are all zero
        for (int j = 32; j < 64; j++) CHECK(q.packed[j] == 0x77);
        for (int j = 96; j < 105; j++) CHECK(q.packed[j] == 0x77);
        std::vector<float> w = dequantize(q);
        for (int i = 64; i < 128; i++) CHECK(std::fabs(w[i]) <= (dq ? 1e-6f : 0.0f));
        if (!dq) {
            CHECK(q.absmax[1] == 0.0f);
            CHECK(q.absmax[3] == 0.0f);
        }
        nf4_free(&q);
    }
}

TEST_CASE("nf4: error statistics on randn(1024, 1024) match bitsandbytes'") {
    // bitsandbytes' test_4bit_quant (nf4, blocksize 64):
    //   err = |A1 - A2|, mean(err) ~ 0.072792,
    //   relerr = mean(err / (|A1| + 1e-8)) ~ 0.203299.
    // Over seeds the means move by ~3e-4; we allow 2e-3.
    std::vector<float> x = gaussian(1024 * 1024, 1234, 1.0f);
    for (int dq = 0; dq <= 1; dq++) {
        NF4Tensor q;
        REQUIRE(nf4_quantize(&q, x.data(), (int64_t)x.size(), dq) == 0);
        std::vector<float> w = dequantize(q);
        double err_sum = 0.0, rel_sum = 0.0;
        for (size_t i = 0; i < x.size(); i++) {
            double err = std::fabs((double)x[i] - w[i]);
            err_sum += err;
            rel_sum += err / (std::fabs((double)x[i]) + 1e-8);
        }
        double mean_err = err_sum / x.size(), mean_rel = rel_sum / x.size();
        MESSAGE("randn(1024, 1024), double quant ", dq, ": mean |err| ", mean_err, ", mean rel err ", mean_rel);
        CHECK(std::fabs(mean_err - 0.0728) <= 0.002);
        CHECK(std::fabs(mean_rel - 0.2033) <= 0.002);
        nf4_free(&q);
    }
}

TEST_CASE("nf4: dequant(quant(x)) is within the per-block bound") {
    // |x - code * absmax| <= absmax * (largest half-gap of the code book);
    // with double quant, plus |absmax - dequantized absmax|, which is at most
    // absmax2 * (largest half-gap of the dynamic map).
    float map[256];
    dynamic_map_signed(map);
    const float nf4_half_gap = max_half_gap(NF4_CODE, 16);
    const float dyn_half_gap = max_half_gap(map, 256);
    CHECK(nf4_half_gap == doctest::Approx(0.1519).epsilon(1e-3));
    const int64_t sizes[] = {1, 2, 63, 64, 65, 99, 128, 1000, 64 * 256 + 64 * 7 + 3};
    uint64_t seed = 7;
    for (int64_t n : sizes) {
        for (int dq = 0; dq <= 1; dq++) {
            INFO("n ", n, ", double quant ", dq);
            std::vector<float> x = gaussian((size_t)n, seed++, 0.02f);
            x[(size_t)n / 2] *= 40.0f;  // an outlier
            NF4Tensor q;
            REQUIRE(nf4_quantize(&q, x.data(), n, dq) == 0);
            CHECK(nf4_bytes(&q) == nf4_bytes_for(n, dq));
            std::vector<float> absmax = exact_absmax(x);
            std::vector<float> absmax_dq = absmax_values(q);
            std::vector<float> w = dequantize(q);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) {
                float a = absmax[(size_t)i / 64];
                float scale_err = std::fabs(a - absmax_dq[(size_t)i / 64]);
                if (dq) {
                    float a2 = q.absmax2[i / 64 / 256];
                    CHECK(scale_err <= a2 * dyn_half_gap * 1.001f + 1e-6f * a);
                } else {
                    CHECK(scale_err == 0.0f);
                }
                float bound = a * nf4_half_gap * (1 + 1e-6f) + scale_err;
                bad += std::fabs(x[i] - w[i]) > bound;
            }
            CHECK(bad == 0);
            nf4_free(&q);
        }
    }
}

TEST_CASE("nf4: double quant of a single block keeps its absmax exactly") {
    // One 64-block: offset = absmax, so absmax - offset = 0 and absmax2 = 0;
    // we store code 127 (dyn = 0), and the absmax comes back as the offset.
    std::vector<float> x = gaussian(64, 99, 3.0f);
    NF4Tensor q;
    REQUIRE(nf4_quantize(&q, x.data(), 64, 1) == 0);
    CHECK(q.absmax2[0] == 0.0f);
    CHECK(q.absmax_q[0] == 127);
    CHECK(absmax_values(q)[0] == exact_absmax(x)[0]);
    nf4_free(&q);
    CHECK(nf4_quantize(&q, x.data(), 0, 1) == -1);
    CHECK(q.packed == nullptr);
}

TEST_CASE("nf4: storage sizes and the memory story") {
    // n = 64 * 300: 150 * 64 code bytes + 300 absmax; with double quant
    // 300 code bytes + 2 absmax2 + the offset.
    CHECK(nf4_bytes_for(64 * 300, 0) == 9600 + 300 * 4);
    CHECK(nf4_bytes_for(64 * 300, 1) == 9600 + 300 + 2 * 4 + 4);
    CHECK(nf4_bytes_for(99, 0) == 50 + 2 * 4);
    CHECK(nf4_bytes_for(99, 1) == 50 + 2 + 4 + 4);

    // SmolLM2-135M's shape.
    Config c = {};
    c.arch = ARCH_LLAMA;
    c.dim = 576;
    c.hidden_dim = 1536;
    c.n_layers = 30;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.vocab_size = 49152;
    c.tied_embeddings = 1;
    char *text = nullptr;
    size_t text_size = 0;
    FILE *out = open_memstream(&text, &text_size);
    REQUIRE(out != nullptr);
    nf4_print_memory_story(&c, out);
    std::fclose(out);
    std::string story(text, text_size);
    std::free(text);
    MESSAGE("\n", story);
    // 7 matrices per layer: (576 * 576 * 2 + 192 * 576 * 2 + 1536 * 576 * 3) * 30
    CHECK(story.find("106.17M parameters") != std::string::npos);
    CHECK(story.find("212336640 bytes") != std::string::npos);  // bf16
    CHECK(story.find("constants 0.500") != std::string::npos);
    CHECK(story.find("constants 0.127") != std::string::npos);
}
