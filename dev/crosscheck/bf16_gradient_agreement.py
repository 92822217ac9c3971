#!/usr/bin/env python3
"""How close are LoRA gradients under BF16 mixed precision to the fp32 ones,
per tensor, in PyTorch + peft on the real default model?

This is a yardstick for our GPU trainer (bf16 GEMM inputs / activations, fp32
residual stream and accumulation), whose per-LoRA-tensor gradient cosines
against our fp32 CPU path are, at worst, ~0.989-0.996 (early layers' q/k/v).
Here PyTorch's own bf16 is measured against PyTorch fp32 on the same model,
LoRA values and batch.

What it does
  1. Loads SmolLM2-135M-Instruct from models/SmolLM2-135M-Instruct.Q4_1.gguf
     with transformers' GGUF loader (plain Q4_1 dequantization, no NF4) in
     fp32 on the CPU, attention "sdpa".
  2. Attaches peft LoRA (r=8, lora_alpha=16, lora_dropout=0, bias "none") on
     q_proj k_proj v_proj o_proj gate_proj up_proj down_proj: 420 tensors
     (30 layers x 7 targets x A, B). torch.manual_seed(0) before
     get_peft_model (lora_A: peft's default kaiming-uniform init), then
     torch.manual_seed(1234) and every lora_B ~ U[-0.05, 0.05] (B must be
     non-zero, else every dA is 0).
  3. One batch of two Debian question/answer samples (SAMPLES below),
     tokenized without special tokens, prompt + answer, padded at the end
     with EOS to one length; labels (HF convention, position t predicts
     labels[t+1]) only on the answer, -100 on prompt and padding. Loss = SUM
     of the token cross-entropies over the answer targets, computed in fp32
     from the logits (cast to fp32 first where they are bf16).
  4. Gradients of all 420 LoRA tensors, three ways:
       (a) fp32: the reference.
       (b) autocast: the same fp32 model under
           torch.autocast("cpu", dtype=torch.bfloat16): fp32 weights (base
           and LoRA), bf16 matmul inputs incl. the LoRA A/B matmuls, lm_head
           and sdpa attention (which autocast also runs in bf16 on the CPU);
           RMSNorm, the residual adds and the loss stay fp32 (autocast keeps
           the residual stream fp32: fp32 + bf16 promotes).
       (c) bf16 base: pm.to(torch.bfloat16), then the LoRA parameters put
           back in fp32 (same values) and the rotary inv_freq buffers put back
           in fp32 (so only the model's precision changes, not the RoPE
           angles). peft allows this: its LoRA layer casts the (bf16) input to
           lora_A's dtype, runs A and B in fp32 and casts the sum back to the
           base layer's output dtype (bf16). Activations, the residual stream
           and the logits are bf16; LlamaRMSNorm computes in fp32 internally
           and returns bf16. No autocast. LoRA grads are fp32 tensors.
     The script prints the activation dtypes it sees, to confirm this.
  5. For (b) and (c) against (a): the loss, the worst per-tensor cosine (with
     layer / target / A or B), the 5 worst, how many of the 420 are below
     0.999 and below 0.998, the median per-tensor cosine, and the cosine of
     all 420 gradients concatenated into one vector.

How to run
  pip install torch transformers peft gguf numpy accelerate
  python3 dev/crosscheck/bf16_gradient_agreement.py [gguf path]
  (about 1.5 minutes on 2 CPU cores; default gguf path:
  models/SmolLM2-135M-Instruct.Q4_1.gguf, fetch it with `make fetch`.)

Results (2026-11-26; torch 2.15.0 CPU, transformers 5.24.0, peft 0.21.2,
gguf 0.19.0, Python 3.11.7; batch 2 x 61 tokens
(prompts 41 / 36 + answers 20 / 15), 35 answer targets, EOS <|im_end|> id 2)
  against (a) fp32                    (b) autocast bf16    (c) bf16 base
  loss (sum; fp32: 87.056908)         87.162880 (+0.12%)   86.677704 (-0.44%)
  worst                               0.993152 L1 v A      0.990783 L0 k A
  5 worst                             L1 v A   0.993152    L0 k A   0.990783
                                      L4 q B   0.995476    L4 q A   0.991794
                                      L2 k A   0.995658    L2 q A   0.992658
                                      L4 k A   0.995827    L2 k A   0.993049
                                      L0 q A   0.995996    L4 v A   0.993102
  below 0.999 / below 0.998 (of 420)  157 / 37             297 / 127
  median                              0.999187             0.998503
  all 420 concatenated                0.998965             0.998128
  (b) vs (c), concatenated: 0.998650.
  Here the 5 worst of both are q/k/v of layers 0-4 (mostly A), as in our
  GPU trainer; all 7 targets' worst stay >= 0.990. The worst value moves with the LoRA values: with
  SEED_A, SEED_B = 7, 99 instead, (b) worst 0.996424 (L5 k A), 22 below
  0.998, median 0.999136, all 0.999099; (c) worst 0.995851 (L2 q A), 65
  below 0.998, median 0.998706, all 0.998703.
"""
import importlib.metadata as md
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import peft
from peft import LoraConfig, get_peft_model
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED_A, SEED_B, B_RANGE = 0, 1234, 0.05
ATTN = "sdpa"

SAMPLES = [
    ("Document: The Debian package manager dpkg installs .deb files; apt fetches them and their "
     "dependencies from the archive.\nQuestion: Which tool downloads the dependencies of a "
     "package?\nAnswer:",
     " apt downloads a package and its dependencies from the Debian archive, and dpkg installs them."),
    ("Document: Debian releases are named after characters from the Toy Story films; the unstable "
     "distribution is always called sid.\nQuestion: What is the unstable distribution called?\n"
     "Answer:",
     " It is always called sid, after the boy next door in Toy Story."),
]


def make_batch(tok):
    enc = lambda s: tok(s, add_special_tokens=False).input_ids
    eos = tok.eos_token_id
    assert eos is not None
    rows = []
    for prompt, answer in SAMPLES:
        p, a = enc(prompt), enc(answer)
        rows.append((p + a, [-100] * len(p) + a))
        print(f"sample: prompt {len(p)} + answer {len(a)} tokens")
    T = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [eos] * (T - len(i)) for i, _ in rows])
    labels = torch.tensor([l + [-100] * (T - len(l)) for _, l in rows])
    n_targets = int((labels[:, 1:] != -100).sum())
    print(f"batch: {ids.shape[0]} x {T} tokens, EOS id {eos} ({tok.convert_ids_to_tokens(eos)!r}), "
          f"{n_targets} answer targets")
    return ids, labels


def lora_tensors(pm):
    """{(layer, target, 'A'|'B'): parameter} for the 420 LoRA weights."""
    out = {}
    for name, mod in pm.named_modules():
        m = re.search(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$", name)
        if m and hasattr(mod, "lora_A") and "default" in mod.lora_A:
            l, t = int(m.group(1)), m.group(2)
            assert mod.scaling["default"] == ALPHA / RANK
            out[(l, t, "A")] = mod.lora_A["default"].weight
            out[(l, t, "B")] = mod.lora_B["default"].weight
    assert len(out) == 30 * len(TARGETS) * 2, len(out)
    return out


def step(pm, params, ids, labels, autocast=False):
    """One forward + backward; returns the sum loss and fp32 copies of the LoRA grads."""
    pm.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = pm(input_ids=ids).logits
    logits_dtype = logits.dtype
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                           labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    loss.backward()
    grads = {}
    for k, p in params.items():
        assert p.grad is not None and p.grad.dtype == torch.float32, (k, p.grad)
        grads[k] = p.grad.detach().clone()
    return loss.item(), grads, logits_dtype


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return (torch.dot(a, b) / (a.norm() * b.norm())).item()


def report(label, loss, loss_ref, grads, ref):
    cos = {k: cosine(grads[k], ref[k]) for k in ref}
    order = sorted(cos, key=cos.get)
    name = lambda k: f"layer {k[0]} {k[1]} {k[2]}"
    allcat = cosine(torch.cat([grads[k].flatten() for k in ref]), torch.cat([ref[k].flatten() for k in ref]))
    print(f"\n== {label} vs fp32 ==")
    print(f"loss {loss:.6f} (fp32 {loss_ref:.6f}, rel diff {abs(loss - loss_ref) / loss_ref:.2e})")
    print(f"worst per-tensor cosine {cos[order[0]]:.6f} ({name(order[0])})")
    print("5 worst: " + ", ".join(f"{name(k)} {cos[k]:.6f}" for k in order[:5]))
    print(f"below 0.999: {sum(c < 0.999 for c in cos.values())} / {len(cos)}, "
          f"below 0.998: {sum(c < 0.998 for c in cos.values())} / {len(cos)}")
    print(f"median per-tensor cosine {statistics.median(cos.values()):.6f}")
    print(f"all 420 concatenated: cosine {allcat:.6f}")
    # a little context: where the bad ones are
    by_t = {t: min(c for k, c in cos.items() if k[1] == t) for t in TARGETS}
    print("worst by target: " + ", ".join(f"{t} {c:.5f}" for t, c in by_t.items()))
    by_m = {m: min(c for k, c in cos.items() if k[2] == m) for m in "AB"}
    print(f"worst A {by_m['A']:.6f}, worst B {by_m['B']:.6f}")
    return cos


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"gguf {md.version('gguf')}, Python {platform.python_version()}")
    d, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation=ATTN)
    model.eval()   # dropout is 0 anyway; eval only fixes the mode
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (30, 576, 49152), c
    assert c._attn_implementation == ATTN, c._attn_implementation
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    ids, labels = make_batch(tok)

    torch.manual_seed(SEED_A)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none")
    pm = get_peft_model(model, cfg)
    params = lora_tensors(pm)
    torch.manual_seed(SEED_B)
    with torch.no_grad():
        for (l, t, m), p in sorted(params.items()):
            if m == "B":
                p.uniform_(-B_RANGE, B_RANGE)
    lora_fp32 = {k: p.detach().clone() for k, p in params.items()}
    print(f"trainable parameters: {sum(p.numel() for p in pm.parameters() if p.requires_grad)}")

    # record the dtypes actually flowing (q_proj's output, a decoder layer's output)
    seen = {}
    def hook(tag):
        def f(_m, _i, o):
            seen[tag] = (o[0] if isinstance(o, tuple) else o).dtype
        return f
    layer0 = pm.base_model.model.model.layers[0]
    h1 = layer0.self_attn.q_proj.register_forward_hook(hook("q_proj out"))
    h2 = layer0.register_forward_hook(hook("decoder layer out (residual)"))
    h3 = layer0.self_attn.o_proj.register_forward_hook(hook("o_proj out"))

    loss_a, g_a, dt = step(pm, params, ids, labels)
    print(f"(a) fp32: loss {loss_a:.6f}; dtypes {seen}, logits {dt}")
    loss_b, g_b, dt = step(pm, params, ids, labels, autocast=True)
    print(f"(b) autocast bf16: loss {loss_b:.6f}; dtypes {seen}, logits {dt}")

    rotary = {n: b.detach().clone() for n, b in pm.named_buffers() if "rotary" in n}
    pm.to(torch.bfloat16)
    with torch.no_grad():
        for k, p in params.items():
            p.data = lora_fp32[k].clone()
        for n, b in pm.named_modules():
            if n.endswith("rotary_emb"):
                for bn, buf in list(b.named_buffers(recurse=False)):
                    setattr(b, bn, rotary[f"{n}.{bn}"].clone())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(b.dtype == torch.float32 for n, b in pm.named_buffers() if "rotary" in n)
    base_dtypes = {p.dtype for n, p in pm.named_parameters() if "lora_" not in n}
    assert base_dtypes == {torch.bfloat16}, base_dtypes
    loss_c, g_c, dt = step(pm, params, ids, labels)
    print(f"(c) bf16 base, fp32 LoRA: loss {loss_c:.6f}; dtypes {seen}, logits {dt}")
    for h in (h1, h2, h3):
        h.remove()

    report("(b) autocast bf16 (fp32 weights)", loss_b, loss_a, g_b, g_a)
    report("(c) bf16 base, fp32 LoRA params", loss_c, loss_a, g_c, g_a)
    print(f"\n(b) vs (c) concatenated cosine {cosine(torch.cat([g_b[k].flatten() for k in g_a]), torch.cat([g_c[k].flatten() for k in g_a])):.6f}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
