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
echo "== benchmarks"
shapes="--shape smollm2-135m --batch 8 --seq 512"
[ -n "$BENCH_1B" ] && shapes="$shapes;--shape llama-3.2-1b --batch 4 --seq 512"
echo "$shapes" | tr ';' '\n' | while read -r args; do
    ./build/bench_train $args --quant nf4 --recompute 1 2>&1 | tail -1
    python3 dev/bench_hf_peft.py $args --recompute 1 2>&1 | tail -1
done | tee "$OUT/bench.log"
