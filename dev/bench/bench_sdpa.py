"""PyTorch's side of the attention rows of dev/bench/bench_kernels.cu:
torch.nn.functional.scaled_dot_product_attention with the flash backend only
(FlashAttention-2 in PyTorch), causal, grouped-query heads (enable_gqa), bf16,
on the same shapes, timed the same way (CUDA events, the mean of 10 calls
after one warm-up), FLOPs counted the same way (q.k and p.v over half the keys
on average, 2 per multiply-add; the backward as twice the forward). Prints a
line per shape and pass, to set beside our kernels' lines (gpu_check.sh
kernels runs both).

  python3 dev/bench/bench_sdpa.py
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (sequences, tokens, query heads, kv heads, head_dim), as bench_kernels.cu's bench_attention calls
SHAPES = [(8, 512, 9, 3, 64), (2, 2048, 32, 8, 64), (2, 2048, 32, 8, 128)]
REPS = 10


def time_ms(fn):
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / REPS


def report(label, flops, ms):
    print("%-40s %9.3f ms %9.1f TFLOP/s" % (label, ms, flops / (ms * 1e-3) / 1e12))


def bench(n_seqs, seq, heads, kv_heads, head_dim):
    def tensor(n_heads):
        return torch.randn(n_seqs, n_heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    q, k, v = tensor(heads), tensor(kv_heads), tensor(kv_heads)
    d_out = torch.randn(n_seqs, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16)
    flops = 2.0 * 2.0 * n_seqs * heads * seq * seq / 2.0 * head_dim
    name = "%dx%d h%d/%d d%d" % (n_seqs, seq, heads, kv_heads, head_dim)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        report("sdpa fwd flash " + name, flops, time_ms(forward))
        out = forward()
        ms = time_ms(lambda: torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True))
        report("sdpa bwd flash " + name, 2.0 * flops, ms)


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_sdpa.py: no CUDA device (the flash backend is GPU-only)")
    print("device: %s, torch %s" % (torch.cuda.get_device_name(), torch.__version__))
    for shape in SHAPES:
        try:
            bench(*shape)
        except RuntimeError as e:   # the flash backend refusing a shape: say so, go on
            print("sdpa flash %s: %s" % (shape, str(e).splitlines()[0]))


if __name__ == "__main__":
    main()
