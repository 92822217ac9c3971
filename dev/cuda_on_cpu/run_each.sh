#!/bin/sh
# Runs every GPU test case of BINARY in a process of its own (so that a crash
# or an EMU ERROR abort hides none of the others), one line per case.
#   sh dev/cuda_on_cpu/run_each.sh [BINARY [TIMEOUT_S [EXCLUDE_GLOB]]]
# BINARY: default build/cuda_on_cpu/plain/test_gpu. EXCLUDE_GLOB: the cases
# to skip, a shell pattern (e.g. "*SmolLM2*"). Environment variables
# (EMU_ORDER, ...) pass through. The logs go to
# build/cuda_on_cpu/logs/<BINARY's folder>[-order<EMU_ORDER>]/<n>.log.
emu=$(cd "$(dirname "$0")" && pwd)
build=${REPO:-$(cd "$emu/../.." && pwd)}/build/cuda_on_cpu
bin=${1:-$build/plain/test_gpu}; limit=${2:-600}; exclude=${3:-}
[ -x "$bin" ] || { echo "run_each.sh: no $bin (build it: make -C dev/cuda_on_cpu)" >&2; exit 1; }
logs=$build/logs/$(basename "$(dirname "$bin")")${EMU_ORDER:+-order$EMU_ORDER}
mkdir -p "$logs"
"$bin" -ltc 2>/dev/null | grep '^gpu' > "$logs/cases.txt"
n=0
while IFS= read -r name; do
    n=$((n + 1))
    if [ -n "$exclude" ]; then
        case "$name" in $exclude) echo "SKIP  $name"; continue ;; esac
    fi
    # doctest filters take , as a separator and * ? [ ] as wildcards: escape them
    filter=$(printf '%s' "$name" | sed 's/[][,*?\\]/\\&/g')
    log=$logs/$n.log
    start=$(date +%s)
    timeout "$limit" "$bin" -tc="$filter" > "$log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - start ))
    if grep -q '^1 passed, 0 failed' "$log"; then status=PASS
    elif [ $rc -eq 124 ]; then status=TIMEOUT
    else status="FAIL(rc $rc)"; fi
    printf '%-12s %4ds  emu errors %s warnings %s  %s  [%s]\n' "$status" "$seconds" \
        "$(grep -c 'EMU ERROR' "$log")" "$(grep -c 'EMU WARNING' "$log")" "$name" "$log"
done < "$logs/cases.txt"
