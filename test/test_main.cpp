// The doctest runner. It ends with one line "N passed, N failed, N skipped"
// (test cases), which CI reads, and exits non-zero when anything failed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#ifdef QLORA_GPU_TESTS
#include "ops/gpu.h"
#endif

static doctest::TestRunStats g_stats;

struct SummaryLine : public doctest::IReporter {
    explicit SummaryLine(const doctest::ContextOptions &) {}
    void report_query(const doctest::QueryData &) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats &s) override { g_stats = s; }
    void test_case_start(const doctest::TestCaseData &) override {}
    void test_case_reenter(const doctest::TestCaseData &) override {}
    void test_case_end(const doctest::CurrentTestCaseStats &) override {}
    void test_case_exception(const doctest::TestCaseException &) override {}
    void subcase_start(const doctest::SubcaseSignature &) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData &) override {}
    void log_message(const doctest::MessageData &) override {}
    void test_case_skipped(const doctest::TestCaseData &) override {}
};
DOCTEST_REGISTER_LISTENER("summary_line", 100, SummaryLine);

int main(int argc, char **argv) {
    doctest::Context context(argc, argv);
#ifdef QLORA_GPU_TESTS
    // The GPU tests binary: without a device every test is filtered out, and
    // so counted as skipped in the summary line.
    if (!gpu_available()) {
        std::printf("no CUDA device: skipping the GPU tests\n");
        context.addFilter("test-case-exclude", "*");
    } else {
        // QLORA_GPU_PRECISION=fp16: the whole suite with fp16 activations and weights (the T4's type), else bf16
        const char *precision = std::getenv("QLORA_GPU_PRECISION");
        int fp16 = precision && std::strcmp(precision, "fp16") == 0;
        if (precision && !fp16 && std::strcmp(precision, "bf16") != 0) {
            std::fprintf(stderr, "QLORA_GPU_PRECISION is bf16 or fp16, not %s\n", precision);
            return 2;
        }
        gpu_set_act16(fp16 ? ACT16_FP16 : ACT16_BF16);
        std::printf("GPU tests on %s, in %s\n", gpu_device_name(), fp16 ? "fp16" : "bf16");
    }
#endif
    int status = context.run();
    if (context.shouldExit()) return status;   // --help, --list-test-cases, ...
    const doctest::TestRunStats &s = g_stats;
    unsigned passed = s.numTestCasesPassingFilters - s.numTestCasesFailed;
    unsigned skipped = s.numTestCases - s.numTestCasesPassingFilters;
    std::printf("%u passed, %u failed, %u skipped\n", passed, s.numTestCasesFailed, skipped);
    return status;
}
