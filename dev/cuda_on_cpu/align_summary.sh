#!/bin/sh
# The smallest cuBLAS operand alignment per (API, operand, type) over every
# log given (the "EMU cuBLAS alignment:" lines printed at exit).
#   sh dev/cuda_on_cpu/align_summary.sh build/cuda_on_cpu/logs/plain/*.log
grep -h 'EMU cuBLAS alignment:' "$@" | sed 's/^EMU cuBLAS alignment: //' |
awk '{ i = index($0, " smallest "); key = substr($0, 1, i - 1); sub(/ +$/, "", key);
       rest = substr($0, i + 10); split(rest, f, " "); v = f[1] + 0;
       if (!(key in best) || v < best[key]) { best[key] = v; ex[key] = rest } }
     END { for (k in best) printf "%-45s %6d bytes   (%s)\n", k, best[k], ex[k] }' | sort
