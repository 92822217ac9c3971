#!/bin/sh
# Runs each test binary given (the CPU tests, and the GPU tests when built)
# and prints their summed summary as the last line: "N passed, N failed, N skipped".
# Exits non-zero when any binary failed or crashed.
passed=0; failed=0; skipped=0
for binary in "$@"; do
    log=$(mktemp)
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "./$binary" 2>&1 | tee "$log"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n 1)
    rm -f "$log"
    if [ -z "$line" ]; then
        echo "$binary: crashed before its summary line (counted as 1 failed)"
        failed=$((failed + 1))
        continue
    fi
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
    skipped=$((skipped + $(echo "$line" | cut -d' ' -f5)))
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
