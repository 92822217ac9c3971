#!/usr/bin/env python3
"""Independent reference for qlora.c's whole LoRA backward (train_step.cu) on
the real default model: PyTorch autograd + Hugging Face peft, on the same
NF4-with-double-quant base that our trainer reads.

What it does
  1. Loads SmolLM2-135M-Instruct (models/SmolLM2-135M-Instruct.Q4_1.gguf) in
     transformers on the CPU in fp32, as dev/make_reference.py does.
  2. Quantizes each of the 210 linear weights (q, k, v, o, gate, up, down of
     the 30 blocks) with bitsandbytes, NF4 with double quant:
       quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
     and builds two fp32 bases from that: bitsandbytes' own round trip
     (dequantize_4bit), and the same 4-bit codes with the 64-block scales
     double-quantized as nf4.h does it, which is what our trainer reads,
     bit for bit (see "NF4 base" below). Embeddings / lm_head (tied) and the
     norms stay as loaded.
  3. Attaches peft LoRA: LoraConfig(r=2, lora_alpha=4,
     target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
     bias="none"), so scaling = alpha / r = 2, and sets every lora_A / lora_B
     weight from the formula below (B non-zero, else every dA would be 0).
  4. Runs one fixed batch, a ChatML chat of T = 20 tokens, forward and
     backward, the loss being qlora.c's: the sum over answer targets of
     -log softmax(logits[t])[labels[t+1]] divided by the number of answer
     targets in the whole batch (HF's shift: position t predicts labels[t+1];
     the same as transformers' model(ids, labels=labels).loss).
  5. Writes test/fixtures/peft_reference.safetensors for
     test/test_peft_reference.cpp.

Precision of the reference
  The stored loss and gradients come from a FLOAT64 run: the model converted
  with .double() after the fp32 weights above are fixed (so its weights are
  exactly the fp32-rounded NF4 values and the fp32-rounded LoRA values), and
  with the places where transformers' Llama computes in fp32 whatever the
  model dtype avoided: LlamaRMSNorm (casts to float32) and the rotary
  embedding (cos/sin from float32 angles) are patched here to compute in
  float64, and attention is sdpa, which stays float64 (the eager path's
  softmax is forced to float32). The
  loss is computed here in float64 from the logits (transformers' loss
  function upcasts to float32 only). So the reference is the exact math of
  the fp32-valued model up to float64 rounding (~1e-16 relative, which is
  nothing next to fp32's 6e-8).
  The script also runs the plain fp32 model (unpatched, transformers'
  defaults) and stores transformers' own fp32 loss with the labels
  ("loss_hf_fp32") and reports how far its fp32 gradients are from the
  float64 ones: that is what fp32 rounding alone does over 30 layers, the
  scale for the C test's tolerances (stored in the metadata).

NF4 base: bitsandbytes vs nf4.h
  nf4.h documents where our NF4 + double quant differs from bitsandbytes
  0.50.2 on the CPU. For these matrices (every size a multiple of 64, no
  zero blocks) the 4-bit codes are the same and what remains is the double
  quant of the 64-block scales (absmax): bitsandbytes' float32 mean (the
  offset) can differ from ours by an ulp, it rounds dyn * absmax2 before
  adding the offset where we fuse, and its 8-bit quantizer reads a
  65536-entry lookup table, so a scale lying within ~1.5e-5 (relative to
  absmax2) of a midpoint of the dynamic map can get the neighbouring code:
  that block's scale then differs by one dynamic-map step, not an ulp. On
  this model: 3664 of the 1658880 scales differ by a code (up to 15% of the
  scale), 656744 in the last bits, and 35M of the 106M weights differ. The
  gradients on the two bases differ by up to ~8% of a tensor's largest entry
  (float64 vs float64; printed, and stored in the metadata), far more than
  fp32 rounding, so a test at fp32 tolerances needs the base bit for bit:
  the main reference ("grad.*", "loss") uses nf4.h's base, rebuilt here in
  numpy (bitsandbytes' 4-bit codes; offset = float32 of the absmax summed in
  double in order; true-nearest 8-bit code, ties low, on the map computed in
  double; scale = fmaf(dyn, absmax2, offset); w = NF4_CODE[code] * scale),
  and "base_hash" lets the C test check that its base is that one, bit for
  bit. The gradients on bitsandbytes' own round trip are stored too
  ("bnb.*") and checked with an allowance for the base difference.

LoRA initial values (identical in test/test_peft_reference.cpp)
  For block `layer` (0..29), target t (LoraTarget order: q = 0, v = 2,
  down = 6) and matrix M in {A, B} (peft shapes A [r, in], B [out, r]),
  the element with row-major flat index i is
      float32( 0.02 * sin(0.37 * i + 1.3 * layer + 0.7 * t + (0.5 if M is B else 0.0)) )
  evaluated in float64, left to right, with libm's sin (Python's math.sin,
  C's std::sin), then rounded once to float32.

How to regenerate
  pip install torch transformers peft bitsandbytes gguf safetensors numpy accelerate
  python3 dev/make_peft_reference.py [gguf path]
  (about 2 minutes on 2 CPU cores; default gguf path:
  models/SmolLM2-135M-Instruct.Q4_1.gguf, fetch it with `make fetch`.)

Generated with
  torch 2.15.0 (CPU), transformers 5.24.0, peft 0.21.2, bitsandbytes 0.50.2,
  gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6, accelerate 1.15.0,
  Python 3.11.7. The versions, the formula and the GGUF's sha256 are also in
  the fixture's __metadata__.

Fixture contents (N = 1 sequence, T = 20)
  tokens               int32 [N, T]    token ids (no BOS added; ChatML)
  targets              int32 [N, T]    ALREADY SHIFTED for our Batch:
                                       targets[s, t] = labels[s, t+1] (the
                                       token to predict at t) or -100;
                                       targets[s, T-1] = -100
  labels               int32 [N, T]    HF labels (unshifted): -100 before the
                                       answer and on padding
  loss                 float32 [1]     float64 reference mean answer loss
  loss_hf_fp32         float32 [1]     transformers' fp32
                                       model(tokens, labels=labels).loss
  grad.{l}.{q|v|down}.{A|B}  float32   d loss / d lora_{A|B} (float64 run,
                                       nf4.h's base), l in {0, 14, 29};
                                       peft shapes
  base_hash            int64 [30, 7]   per block and matrix (LoraTarget
                                       order q k v o gate up down) of nf4.h's
                                       base: sum over i of bits(w[i]) *
                                       ((i * 0x9E3779B97F4A7C15) | 1) mod 2^64
  bnb.loss, bnb.grad.{l}.{q|v|down}.{A|B}   the same on bitsandbytes' own
                                       dequantize_4bit base (float64 run)
  lora.{l}.{q|v|down}.{A|B}  float32   the LoRA values of those layers as set
                                       here (the test checks that its formula
                                       reproduces them bit for bit)
"""
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import sys
from fractions import Fraction

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as bnbf
import peft
from peft import LoraConfig, get_peft_model
from safetensors.numpy import save_file
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "test", "fixtures", "peft_reference.safetensors")

RANK, ALPHA = 2, 4
TARGETS = {"q_proj": ("q", 0), "v_proj": ("v", 2), "down_proj": ("down", 6)}   # name, LoraTarget index
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
STORED_LAYERS = (0, 14, 29)
T = 20
FORMULA = ("float32(0.02 * sin(0.37 * i + 1.3 * layer + 0.7 * t + (0.5 if B else 0.0))), float64, "
           "i = row-major flat index in peft's shape (A [r, in], B [out, r]), t = LoraTarget index "
           "(q 0, v 2, down 6), libm sin")

# One ChatML chat; the prompt (up to and including "<|im_start|>assistant\n")
# is not learned, the answer through <|im_end|> is. The batch is small
# because the C test runs it twice (with and without recompute) through the
# 135M model under AddressSanitizer, where a step costs ~10 CPU-seconds of
# fixed work (dequantizing the 210 NF4 matrices, twice) plus ~1 per token;
# the test must stay under a minute. The chat (11 + 10 tokens) is truncated
# to T = 20: the answer loses its final <|im_end|>. Longer chats are padded
# with <|im_end|>, labelled -100.
CHATS = [
    ("Hi!", "Hello! How can I help you today?<|im_end|>"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def lora_value_array(shape, layer, target, is_b):
    n = int(np.prod(shape))
    off = 0.5 if is_b else 0.0
    v = [0.02 * math.sin(0.37 * i + 1.3 * layer + 0.7 * target + off) for i in range(n)]
    return np.array(v, dtype=np.float64).astype(np.float32).reshape(shape)


# --- NF4 -----------------------------------------------------------------------

def dynamic_map_double():
    """nf4.h's dynamic_map_signed: bitsandbytes' signed dynamic map computed in
    double and rounded once, ascending."""
    vals = []
    for e in range(7):
        n_points = (1 << e) + 1
        scale = 10.0 ** (e - 6)
        for j in range(n_points - 1):
            left = 0.1 + 0.9 * j / (n_points - 1)
            right = 0.1 + 0.9 * (j + 1) / (n_points - 1)
            m = (left + right) / 2 * scale
            vals += [m, -m]
    vals += [0.0, 1.0]
    return np.sort(np.array(vals, np.float64).astype(np.float32))


DYN = None
NF4_CODE = None


def fma_f32(a, b, c):
    """float32 fmaf(a, b, c) for float32 arrays: a * b is exact in double; the
    double sum is exact or rounded once, and a second rounding to float32 can
    only go wrong when the double result is exactly a float32 tie: those few
    are redone exactly with fractions."""
    s = a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)
    out = s.astype(np.float32)
    low = s.view(np.uint64) & np.uint64((1 << 29) - 1)
    for k in np.nonzero(low == np.uint64(1 << 28))[0]:
        exact = Fraction(float(a[k])) * Fraction(float(b[k])) + Fraction(float(c[k]))
        lo = np.float32(float(exact))
        cands = [lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))]
        best = min(cands, key=lambda f: (abs(Fraction(float(f)) - exact),
                                         int(np.array(f).view(np.uint32)) & 1))
        out[k] = best
    return out


def nf4_ours(w, packed):
    """The weights as nf4.h dequantizes them (nf4_quantize(double_quant=1) +
    nf4_dequantize): bitsandbytes' 4-bit codes (the same as ours for full
    64-blocks, which every matrix here has), offset = float32 of the absmax
    summed in double in order, true-nearest 8-bit code (ties low) of
    (absmax - offset) * (1 / absmax2) on the double-computed map, scale =
    fmaf(dyn, absmax2, offset), w = NF4_CODE[code] * scale."""
    flat = w.reshape(-1).numpy()
    n = flat.size
    assert n % 64 == 0
    absmax = np.abs(flat.reshape(-1, 64)).max(1)
    nb = absmax.size
    offset = np.float32(np.cumsum(absmax.astype(np.float64))[-1] / nb)   # sequential, like the C loop
    centered = absmax - offset                                            # float32
    nd = (nb + 255) // 256
    pad = np.zeros(nd * 256, np.float32)
    pad[:nb] = np.abs(centered)
    absmax2 = pad.reshape(nd, 256).max(1)
    inv = (np.float32(1.0) / np.maximum(absmax2, np.float32(1e-38))).astype(np.float32)
    v = centered * np.repeat(inv, 256)[:nb]                               # float32
    lo = np.clip(np.searchsorted(DYN, v, side="right") - 1, 0, 255)
    hi = np.minimum(lo + 1, 255)
    take_hi = (lo < 255) & (np.abs(v - DYN[hi]) < np.abs(v - DYN[lo]))
    q = np.where(take_hi, hi, lo)
    scale = fma_f32(DYN[q], np.repeat(absmax2, 256)[:nb], np.full(nb, offset, np.float32))
    p = packed.reshape(-1).numpy()
    codes = np.empty(n, np.int64)
    codes[0::2] = p >> 4
    codes[1::2] = p & 15
    out = NF4_CODE[codes] * np.repeat(scale, 64)
    return torch.from_numpy(out.reshape(w.shape)), scale


HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def weight_hash(w):
    """sum over i of bits(w[i]) * ((i * 0x9E3779B97F4A7C15) | 1) mod 2^64, as int64
    (a single changed bit anywhere changes it); the test computes the same."""
    bits = np.ascontiguousarray(w.numpy(), np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    mult = (np.arange(bits.size, dtype=np.uint64) * HASH_MULT) | np.uint64(1)
    return np.sum(bits * mult, dtype=np.uint64).view(np.int64)


def quantize_base(model):
    """bitsandbytes' NF4 + double-quant round trip of the 210 linear weights and
    nf4.h's dequantization of the same weights; their hashes and a count of
    where they differ."""
    bnb, ours = {}, {}
    hashes = np.zeros((30, 7), np.int64)
    stats = {"blocks": 0, "scales_differ_in_the_last_bits": 0, "scales_differ_by_a_dq_code": 0,
             "max_rel_scale_diff": 0.0, "weights_differ": 0, "weights": 0}
    for l, layer in enumerate(model.model.layers):
        for t, name in enumerate(LINEARS):
            w = layer.get_submodule(name).weight.data
            q, st = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
            deq = bnbf.dequantize_4bit(q, st)
            assert deq.dtype == torch.float32 and deq.shape == w.shape
            mine, mine_scale = nf4_ours(w, q)
            bnb_scale = (bnbf.dequantize_blockwise(st.absmax, st.state2) + st.offset).float().numpy()
            rel = np.abs(mine_scale.astype(np.float64) - bnb_scale) / bnb_scale
            stats["blocks"] += rel.size
            stats["scales_differ_in_the_last_bits"] += int(((rel > 0) & (rel < 1e-5)).sum())
            stats["scales_differ_by_a_dq_code"] += int((rel >= 1e-5).sum())
            stats["max_rel_scale_diff"] = max(stats["max_rel_scale_diff"], float(rel.max()))
            stats["weights_differ"] += int((mine != deq).sum())
            stats["weights"] += mine.numel()
            hashes[l, t] = weight_hash(mine)
            bnb[(l, name)] = deq.contiguous()
            ours[(l, name)] = mine.contiguous()
    return bnb, ours, hashes, stats


def set_base(pm, weights, dtype):
    for l, layer in enumerate(pm.base_model.model.model.layers):
        for name in LINEARS:
            lin = layer.get_submodule(name)
            lin = getattr(lin, "base_layer", lin)
            lin.weight.data = weights[(l, name)].to(dtype)


# --- float64 patches -----------------------------------------------------------

_orig_rms = modeling_llama.LlamaRMSNorm.forward
_orig_rope = modeling_llama.LlamaRotaryEmbedding.forward


def rms_forward(self, h):
    if h.dtype != torch.float64:
        return _orig_rms(self, h)
    var = h.pow(2).mean(-1, keepdim=True)
    return self.weight * (h * torch.rsqrt(var + self.variance_epsilon))


def rope_forward(self, x, position_ids):
    if x.dtype != torch.float64:
        return _orig_rope(self, x, position_ids)
    c = self.config
    base = c.rope_parameters["rope_theta"]
    dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].double() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    assert self.attention_scaling == 1.0
    return emb.cos(), emb.sin()


modeling_llama.LlamaRMSNorm.forward = rms_forward
modeling_llama.LlamaRotaryEmbedding.forward = rope_forward


# --- runs ----------------------------------------------------------------------

def lora_modules(pm):
    """(layer, short name, target index) -> peft LoRA Linear module."""
    out = {}
    for l, layer in enumerate(pm.base_model.model.model.layers):
        for full in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            short, t = TARGETS[full.split(".")[-1]]
            out[(l, short, t)] = layer.get_submodule(full)
    return out


def run(pm, ids, labels):
    """Forward + backward of the answer-only mean loss; returns the loss (a
    float64 python number from logits in the model's dtype) and {key: grad}."""
    pm.zero_grad(set_to_none=True)
    logits = pm(input_ids=ids).logits
    lp = torch.log_softmax(logits[:, :-1].to(torch.float64), -1)
    tgt = labels[:, 1:]
    m = tgt != -100
    nll = -lp[m].gather(1, tgt[m][:, None])
    loss = nll.sum() / m.sum()
    loss.backward()
    grads = {}
    for (l, short, t), mod in lora_modules(pm).items():
        grads[(l, short, "A")] = mod.lora_A["default"].weight.grad.detach().double().clone()
        grads[(l, short, "B")] = mod.lora_B["default"].weight.grad.detach().double().clone()
    return loss.item(), grads


def compare(ref, other):
    """Worst over tensors of max|diff|/max|ref|, min cosine."""
    worst, cos_min = 0.0, 1.0
    for k, r in ref.items():
        o = other[k]
        worst = max(worst, ((o - r).abs().max() / r.abs().max()).item())
        cos_min = min(cos_min, (torch.dot(o.flatten(), r.flatten()) / (o.norm() * r.norm())).item())
    return worst, cos_min


def main():
    global DYN, NF4_CODE
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    torch.manual_seed(0)
    DYN = dynamic_map_double()
    bnb_map = bnbf.create_dynamic_map(signed=True).float().numpy()
    assert np.abs(np.sort(bnb_map) - DYN).max() < 1e-7
    NF4_CODE = bnbf.get_4bit_type("nf4", device="cpu").float().numpy()
    file_sha = sha256(gguf_path)
    d, name = os.path.split(os.path.abspath(gguf_path))

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.eval()
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152), c
    assert c._attn_implementation == "sdpa", c._attn_implementation
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids

    # the batch
    im_end = enc("<|im_end|>")
    assert len(im_end) == 1
    rows, lab_rows = [], []
    for user, answer in CHATS:
        p = enc(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        a = enc(answer)
        ids = (p + a)[:T]
        labels = ([-100] * len(p) + a)[:T]
        while len(ids) < T:
            ids.append(im_end[0])
            labels.append(-100)
        rows.append(ids)
        lab_rows.append(labels)
        print(f"chat: prompt {len(p)} + answer {len(a)} tokens -> T = {T}")
    ids = torch.tensor(rows)
    labels = torch.tensor(lab_rows)
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    n_answer = int((targets != -100).sum())
    print(f"tokens: {rows}\nanswer targets: {n_answer}")

    # the NF4 bases
    bnb_base, ours_base, hashes, stats = quantize_base(model)
    print(f"NF4 + double quant, bitsandbytes vs nf4.h: {json.dumps(stats)}")

    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0, bias="none")
    pm = get_peft_model(model, cfg)
    mods = lora_modules(pm)
    assert len(mods) == 90
    for (l, short, t), mod in mods.items():
        assert mod.scaling["default"] == ALPHA / RANK
        for is_b, lin in ((False, mod.lora_A["default"]), (True, mod.lora_B["default"])):
            v = lora_value_array(tuple(lin.weight.shape), l, t, is_b)
            lin.weight.data = torch.from_numpy(v)
    n_trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    print(f"trainable parameters: {n_trainable}")

    # fp32 on the primary (nf4.h) base: transformers' own loss, fp32 gradients
    set_base(pm, ours_base, torch.float32)
    with torch.no_grad():
        loss_hf = pm(input_ids=ids, labels=labels).loss.item()
    loss32, g32 = run(pm, ids, labels)
    print(f"fp32: transformers loss {loss_hf:.8f}, ours (from fp32 logits) {loss32:.8f}")

    # the float64 references: primary (nf4.h base), then bitsandbytes' base
    pm.double()
    set_base(pm, ours_base, torch.float64)
    loss64, g64 = run(pm, ids, labels)
    set_base(pm, bnb_base, torch.float64)
    loss_bnb, g_bnb = run(pm, ids, labels)
    e32, c32 = compare(g64, g32)
    eb, cb = compare(g64, g_bnb)
    fp32_line = (f"fp32 torch vs float64: worst max|diff|/max|ref| {e32:.3g}, min cosine {c32:.12f}, "
                 f"loss rel {abs(loss32 - loss64) / loss64:.3g} (transformers' fp32 loss: "
                 f"{abs(loss_hf - loss64) / loss64:.3g})")
    base_line = (f"bitsandbytes base vs nf4.h base (float64): worst max|diff|/max|ref| {eb:.3g}, "
                 f"min cosine {cb:.12f}, loss rel {abs(loss_bnb - loss64) / loss64:.3g}")
    print(f"float64 reference loss {loss64:.10f} (bitsandbytes base: {loss_bnb:.10f})")
    print(fp32_line)
    print(base_line)

    tensors = {
        "tokens": ids.numpy().astype(np.int32),
        "targets": targets.numpy().astype(np.int32),
        "labels": labels.numpy().astype(np.int32),
        "loss": np.array([loss64], np.float32),
        "loss_hf_fp32": np.array([loss_hf], np.float32),
        "bnb.loss": np.array([loss_bnb], np.float32),
        "base_hash": hashes,
    }
    per_tensor = {}
    for l in STORED_LAYERS:
        for short, t in TARGETS.values():
            mod = mods[(l, short, t)]
            for m_name, lin in (("A", mod.lora_A["default"]), ("B", mod.lora_B["default"])):
                key = (l, short, m_name)
                g = g64[key]
                tensors[f"grad.{l}.{short}.{m_name}"] = g.numpy().astype(np.float32)
                tensors[f"bnb.grad.{l}.{short}.{m_name}"] = g_bnb[key].numpy().astype(np.float32)
                w = lin.weight.detach().numpy().astype(np.float32)
                assert np.array_equal(w, lora_value_array(w.shape, l, t, m_name == "B"))
                tensors[f"lora.{l}.{short}.{m_name}"] = w
                e, _ = compare({0: g}, {0: g32[key]})
                eb_t, cb_t = compare({0: g}, {0: g_bnb[key]})
                per_tensor[f"{l}.{short}.{m_name}"] = {"max_abs": float(f"{g.abs().max().item():.4g}"),
                                                       "fp32_err": float(f"{e:.3g}"),
                                                       "bnb_base_diff": float(f"{eb_t:.3g}"),
                                                       "bnb_base_cos": float(f"{cb_t:.9f}")}
                print(f"  grad.{l}.{short}.{m_name:1s} {str(list(g.shape)):10s} max|g| {g.abs().max().item():.3e}"
                      f"  fp32 err {e:.2e}  bnb base: diff {eb_t:.2e} cos {cb_t:.8f}")

    meta = {
        "description": "LoRA gradients + loss of SmolLM2-135M on an NF4 double-quant base, by torch "
                       "autograd + peft in float64; see dev/make_peft_reference.py",
        "lora": f"r={RANK} alpha={ALPHA} scaling={ALPHA / RANK} targets=q_proj,v_proj,down_proj dropout=0",
        "lora_formula": FORMULA,
        "loss": "sum over targets != -100 of -log softmax(logits[t])[targets[t]] / count over the batch",
        "answer_targets": str(n_answer),
        "stored_layers": ",".join(map(str, STORED_LAYERS)),
        "base": "grad.*, loss: bitsandbytes' 4-bit codes with nf4.h's double quant (base_hash: its "
                "210 matrices); bnb.*: bitsandbytes' own dequantize_4bit",
        "base_hash": "int64 [30, 7] (LoraTarget order): sum_i bits(w[i]) * ((i * 0x9E3779B97F4A7C15) | 1) "
                     "mod 2^64 over the dequantized fp32 weights",
        "fp32_vs_float64": fp32_line,
        "nf4_bnb_vs_ours": json.dumps(stats),
        "bnb_base_effect": base_line,
        "per_tensor": json.dumps(per_tensor),
        "gguf": file_sha,
        "gguf_file": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "gguf_py": md.version("gguf"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    os.chmod(OUT, 0o644)   # save_file creates it 0600
    size = os.path.getsize(OUT)
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {size} bytes, {len(tensors)} tensors")
    assert size < 400_000, size


if __name__ == "__main__":
    main()
