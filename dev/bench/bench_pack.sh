#!/bin/sh
# dev/bench/bench_pack.sh: tokens/s of ./train with and without --pack, on the
# default data prepared with longer samples (--max-seq SEQ), BATCH sequences a
# micro-batch. Unpacked, a micro-batch is padded to its longest sample; packed,
# its sequences hold several samples each. tok/s counts the samples' tokens
# (not padding), so the two compare. Run it on an otherwise idle machine.
# Usage: sh dev/bench/bench_pack.sh [SEQ] [BATCH] [STEPS] [DEVICE]
set -e
SEQ=${1:-2048}
BATCH=${2:-4}
STEPS=${3:-3}
DEVICE=${4:-auto}
OUT=${TMPDIR:-/tmp}/qlora_bench_pack
rm -rf "$OUT"
mkdir -p "$OUT"
./prepare --debian-faq data/faq/debian-faq --out "$OUT/data" --max-seq "$SEQ" --no-oracle 0.3 > "$OUT/prepare.txt"
grep "packing:" "$OUT/prepare.txt"
# no val.bin beside the training file: no validation passes in the timing
mv "$OUT/data/train.bin" "$OUT/data/samples.bin"
run() {   # $1: name, then extra options
    name=$1
    shift
    ./train --data "$OUT/data/samples.bin" --seq "$SEQ" --batch "$BATCH" --grad-accum 1 --steps "$STEPS" \
            --device "$DEVICE" --out "$OUT/$name" "$@" > "$OUT/$name.txt"
    # mean tok/s and fill over the steps after the first (warm-up)
    awk -F'|' -v name="$name" '/^step .*tok\/s/ && !/^step +1\// {
            for (i = 1; i <= NF; i++) { if ($i ~ /tok\/s/) t += $i + 0; if ($i ~ /fill/) { sub(/ *fill /, "", $i); f += $i + 0 } }
            n++ }
        END { printf "%-10s %8.1f tok/s  fill %5.1f%%  (%d steps)\n", name, t / n, f / n, n }' "$OUT/$name.txt"
}
run unpacked
run packed --pack
