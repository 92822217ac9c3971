#!/bin/sh
# dev/check_includes.sh: fails when the repo's `#include "..."` lines form a cycle.
# A source file and its header are one unit (formats/gguf.c and formats/gguf.h
# are "formats/gguf"); unit A depends on unit B when a file of A includes a
# header of B. A unit that depends on itself through others is a cycle: its
# files cannot be read, or tested, one after the other. Includes name a file
# by its path from the root, or from the including file's folder (test/).
# Prints the first cycle found, with the include lines that make it, and exits
# 1; else says how many units it checked. test/test_includes.cpp runs it.
#   sh dev/check_includes.sh [ROOT]      (default: the repo this script is in)
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2
find . \( -path ./build -o -path ./models -o -path ./.git \) -prune -o -type f \
    \( -name '*.c' -o -name '*.h' -o -name '*.cpp' -o -name '*.cu' \) -print |
sed 's|^\./||' | sort | awk '
# "formats/gguf.c" -> "formats/gguf"
function unit(path) { sub(/\.[^.\/]*$/, "", path); return path }
function folder(path) { return path ~ /\// ? substr(path, 1, match(path, /\/[^\/]*$/)) : "" }

# Depth-first search from u; on meeting a unit still on the stack, prints the cycle.
function visit(u,    i, v, k) {
    state[u] = 1
    stack[++depth] = u
    for (i = 1; i <= n_edges[u] && !found; i++) {
        v = edge[u, i]
        if (state[v] == 1) {
            for (k = 1; stack[k] != v; k++) ;
            line = "include cycle: " v
            for (k++; k <= depth; k++) line = line " -> " stack[k]
            print line " -> " v
            for (k = 1; stack[k] != v; k++) ;
            for (; k < depth; k++) print "  " why[stack[k], stack[k + 1]]
            print "  " why[u, v]
            found = 1
        } else if (state[v] == 0) {
            visit(v)
        }
    }
    depth--
    state[u] = 2
}

{ files[++n_files] = $0; exists[$0] = 1 }

END {
    for (f = 1; f <= n_files; f++) {
        file = files[f]
        while ((getline text < file) > 0) {
            if (text !~ /^[ \t]*#[ \t]*include[ \t]*"/) continue
            name = text
            sub(/^[^"]*"/, "", name)
            sub(/".*$/, "", name)
            if (!(name in exists)) name = folder(file) name
            if (!(name in exists)) continue
            a = unit(file); b = unit(name)
            if (a == b || (a, b) in why) continue
            edge[a, ++n_edges[a]] = b
            why[a, b] = file " includes " name
            units[a] = 1; units[b] = 1
        }
        close(file)
    }
    n_units = 0
    for (u in units) {
        n_units++
        if (state[u] == 0 && !found) visit(u)
    }
    if (found) exit 1
    print "no include cycles among " n_units " units (" n_files " files)"
}'
