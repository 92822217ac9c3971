#!/usr/bin/env python3
"""Reference NF4 quantizations by bitsandbytes, for test/test_nf4.cpp.

What it does
  Quantizes a few small fixture tensors with bitsandbytes' own
  quantize_4bit(x, blocksize=64, quant_type="nf4") on the CPU, once with
  compress_statistics=False (fp32 absmax per 64-block) and once with
  compress_statistics=True (double quantization of the absmax vector), and
  writes the inputs and results to test/fixtures/nf4_reference.safetensors.
  It also stores bitsandbytes' NF4 code book and signed dynamic map.

How to regenerate
  pip install bitsandbytes torch numpy safetensors
  python3 dev/make_nf4_fixtures.py      (a few seconds, CPU only)

Generated with
  bitsandbytes 0.50.2 (CPU backend: quantize_4bit is its pure-torch path,
  the 8-bit quantize_blockwise of the double quant is its native C++ path),
  torch 2.15.0+cu132 (run on the CPU), numpy 2.4.6, safetensors 0.8.0,
  Python 3.11.7.
  The versions are also stored in the file's __metadata__.

Fixture contents, for each case C below (uint8 data is stored as int32,
which our safetensors reader supports; every value is 0..255):
  C.x                  float32 [shape]    the input
  C.packed             int32 [(n+1)/2]    packed bytes: element 2j in the high
                                          nibble of byte j, 2j+1 in the low one
                                          (the same bytes with and without
                                          double quant; checked here)
  C.absmax             float32 [blocks]   absmax per 64-block (no double quant)
  C.dequant            float32 [n]        bitsandbytes' dequantize_4bit output
                                          (not stored for the large case)
  C.dq.absmax_q        int32 [blocks]     8-bit codes of absmax - offset
  C.dq.absmax2         float32 [ceil(blocks/256)]  absmax of each 256-block
  C.dq.offset          float32 [1]        mean of the absmax vector
  C.dq.absmax_dequant  float32 [blocks]   dyn[absmax_q] * absmax2 + offset,
                                          as bitsandbytes' dequantize_4bit
                                          computes it
and, once:
  nf4_code             float32 [16]       get_4bit_type("nf4")
  dynamic_map          float32 [256]      create_dynamic_map(signed=True)

Cases
  weights64x64  randn * 0.02, weight-like (64 full blocks)
  rows3x100     randn, n = 300: a short last block of 44
  odd1x99       randn * 5, n = 99: odd count, the last low nibble is padding
  zero3x70      randn with block 1 (64..127) and the short last block
                (192..209) all zero
  ties2x64      exact midpoints between NF4 codes (and the next float above
                each) in blocks whose absmax is 1 and 4, so x / absmax is exact
  dq130x129     randn * 0.02 with rows scaled 0.25..4: 263 blocks, so the
                double quant has a full 256-block and a partial one of 7

Notes on what bitsandbytes does (read from its source, version above, and
checked against its output) where test/test_nf4.cpp allows for it
  - An all-zero block gets absmax 0 and every nibble 7 (the code for 0.0):
    the torch path multiplies by 1 / max(absmax, 1e-38). Its CUDA kernel packs
    0x00 there instead; both dequantize to 0. We follow the CPU path (0x77).
    For an all-zero SHORT last block it stores the floor 1e-38 as the absmax
    (its full blocks store 0); we store 0.
  - Full blocks are scaled by x * (1 / absmax); the short last block by
    x / absmax. We (like its CUDA kernel) always multiply.
  - The double-quant offset is torch's float32 mean (a float32 pairwise sum),
    which can differ by an ulp or two from our mean summed in double.
  - Its CPU 8-bit quantizer (the double quant) does not search the map: it
    reads a table of the nearest code at 65536 evenly spaced points of
    [-1, 1] (csrc/cpu_ops.cpp, build_quantize_lut), indexed by
    (v + 1) / 2 * 65535 + 0.5, so a value within about 1.5e-5 of a midpoint
    can get the neighbouring code (1 of the 263 codes of dq130x129). We take
    the true nearest code.
  - The dynamic map comes from float32 torch.linspace; ours is computed in
    double and differs in the last bit for some entries.
"""

import importlib.metadata as metadata
import platform

import numpy as np
import torch
from safetensors.numpy import save_file

import bitsandbytes
import bitsandbytes.functional as F

OUT = "test/fixtures/nf4_reference.safetensors"


def make_cases():
    g = torch.Generator().manual_seed(20240601)
    cases = {}
    cases["weights64x64"] = torch.randn(64, 64, generator=g) * 0.02
    cases["rows3x100"] = torch.randn(3, 100, generator=g)
    cases["odd1x99"] = torch.randn(1, 99, generator=g) * 5
    zero = torch.randn(3, 70, generator=g)
    zero.view(-1)[64:128] = 0
    zero.view(-1)[192:] = 0
    cases["zero3x70"] = zero
    cases["ties2x64"] = make_ties()
    scales = torch.logspace(-2, 2, 130, base=2).unsqueeze(1)
    cases["dq130x129"] = torch.randn(130, 129, generator=g) * 0.02 * scales
    return cases


def make_ties():
    """Block 0: 1.0, the 15 float32 midpoints, the next float above each, 0s.
    Block 1: the same times -4 (exact: a power of two)."""
    code = F.get_4bit_type("nf4", device="cpu")
    mids = (code[:-1] + code[1:]) / 2
    above = torch.nextafter(mids, torch.full_like(mids, 2.0))
    block = torch.zeros(64)
    block[0] = 1.0
    block[1:16] = mids
    block[16:31] = above
    return torch.stack([block, block * -4.0])


def as_u8_in_i32(t):
    a = t.reshape(-1).numpy()
    assert a.dtype == np.uint8
    return a.astype(np.int32)


def quantize_case(name, x, tensors):
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
    packed_dq, state_dq = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(packed, packed_dq), name
    n = x.numel()
    n_blocks = (n + 63) // 64
    assert packed.numel() == (n + 1) // 2 and state.absmax.numel() == n_blocks

    # The absmax bitsandbytes' dequantize_4bit uses under double quant.
    absmax_dq = F.dequantize_blockwise(state_dq.absmax, state_dq.state2) + state_dq.offset
    dyn = state_dq.state2.code
    by_hand = dyn[state_dq.absmax.long()] * state_dq.state2.absmax.repeat_interleave(256)[:n_blocks] + state_dq.offset
    assert torch.equal(absmax_dq, by_hand), name

    tensors[f"{name}.x"] = x.numpy().astype(np.float32)
    tensors[f"{name}.packed"] = as_u8_in_i32(packed)
    tensors[f"{name}.absmax"] = state.absmax.numpy()
    if n <= 4096:
        tensors[f"{name}.dequant"] = F.dequantize_4bit(packed, state).reshape(-1).numpy()
    tensors[f"{name}.dq.absmax_q"] = as_u8_in_i32(state_dq.absmax)
    tensors[f"{name}.dq.absmax2"] = state_dq.state2.absmax.numpy()
    tensors[f"{name}.dq.offset"] = state_dq.offset.reshape(1).numpy()
    tensors[f"{name}.dq.absmax_dequant"] = absmax_dq.numpy()
    print(f"{name:14s} n={n:6d} blocks={n_blocks:4d} offset={state_dq.offset.item():.6g} "
          f"first bytes={packed.reshape(-1)[:4].tolist()}")


def main():
    tensors = {}
    for name, x in make_cases().items():
        quantize_case(name, x.contiguous(), tensors)
    tensors["nf4_code"] = F.get_4bit_type("nf4", device="cpu").numpy()
    tensors["dynamic_map"] = F.create_dynamic_map(signed=True).numpy()
    metadata_fields = {
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": metadata.version("safetensors"),
        "python": platform.python_version(),
    }
    save_file(tensors, OUT, metadata=metadata_fields)
    print(f"wrote {OUT} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
