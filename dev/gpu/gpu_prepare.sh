#!/bin/sh
# Run on this (GPU-less) machine before a GPU session: makes what the device
# tool carries (dev/README.md, "A GPU session's plan"), in folders git ignores:
#   .devdeps/   doctest.h, utf8proc.h, libutf8proc.a (the GPU image lacks them),
#               microhttpd.h and libmicrohttpd.so(.12) for ./serve (gpu_check.sh's serve stage)
#               and the default model's tokenizer.json (for the random models)
#   .model_a/, .model_b/   the default model in two halves (a call carries
#               64 MiB at most); gpu_check.sh's `train` stage joins them
# and builds the default data (data/faq/*.bin), which call 2 also carries.
set -e
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
make fetch data/faq/train.bin build/bench_train
mkdir -p .devdeps/doctest .model_a .model_b
# the Debian packages, fetched and checked as `make` does on a machine without them
sh dev/fetch/fetch_deps.sh utf8proc
sh dev/fetch/fetch_deps.sh doctest
cp build/deps/include/doctest/doctest.h .devdeps/doctest/
cp build/deps/include/utf8proc.h build/deps/lib/libutf8proc.a .devdeps/
sh dev/fetch/fetch_deps.sh microhttpd
sh dev/fetch/fetch_deps.sh microhttpd-lib
cp build/deps/include/microhttpd.h build/deps/lib/libmicrohttpd.so.12 .devdeps/
# the linker's name for it (a copy: a carried folder keeps no symlinks)
cp build/deps/lib/libmicrohttpd.so.12 .devdeps/libmicrohttpd.so
# a random SmolLM2-shaped model written with the default model's tokenizer
./build/bench_train --shape smollm2-135m --save /tmp/gpu_prepare_model
cp /tmp/gpu_prepare_model/tokenizer.json .devdeps/
rm -rf /tmp/gpu_prepare_model
half=$((($(stat -c %s "$model") + 1) / 2))
head -c "$half" "$model" >.model_a/part
tail -c +"$((half + 1))" "$model" >.model_b/part
for dir in .devdeps .model_a .model_b; do
    grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >>.git/info/exclude
done
cat .model_a/part .model_b/part | cmp - "$model" && echo "ready: .devdeps .model_a .model_b (+ data/faq/*.bin)"
