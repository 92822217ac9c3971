#!/bin/sh
# Shows that the emulated GPU tests can fail. For each deliberate bug below:
# applies it to a copy of the transformed sources (never to the repo), builds
# build/cuda_on_cpu/mut/test_gpu from that copy, and runs the test cases that
# must catch it. One line per mutation: CAUGHT (with the first error line),
# MISSED, or BROKEN (its pattern no longer matches the repo's code exactly
# once, the mutated copy does not build, or its test filter matches no test
# case: update it here). Exits non-zero unless every mutation run was CAUGHT.
#   sh dev/cuda_on_cpu/mutate.sh [NAME]              every mutation, or one
#   BASE=asan sh dev/cuda_on_cpu/mutate.sh [NAME]    from the AddressSanitizer build (the asan_* ones need it)
# The logs go to build/cuda_on_cpu/logs/mut-NAME.log.
emu=$(cd "$(dirname "$0")" && pwd)
repo=${REPO:-$(cd "$emu/../.." && pwd)}
build=$repo/build/cuda_on_cpu
base=${BASE:-plain}
asan=; [ "$base" = asan ] && asan=ASAN=1
want=${1:-all}
caught=0; failed=0; found=

make -s -j2 -C "$emu" REPO="$repo" MODE="$base" >/dev/null || { echo "mutate.sh: the $base build failed" >&2; exit 1; }
mkdir -p "$build/logs"

# Replaces OLD, which must occur exactly once in the copy's FILE, by NEW.
apply() {   # FILE OLD NEW
    python3 - "$build/src-mut/$1" "$2" "$3" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if text.count(old) != 1:
    sys.exit('matches %d times, not once,' % text.count(old))
open(path, 'w').write(text.replace(old, new))
PY
}

run_one() {   # NAME FILE OLD NEW TEST_FILTER
    name=$1; file=$2; filter=$5
    log=$build/logs/mut-$name.log
    rm -rf "$build/src-mut" "$build/mut"
    cp -rp "$build/src" "$build/src-mut"
    # start from the base build (times kept): only what the mutation touches is rebuilt
    cp -rp "$build/$base" "$build/mut"
    if ! why=$(apply "$file" "$3" "$4" 2>&1); then
        echo "BROKEN  $name: its pattern $why in $file (the repo's code changed: update mutate.sh)"
        failed=$((failed + 1)); return
    fi
    if ! make -s -j2 -C "$emu" REPO="$repo" MODE=mut SRC="$build/src-mut" $asan > "$log" 2>&1; then
        echo "BROKEN  $name: the mutated copy does not build  [$log]"
        failed=$((failed + 1)); return
    fi
    timeout 600 "$build/mut/test_gpu" -tc="$filter" > "$log" 2>&1
    if grep -q '^0 passed, 0 failed' "$log"; then
        echo "BROKEN  $name: the filter \"$filter\" matches no test case"
        failed=$((failed + 1))
    elif grep -q '^[0-9]* passed, 0 failed' "$log" && ! grep -q 'EMU ERROR' "$log"; then
        echo "MISSED  $name  [$log]"
        failed=$((failed + 1))
    else
        echo "CAUGHT  $name: $(grep -m1 -E 'ERROR|runtime error|CHECK|REQUIRE' "$log" | cut -c1-160)"
        caught=$((caught + 1))
    fi
}

m() {
    [ "$want" = all ] || [ "$want" = "$1" ] || return 0
    found=yes
    case $1 in asan_*) [ "$base" = asan ] || { echo "SKIP    $1 (needs BASE=asan)"; return 0; } ;; esac
    run_one "$@"
}

# block_sum without its leading barrier: a second call overwrites warp totals still being read
m block_sum_no_leading_sync lib/ops/gpu.h \
  '    v = warp_sum(v);
    __syncthreads();   // an earlier call has finished reading warp_totals' \
  '    v = warp_sum(v);' 'gpu: rmsnorm_backward*'
# the flash forward (not the backward, which has the same loop) without the barrier that keeps the
# next k, v tiles from overwriting ones still read
m flash_forward_no_sync lib/ops/flash_attention.cu \
  '    // causal: no query of this tile sees a key past its last row
    int key_end = min(seq_len, i0 + flash_tile);
    for (int j0 = 0; j0 < key_end; j0 += flash_tile) {
        __syncthreads();   // everyone is done with the previous k and v tiles' \
  '    // causal: no query of this tile sees a key past its last row
    int key_end = min(seq_len, i0 + flash_tile);
    for (int j0 = 0; j0 < key_end; j0 += flash_tile) {' 'gpu: flash attention*'
# the causal softmax max over j < i instead of j <= i (off by one)
m softmax_off_by_one lib/ops/attention.cu \
  'for (int j = first + threadIdx.x; j <= i; j += blockDim.x) row_max = fmaxf(row_max, score_row[j]);' \
  'for (int j = first + threadIdx.x; j < i; j += blockDim.x) row_max = fmaxf(row_max, score_row[j]);' 'gpu: simple attention (mat*'
# a warp shuffle that some lanes skip (divergent shuffle)
m divergent_shuffle lib/nf4.cu \
  'float block_max = warp_max(fmaxf(fabsf(x0), fabsf(x1)));' \
  'float block_max = lane < 16 ? warp_max(fmaxf(fabsf(x0), fabsf(x1))) : 0.0f;' 'gpu: nf4_quantize_gpu*'
# the NF4 dequantize's wide path: nibbles swapped in the 16-byte store, a partial last word read whole
m nf4_wide_nibbles lib/nf4.cu \
  'pairs[k] = pack_pair<T>(w[2 * k], w[2 * k + 1]);' \
  'pairs[k] = pack_pair<T>(w[2 * k + 1], w[2 * k]);' 'gpu: nf4_dequantize_gpu*'
m asan_nf4_word_past_end lib/nf4.cu \
  'if (4 * j + 4 <= n_bytes) word' 'if (4 * j < n_bytes) word' 'gpu: nf4_dequantize_gpu*'
# the one-by-one path writing a whole word's 8 values past n
m nf4_tail_overwrite lib/nf4.cu \
  'for (int k = 0; k < 8 && first + k < n; k++)' 'for (int k = 0; k < 8; k++)' 'gpu: nf4_dequantize_gpu*'
# the adapter scratch sized for every linear of a group, adapted or not (the plan counts the adapted)
m scratch_all_targets lib/trainer/train_gpu.cu \
  '            int count = group_adapters(g, layer, group, targets);
            if (count == 0) continue;' \
  '            int count = 0;
            for (int t = LINEAR_GROUP_FIRST[group]; t < LINEAR_GROUP_FIRST[group + 1]; t++) targets[count++] = t;' \
  'gpu placement: --plan counts*'
# sum_group_heads reading one head too far (out of bounds on the last kv head)
m group_heads_oob lib/ops/attention.cu \
  'for (int j = 0; j < group; j++) sum += row[(size_t)(g * group + j) * head_dim + d];' \
  'for (int j = 0; j <= group; j++) sum += row[(size_t)(g * group + j) * head_dim + d];' 'gpu: simple attention (mat*'
# the cross-entropy kernel's early exit for uncounted rows also skipping the gradient zeroing
m ce_skip_zero lib/ops/cross_entropy.cu \
  '            for (int v = threadIdx.x; v < vocab; v += blockDim.x) store_gradient(&d_row[v], 0.0f);' \
  '            ;' 'gpu: cross_entropy_gpu*'
# batch pointers: the kv head of entry i computed without the group division
m batch_pointer_group lib/ops/attention.cu \
  'return (void *)(o.base + s * o.seq_stride + (size_t)((o.first + i) / o.group) * o.head_stride);' \
  'return (void *)(o.base + s * o.seq_stride + (size_t)((o.first + i) / 1) * o.head_stride);' 'gpu: simple attention (mat*'
# offload's backward without waiting for the block input to come back from the host (it reads the slot too early)
m offload_no_wait_fetched lib/trainer/train_gpu.cu \
  '            offload_wait_fetched(&g->offload, l);' \
  '            ;' 'gpu placement*'
# offload's forward overwriting a slot before the row it held has reached the host
m offload_no_wait_overwrite lib/trainer/train_gpu.cu \
  '        if (offload) offload_before_overwrite(&g->offload, l + 1);' \
  '        ;' 'gpu placement*'
# paged AdamW prefetching past the end of the managed m (twice its size)
m paged_prefetch_overrun lib/trainer/train_gpu.cu \
  '        gpu_prefetch_to_device(g->m, sizeof(float) * g->n_params);' \
  '        gpu_prefetch_to_device(g->m, 2 * sizeof(float) * g->n_params);' 'gpu placement*'
# the tensor-core forward forgetting to rescale O when the running max grows
m flash_tc_no_rescale lib/ops/flash_attention_tc.cu \
  '                o[n][2 * r] *= correction;' \
  '                ;' 'gpu: flash attention on tensor cores*'
# the tensor-core forward without the barrier before the next K, V tiles overwrite the ones (and Q) still read
m flash_tc_forward_no_sync lib/ops/flash_attention_tc.cu \
  '        __syncthreads();   // everyone is done with the previous tiles (and with Q_b in k_tile)' \
  '' 'gpu: flash attention on tensor cores match*'
# P V with V's tile read untransposed (a wrong ldmatrix layout for B)
m flash_tc_untransposed lib/ops/flash_attention_tc.cu \
  '            ldmatrix_x4_trans(b, &tile[16 * k + row][16 * n2 + col]);' \
  '            ldmatrix_x4(b, &tile[16 * k + row][16 * n2 + col]);' 'gpu: flash attention on tensor cores*'
# the first key tile of a block rounded up instead of down (packed samples: a tile the block needs is skipped)
m flash_tc_begin_rounded_up lib/ops/flash_attention_tc.cu \
  '    return lowest / tc_rows * tc_rows;' \
  '    return (lowest + tc_rows - 1) / tc_rows * tc_rows;' 'gpu: flash attention on tensor cores over packed*'
# the backward's skip of query tiles that start after these keys, one tile too eager (packed samples)
m flash_tc_skip_too_eager lib/ops/flash_attention_tc.cu \
  '            if (tile_first >= j0 + tc_rows) continue;' \
  '            if (tile_first >= j0) continue;' 'gpu: flash attention on tensor cores over packed*'
# tile rows padded by 4 values instead of 8: rows no longer 16-byte aligned (ldmatrix and the 16-byte copies must say so)
m flash_tc_rows_unaligned lib/ops/flash_attention_tc.cu \
  'static const int tc_pad = 8;' \
  'static const int tc_pad = 4;' 'gpu: flash attention on tensor cores match*'
# the key/value cache attention one key short of causal (query t not seeing its own key)
m cache_attention_off_by_one lib/ops/attention.cu \
  '    for (int j = warp; j <= pos0 + t; j += cache_warps) {' \
  '    for (int j = warp; j < pos0 + t; j += cache_warps) {' 'gpu: attention_cached*'
# the cache attention combining the warps' partial softmaxes without waiting for them
m cache_attention_no_sync lib/ops/attention.cu \
  '    for (int i = 0; i < cache_dims_per_lane && lane + 32 * i < head_dim; i++) warp_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();' \
  '    for (int i = 0; i < cache_dims_per_lane && lane + 32 * i < head_dim; i++) warp_acc[warp][lane + 32 * i] = acc[i];' \
  'gpu: attention_cached*'
# the inference forward without the adapter on the down projection
m forward_gpu_no_down_lora lib/infer/forward_gpu.cu \
  '    add_lora(s->proj, s->gate, c, adapter, s, layer, LINEAR_DOWN, n);' \
  '' 'gpu serve*'
# the gradient norm allocating its block sums per call, as it did before it took a workspace
m step_allocates lib/adamw.cu \
  '    double *sums = (double *)workspace;' \
  '    double *sums = (double *)workspace;
    gpu_free(gpu_malloc(sizeof(double), "block sums"));' 'gpu placement: a training step allocates*'
# the LM head + loss's layout placing the rows' fp32 gradient over the gathered rows (zeroed before use)
m lm_head_regions_overlap lib/ops/cross_entropy.cu \
  '    l.d_counted = workspace_region(&used, sizeof(float) * m * dim);' \
  '    l.d_counted = l.x_counted;' 'gpu: lm_head_cross_entropy*'
# an input group's fused LoRA forward: every adapter's B product reading the first adapter's columns of xa
m lora_group_xa_slice lib/lora.cu \
  'gemm_act16_strided(y[t], gpu_act16_cuda_type(), s.out_dim[t], xa + t * s.rank, false, xa_width, B[t], true,' \
  'gemm_act16_strided(y[t], gpu_act16_cuda_type(), s.out_dim[t], xa, false, xa_width, B[t], true,' \
  'gpu: an input group*'
# its backward writing each d_xa_t with the row stride of one adapter instead of the group's
m lora_group_d_xa_stride lib/lora.cu \
  'gemm_act16_strided(d_xa + t * s.rank, gpu_act16_cuda_type(), xa_width, dy[t], false, s.out_dim[t], B[t],' \
  'gemm_act16_strided(d_xa + t * s.rank, gpu_act16_cuda_type(), s.rank, dy[t], false, s.out_dim[t], B[t],' \
  'gpu: an input group*'
# the trainer taking a group's stacked A from its last adapter instead of its first
m group_A_offset lib/trainer/train_gpu.cu \
  '    const act16 *A = g->params_act16 + g->offset_A[layer * N_LINEARS + targets[0]];' \
  '    const act16 *A = g->params_act16 + g->offset_A[layer * N_LINEARS + targets[count - 1]];' \
  'gpu train step: loss and LoRA gradients equal the CPU path*'
# the trainer drawing a group's dropout mask from another seed than the CPU path's
m group_mask_seed lib/trainer/train_gpu.cu \
  '    uint64_t seed = lora_dropout_seed(s->dropout_seed, layer, targets[0]);' \
  '    uint64_t seed = lora_dropout_seed(s->dropout_seed, layer, targets[0]) + 1;' \
  'gpu train step: loss and LoRA gradients equal the CPU path*'
# (BASE=asan) a kernel writing one element past its buffer: AddressSanitizer must name it
m asan_global_overrun lib/ops/layers.cu \
  '    if (i < n) x[i] += to_float(y[i]);' \
  '    if (i <= n) x[i] += to_float(y[i]);' 'gpu: residual_add*'
# (BASE=asan) a shared-memory read past the array (the tree starting one level too wide)
m asan_shared_overrun lib/adamw.cu \
  '    for (int half = SUM_THREADS / 2; half > 0; half /= 2) {' \
  '    for (int half = SUM_THREADS; half > 0; half /= 2) {' 'gpu: sum_squares*'

rm -rf "$build/src-mut"
[ -n "$found" ] || { echo "mutate.sh: no mutation is named $want" >&2; exit 1; }
echo "mutate.sh: $caught caught, $failed missed or broken"
[ "$failed" -eq 0 ]
