#!/bin/sh
# The GPU session's checks, run on the device machine from the repo root:
# build with nvcc, run every GPU test, then the trainer benchmarks (ours and
# HF transformers + peft, same shapes, same GPU). Logs go to $OUT (or out/).
# Headers and libraries missing there travel in .devdeps/ (doctest, utf8proc).
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/device.txt"
git log -1 --format='commit %H %s' 2>/dev/null | tee -a "$OUT/device.txt"
make -j16 CPPFLAGS=-I.devdeps LDFLAGS=-L.devdeps train build/test_gpu build/bench_train build/bench_kernels >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
echo "== GPU tests"
./build/test_gpu 2>&1 | tee "$OUT/test_gpu.log" | grep -E "ERROR|CHECK|passed|MESSAGE|loss|seed|test cases" | head -60
echo "== kernels"
./build/bench_kernels 2>&1 | tee "$OUT/bench_kernels.log"
echo "== benchmarks (both trainers load the same random-weight file per shape)"
# a tokenizer.json for --save where the default model is absent (.devdeps/tokenizer.json)
tokenizer=""
[ -f .devdeps/tokenizer.json ] && tokenizer="--tokenizer .devdeps/tokenizer.json"
runs="smollm2-135m 8 512"
[ -n "$BENCH_1B" ] && runs="$runs;llama-3.2-1b 4 512"
[ -n "$BENCH_8B" ] && runs="$runs;llama-3.1-8b 1 512"
echo "$runs" | tr ';' '\n' | while read -r shape batch seq; do
    dir=/tmp/random-$shape
    [ -d "$dir" ] || ./build/bench_train --shape "$shape" --save "$dir" $tokenizer || continue
    ./build/bench_train --model "$dir" --batch "$batch" --seq "$seq" --quant nf4 --recompute 1 2>&1 | tail -1
    python3 dev/bench_hf_peft.py --model "$dir" --batch "$batch" --seq "$seq" --recompute 1 2>&1 | tail -1
done | tee "$OUT/bench.log"
