# qlora.c build. `make` builds the programs (with CUDA when nvcc is present,
# CPU-only otherwise) and fetches the default model; `make test` runs the tests.

CC      ?= gcc
CXX     ?= g++
NVCC    ?= nvcc
# GPU architectures (compute capabilities without the dot): the GPU visible at
# build time (nvidia-smi), else a fat binary for every NVIDIA GPU from the T4 up:
# T4 (75), A100 (80), RTX 3090 / A10 (86), RTX 4090 / L4 (89), H100 / H200 (90),
# plus PTX for the newest, which the driver compiles for later GPUs.
# Override: make CUDA_ARCHS="80 90", or the nvcc flags themselves: make CUDA_ARCH="..."
FAT_ARCHS = 75 80 86 89 90

WARN      = -Wall -Wextra -Wno-unused-parameter
CFLAGS   ?= -O3 -march=native -g
CXXFLAGS ?= -O3 -march=native -g
CFLAGS   += $(WARN) -std=c11 -fopenmp -D_GNU_SOURCE
CXXFLAGS += $(WARN) -std=c++17 -fopenmp

HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)
ifeq ($(strip $(HAVE_NVCC)),)
  BUILD_KIND = cpu-only (no nvcc found)
else
  GPU_ARCH_SEEN := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -dc 0-9)
  CUDA_ARCHS ?= $(if $(GPU_ARCH_SEEN),$(GPU_ARCH_SEEN),$(FAT_ARCHS))
  NEWEST_ARCH = $(lastword $(CUDA_ARCHS))
  CUDA_ARCH ?= $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
               -gencode arch=compute_$(NEWEST_ARCH),code=compute_$(NEWEST_ARCH)
  ARCH_GIVEN = $(filter command line environment,$(origin CUDA_ARCH))
  ARCH_SOURCE = $(if $(filter command line environment,$(origin CUDA_ARCHS)),CUDA_ARCHS given,$(if $(GPU_ARCH_SEEN),the GPU here,no GPU here: fat build))
  BUILD_KIND = cpu + cuda ($(NVCC)) for $(if $(ARCH_GIVEN),CUDA_ARCH=$(CUDA_ARCH),$(CUDA_ARCHS:%=sm_%) + PTX compute_$(NEWEST_ARCH), $(ARCH_SOURCE))
  CUDA_HOME ?= $(realpath $(dir $(HAVE_NVCC))/..)
  CUDA_LIBS = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lcudart_static -ldl -lrt -lpthread
endif
# Extra include/library folders: make CPPFLAGS=-Idir LDFLAGS=-Ldir

# Library sources (everything but the programs' main files), in the README's
# order: C files, C++ host files, and files with CUDA kernels (.cu).
LIB_C   = formats/atomic_file.c formats/hash.c formats/cli.c formats/utf8.c formats/json.c formats/float16.c formats/ggml_blocks.c formats/tensor.c \
          formats/tensor_layout.c formats/gguf.c formats/gguf_write.c formats/safetensors.c \
          formats/hf_checkpoint.c model.c chat_template.c tokenizer.c \
          data/raft.c data/jsonl.c data/string_map.c data/checks.c data/collection.c \
          data/raft_build.c data/faq.c data/tokfile.c data/packing.c \
          trainer/memory_plan.c trainer/plot.c trainer/run_log.c trainer/grad_scaler.c trainer/precision.c infer/sampler.c infer/gguf_export.c \
          eval/porter.c eval/rouge.c eval/wordpiece.c eval/embed.c eval/abstain.c eval/bootstrap.c \
          eval/forest_plot.c eval/eval.c merging/svd.c merging/task_merge.c \
          serving/request.c serving/response.c serving/stop.c
LIB_CPP = trainer/train_step.cpp trainer/base_weights.cpp trainer/checkpoint.cpp trainer/examples.cpp \
          trainer/engine_cpu.cpp infer/forward.cpp infer/adapter.cpp infer/merge.cpp \
          merging/adapter_merge.cpp merging/model_merge.cpp serving/scheduler.cpp serving/server.cpp
LIB_CU  = ops/gpu.cu ops/layers.cu ops/attention.cu ops/flash_attention.cu ops/flash_attention_tc.cu ops/cross_entropy.cu \
          nf4.cu lora.cu dora.cu adamw.cu trainer/offload.cu trainer/train_gpu.cu trainer/engine_gpu.cu infer/forward_gpu.cu
PROGRAMS = generate train prepare evaluate merge serve
# The default training data (./train with no --data), built from the Debian FAQ below.
DEFAULT_DATA = data/faq/train.bin

LIB_OBJ = $(LIB_C:%.c=build/%.o) $(LIB_CPP:%.cpp=build/%.o) $(LIB_CU:%.cu=build/%.o)

.PHONY: all fetch deps test test-gpu test-gpu-on-cpu fuzz clean build
all: fetch $(PROGRAMS) $(DEFAULT_DATA)
	@echo "built: $(PROGRAMS) [$(BUILD_KIND)]"

# utf8proc and doctest: the system's -dev packages, else fetched into build/deps/
# (included after `all`, so that `all` stays the first target: what `make` builds)
REPO = .
include dev/fetch/deps.mk
# every file includes others by their path from the repo root ("ops/layers.h")
INCLUDES = -I. $(DEPS_CPPFLAGS)
LDLIBS    = $(UTF8PROC_LIB) -lm -fopenmp $(CUDA_LIBS)

build/%.o: %.c | build $(UTF8PROC_DEP)
	$(CC) $(INCLUDES) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@
build/%.o: %.cpp | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(CXXFLAGS) -MMD -MP -c $< -o $@

# .cu files hold CUDA kernels beside their host code: nvcc compiles them, or,
# without nvcc, g++ compiles their host code (the kernels sit behind __CUDACC__).
ifeq ($(strip $(HAVE_NVCC)),)
build/%.o: %.cu | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(CXXFLAGS) -MMD -MP -x c++ -c $< -o $@
else
NVCCFLAGS = -O3 -std=c++17 $(CUDA_ARCH) -Xcompiler "-fopenmp -Wall -march=native"
build/%.o: %.cu | build
	$(NVCC) $(INCLUDES) $(CPPFLAGS) $(NVCCFLAGS) -MMD -MP -c $< -o $@
endif

generate: build/generate.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

train: build/train.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

prepare: build/data/prepare.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

evaluate: build/evaluate.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

merge: build/merge.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# ./serve alone links libmicrohttpd (serving/http.c): the system's, or fetched (dev/fetch/deps.mk).
build/serving/http.o: | $(MHD_DEP)
serve: build/serve.o build/serving/http.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS) $(MHD_LIB)

# Our forward's last-position logits for a prompt (dev/crosscheck/check_merged.py).
build/dump_logits: build/dev/crosscheck/dump_logits.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Our GGUF export of a model, without training (dev/crosscheck/check_gguf_export.py).
build/export_gguf: build/dev/crosscheck/export_gguf.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# Phony so that the folders are made even when build/ is already there.
SRC_DIRS = data formats ops trainer infer merging eval serving dev/crosscheck dev/bench
build:
	@mkdir -p build build/test build/test/gpu $(SRC_DIRS:%=build/%) $(SRC_DIRS:%=build/test/%)

# ---- the default model and the embedding model (never committed; see models/SHA256SUMS)
fetch:
	@sh dev/fetch/fetch_model.sh
	@sh dev/fetch/fetch_embedder.sh

# ---- the default data: the Debian FAQ (never committed; see data/faq/SHA256SUMS) ----
# dev/fetch/fetch_faq.sh downloads and unpacks it, ./prepare turns it into RAFT data.
# --max-seq 512 keeps the default ./train short on a CPU; 10% of the questions,
# at least 30, are held out (by question), enough for ./evaluate's intervals to tell.
$(DEFAULT_DATA): prepare dev/fetch/fetch_faq.sh data/faq/SHA256SUMS | fetch
	@sh dev/fetch/fetch_faq.sh
	./prepare --debian-faq data/faq/debian-faq --out data/faq --max-seq 512 --val-frac 0.1 --val-min 30 --no-oracle 0.3

# ---- tests: CPU tests built with g++ and the sanitizers --------------------
TEST_FLAGS = -O2 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fopenmp
# The numeric loops (the files in NUMERIC_CU and NUMERIC_CPP) run billions of iterations in the
# model tests: there UBSan's per-operation checks would cost minutes, so they
# get ASan only, at full optimisation. Every other file gets both.
NUMERIC_CU  = ops/layers.cu ops/attention.cu ops/cross_entropy.cu nf4.cu lora.cu dora.cu adamw.cu
NUMERIC_CPP = trainer/train_step.cpp infer/forward.cpp
NUMERIC_TEST_FLAGS = -O3 -march=native -g -fsanitize=address --param asan-stack=0 -fno-omit-frame-pointer -fopenmp
TEST_SRC   = $(wildcard test/test_*.cpp)
TEST_OBJ   = $(TEST_SRC:test/%.cpp=build/test/%.o) \
             $(LIB_C:%.c=build/test/%.o) $(LIB_CPP:%.cpp=build/test/%.o) $(LIB_CU:%.cu=build/test/%.o)

build/test/%.o: %.c | build $(UTF8PROC_DEP)
	$(CC) $(INCLUDES) $(CPPFLAGS) $(TEST_FLAGS) $(WARN) -std=c11 -D_GNU_SOURCE -MMD -MP -c $< -o $@
build/test/%.o: %.cu | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(TEST_FLAGS) $(WARN) -std=c++17 -MMD -MP -x c++ -c $< -o $@
build/test/%.o: %.cpp | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(TEST_FLAGS) $(WARN) -std=c++17 -MMD -MP -c $< -o $@
$(NUMERIC_CU:%.cu=build/test/%.o): build/test/%.o: %.cu | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(NUMERIC_TEST_FLAGS) $(WARN) -std=c++17 -MMD -MP -x c++ -c $< -o $@
$(NUMERIC_CPP:%.cpp=build/test/%.o): build/test/%.o: %.cpp | build
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(NUMERIC_TEST_FLAGS) $(WARN) -std=c++17 -MMD -MP -c $< -o $@
build/test/%.o: test/%.cpp | build $(DOCTEST_DEP)
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(TEST_FLAGS) $(WARN) -std=c++17 -MMD -MP -c $< -o $@

build/test_cpu: $(TEST_OBJ)
	$(CXX) $(LDFLAGS) $(TEST_FLAGS) $^ -o $@ $(UTF8PROC_LIB) -lm

# ---- GPU tests: each kernel against its CPU reference ----------------------
# Built by nvcc against the same objects as the programs (no sanitizers: run
# compute-sanitizer on a GPU machine instead). On a machine without a GPU the
# binary runs and reports every GPU test as skipped.
ifeq ($(strip $(HAVE_NVCC)),)
TEST_GPU =
else
TEST_GPU = build/test_gpu
GPU_TEST_OBJ = $(patsubst test/gpu/%.cu,build/test/gpu/%.o,$(wildcard test/gpu/*.cu))
build/test/gpu/%.o: test/gpu/%.cu | build
	$(NVCC) $(INCLUDES) $(CPPFLAGS) $(NVCCFLAGS) -MMD -MP -c $< -o $@
build/test/gpu/test_main.o: test/test_main.cpp | build $(DOCTEST_DEP)
	$(CXX) $(INCLUDES) $(CPPFLAGS) $(CXXFLAGS) -DQLORA_GPU_TESTS -MMD -MP -c $< -o $@
build/test_gpu: build/test/gpu/test_main.o $(GPU_TEST_OBJ) $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)
endif

# ---- fuzzing: every parser under libFuzzer, with ASan and UBSan (clang) -----
# test/fuzz/fuzz_NAME.c (or .cpp) is one target. clang compiles the library
# again into build/fuzz/obj/ (the gcc build above is untouched) and archives
# it, so each target links only the objects it needs. `make fuzz` runs every
# target for FUZZ_SECONDS from its committed seeds (test/fuzz/corpus/NAME/),
# prints the executions each reached, and fails on any finding (test/fuzz/run_fuzz.sh).
FUZZ_CC      = clang
FUZZ_CXX     = clang++
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = json jsonl samples hf_config hf_index safetensors gguf tokenizer tokenizer_json tokfile checkpoint request
FUZZ_FLAGS   = -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_COMPILE = $(INCLUDES) $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(WARN) -Wno-unknown-pragmas -MMD -MP
FUZZ_LIB_OBJ = $(LIB_C:%.c=build/fuzz/obj/%.o) $(LIB_CPP:%.cpp=build/fuzz/obj/%.o) $(LIB_CU:%.cu=build/fuzz/obj/%.o)

build/fuzz/obj/%.o: %.c | $(UTF8PROC_DEP)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_COMPILE) -std=c11 -D_GNU_SOURCE -c $< -o $@
build/fuzz/obj/%.o: %.cpp
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_COMPILE) -std=c++17 -c $< -o $@
build/fuzz/obj/%.o: %.cu
	@mkdir -p $(@D)
	$(FUZZ_CXX) $(FUZZ_COMPILE) -std=c++17 -x c++ -c $< -o $@
# the harnesses' objects are intermediate files that make would otherwise delete
.PRECIOUS: build/fuzz/obj/%.o
build/fuzz/libqlora.a: $(FUZZ_LIB_OBJ)
	rm -f $@ && ar rcs $@ $^
build/fuzz/fuzz_%: build/fuzz/obj/test/fuzz/fuzz_%.o build/fuzz/obj/test/fuzz/fuzz_input.o build/fuzz/libqlora.a
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer $^ -o $@ $(UTF8PROC_LIB) -lm

fuzz: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@sh test/fuzz/run_fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Training-step throughput on random-weight models, GPU or CPU (dev/bench/bench_train.cu).
build/bench_train: build/dev/bench/bench_train.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)
# Each GPU kernel family's GB/s or TFLOP/s against the device's ceilings (dev/bench/bench_kernels.cu).
build/bench_kernels: build/dev/bench/bench_kernels.o $(LIB_OBJ)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

test: fetch train prepare generate evaluate merge serve $(DEFAULT_DATA) build/test_cpu $(TEST_GPU)
	@sh test/run_tests.sh build/test_cpu $(TEST_GPU)

# Only the GPU tests (on a GPU machine; no model download needed).
test-gpu: $(TEST_GPU)
	@sh test/run_tests.sh $(TEST_GPU)

# The GPU tests without a GPU: built with g++ against dev/cuda_on_cpu, a CPU
# emulation of CUDA and cuBLAS, and run in one process, skipping the two 30-layer
# cases, SmolLM2's shape and the default model (minutes each there). A pass is
# not a GPU verification (see its README).
test-gpu-on-cpu:
	@$(MAKE) -s --no-print-directory -C dev/cuda_on_cpu LOCAL_DEPS=$(LOCAL_DEPS)
	@echo "GPU tests run on a CPU emulation of CUDA (dev/cuda_on_cpu), not on a GPU:"
	@EMU_SUMMARY=0 build/cuda_on_cpu/plain/test_gpu -tce="*SmolLM2*,*default model*"

# a variable's value, for dev/cuda_on_cpu/Makefile: make -s print-LIB_CU
print-%:
	@echo '$($*)'

# header dependencies, written by -MMD
-include $(shell find build -name "*.d" -not -path "build/cuda_on_cpu/*" 2>/dev/null)

clean:
	rm -rf build $(PROGRAMS)
