#!/bin/sh
# Runs each fuzz target (build/fuzz/fuzz_NAME, `make fuzz`) for SECONDS from
# its committed seeds, test/fuzz/corpus/NAME/ (read only), with the inputs it
# finds kept in build/fuzz/corpus/NAME/ for the next run, and its dictionary
# test/fuzz/dict/NAME.dict when there is one. Prints, per target, the
# executions it reached and whether it found anything (a crash, a sanitizer
# report, a leak, a timeout, an allocation over the memory limit: the input is
# saved in build/fuzz/findings/NAME/, the log in build/fuzz/logs/NAME.log),
# then "N passed, N failed, 0 skipped" (each target one test). Exits non-zero
# on any finding.
#   sh test/fuzz/run_fuzz.sh SECONDS NAME...
seconds=$1
shift
passed=0; failed=0
# The longest input each target tries: a few times its largest seed.
max_len() {
    case $1 in
    gguf|tokenizer_json) echo 16384 ;;
    safetensors|checkpoint|tokfile|samples|jsonl) echo 8192 ;;
    *) echo 4096 ;;
    esac
}
for name in "$@"; do
    binary=build/fuzz/fuzz_$name
    mkdir -p build/fuzz/corpus/$name build/fuzz/findings/$name build/fuzz/logs
    log=build/fuzz/logs/$name.log
    dict=""
    [ -f test/fuzz/dict/$name.dict ] && dict="-dict=test/fuzz/dict/$name.dict"
    # -timeout: one input running 10 s is a finding; leaks are findings too (ASan's default)
    UBSAN_OPTIONS=print_stacktrace=1 "$binary" -max_total_time="$seconds" -max_len="$(max_len "$name")" -timeout=10 \
        -print_final_stats=1 -artifact_prefix=build/fuzz/findings/$name/ $dict \
        build/fuzz/corpus/$name test/fuzz/corpus/$name >"$log" 2>&1
    status=$?
    runs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{ print $2 }')
    finding=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -n 1 | sed 's/Test unit written to //')
    if [ "$status" -eq 0 ] && [ -z "$finding" ]; then
        echo "fuzz_$name: ${runs:-?} executions in $seconds s, no findings"
        passed=$((passed + 1))
    else
        echo "fuzz_$name: FOUND after ${runs:-?} executions: ${finding:-exit status $status}, log in $log:"
        grep -E "^==[0-9]+==ERROR|runtime error|^SUMMARY|ALARM|out-of-memory" "$log" | head -n 5
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
