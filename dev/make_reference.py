#!/usr/bin/env python3
"""Independent reference for qlora.c's hand-written CPU forward pass.

What it does
  Loads SmolLM2-135M-Instruct (Q4_1 GGUF) into Hugging Face transformers on
  the CPU in fp32 (weights dequantized from the GGUF, llama.cpp's Q/K row
  permutation undone), checks those weights against a dequantization done
  here by hand, runs four prompts and one answer-only loss, and writes
  test/fixtures/smollm2_reference.safetensors, which the C tests compare
  against (the tests feed our forward the stored token ids, so the
  tokenizer only has to be sensible).

How to regenerate
  python3 dev/make_reference.py [gguf path]
  (default gguf path: models/SmolLM2-135M-Instruct.Q4_1.gguf, fetch it with
  `make fetch`; output goes to test/fixtures/smollm2_reference.safetensors.)
  transformers' GGUF loader needs `accelerate` (pip install accelerate
  psutil). Without it the script builds LlamaForCausalLM(LlamaConfig(...))
  itself and loads the hand-dequantized, unpermuted weights into it; both
  paths give the same weights (checked bit-for-bit here; set
  MAKE_REFERENCE_HAND=1 to force the fallback).

Generated with
  torch 2.15.0 (CPU), transformers 5.24.0, gguf 0.19.0, safetensors 0.8.0,
  numpy 2.4.6, tokenizers 0.23.3, accelerate 1.15.0, Python 3.11.7.
  The exact versions and the sha256 of the GGUF are also stored in the
  fixture's __metadata__.

Fixture contents (k = 0..3 for the four PROMPTS below)
  prompt{k}.tokens        int32 [T]      token ids of the prompt (no BOS added)
  prompt{k}.last_logits   float32 [49152] logits at the last prompt position
                                          (k = 0 and 3 only, for size)
  prompt{k}.top_ids       int32 [64]     top-64 token ids at the last position,
  prompt{k}.top_logits    float32 [64]   their logits, descending
  prompt{k}.logsumexp     float32 [1]    logsumexp of all 49152 logits
                                          (these three for k = 1 and 2 only)
  prompt{k}.hidden_norms  float32 [31]   L2 norm over the hidden dim, at the
                                          last position, of each entry of
                                          output_hidden_states:
                                          [0]    token embeddings (input of layer 0)
                                          [i]    output of layer i-1 (residual
                                                 stream), i = 1..29
                                          [30]   model.norm(output of layer 29),
                                                 i.e. the FINAL-RMSNORMED hidden
                                                 state that feeds lm_head (not the
                                                 raw layer-29 output; transformers
                                                 5.x replaces the last captured
                                                 entry with last_hidden_state).
                                          Asserted below with forward hooks.
  prompt{k}.greedy        int32 [16]     16 greedy new tokens (explicit argmax
                                          loop with the KV cache, no EOS stop)
  loss.tokens             int32 [T]      chat prompt + assistant answer
  loss.labels             int32 [T]      -100 on every token before the answer,
                                          else the token id. UNSHIFTED (HF
                                          convention): the model shifts
                                          internally, logits at position t are
                                          scored against labels[t+1], mean over
                                          the non-ignored targets.
  loss.value              float32 [1]    model(input_ids, labels=labels).loss
"""
import hashlib
import importlib.metadata as md
import inspect
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
import transformers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "test", "fixtures", "smollm2_reference.safetensors")

SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
          "trained by Hugging Face<|im_end|>\n")
CHAT = SYSTEM + ("<|im_start|>user\nWhat is the Debian FAQ?<|im_end|>\n"
                 "<|im_start|>assistant\n")
ANSWER = "The Debian FAQ answers common questions about Debian.<|im_end|>\n"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "대한민국의 수도는",
    CHAT,
]
FULL_LOGITS = {0, 3}   # the others store top-64 + logsumexp
TOPK = 64
N_GREEDY = 16


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# --- hand dequantization -----------------------------------------------------

def gguf_field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return v[0].item() if len(v) == 1 else v


def dequant(t):
    """Dequantize one GGUF tensor to a float32 numpy array in row-major
    (rows, cols) = (ne1, ne0) order, like the PyTorch weight."""
    w = dequantize(t.data, t.tensor_type).astype(np.float32)
    shape = tuple(int(d) for d in reversed(t.shape))
    return w.reshape(shape)


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's permute (HF rotate-half layout -> GGUF interleaved)."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def llama_cpp_unpermute(w, n_head):
    """Inverse of llama_cpp_permute (GGUF -> HF layout)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hand_state_dict(reader, n_head, n_kv_head):
    sd = {}
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for t in reader.tensors:
        w = dequant(t)
        p = t.name.split(".")
        if t.name == "token_embd.weight":
            sd["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            sd["model.norm.weight"] = w
        elif t.name == "output.weight":
            sd["lm_head.weight"] = w
        elif p[0] == "blk":
            if p[2] == "attn_q":
                w = llama_cpp_unpermute(w, n_head)
            elif p[2] == "attn_k":
                w = llama_cpp_unpermute(w, n_kv_head)
            sd[f"model.layers.{p[1]}.{names[p[2]]}.weight"] = w
        else:
            raise SystemExit(f"unexpected tensor {t.name}")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


# --- loading -----------------------------------------------------------------

def load_model(gguf_path, reader):
    d, name = os.path.split(os.path.abspath(gguf_path))
    try:
        if os.environ.get("MAKE_REFERENCE_HAND"):
            raise ImportError("MAKE_REFERENCE_HAND is set")
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        return model, "transformers GGUF loader (AutoModelForCausalLM.from_pretrained(gguf_file=...))"
    except (ImportError, ValueError) as e:
        print(f"transformers could not load the GGUF directly ({e}); "
              "building LlamaForCausalLM from the hand-dequantized weights", file=sys.stderr)
    n_head = gguf_field(reader, "llama.attention.head_count")
    n_kv = gguf_field(reader, "llama.attention.head_count_kv")
    cfg = LlamaConfig(
        vocab_size=gguf_field(reader, "llama.vocab_size"),
        hidden_size=gguf_field(reader, "llama.embedding_length"),
        intermediate_size=gguf_field(reader, "llama.feed_forward_length"),
        num_hidden_layers=gguf_field(reader, "llama.block_count"),
        num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=64,
        max_position_embeddings=gguf_field(reader, "llama.context_length"),
        rms_norm_eps=gguf_field(reader, "llama.attention.layer_norm_rms_epsilon"),
        rope_theta=gguf_field(reader, "llama.rope.freq_base"),
        tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, pad_token_id=2, dtype=torch.float32)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    missing, unexpected = model.load_state_dict(hand_state_dict(reader, n_head, n_kv), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model, "LlamaForCausalLM(LlamaConfig(...)) + hand-dequantized state_dict (fallback)"


def check_config(model):
    c = model.config
    theta = getattr(c, "rope_theta", None)
    if theta is None:
        theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta")
    assert c.model_type == "llama"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
            c.num_key_value_heads, c.vocab_size) == (30, 576, 9, 3, 49152), c
    assert getattr(c, "head_dim", 64) == 64 and c.intermediate_size == 1536
    # The GGUF stores eps as float32(1e-5) = 9.99999975e-06: the same value
    # once it is added to a float32 variance.
    assert np.float32(c.rms_norm_eps) == np.float32(1e-5), c.rms_norm_eps
    assert theta == 100000.0, theta
    assert c.tie_word_embeddings is True
    assert c.max_position_embeddings == 8192
    m = model.model
    assert model.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr(), "lm_head not tied"
    assert m.embed_tokens.weight.dtype == torch.float32


def verify_weights(model, reader, layers=(0, 17)):
    """Weights in the model == a plain dequantization of the file."""
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    by_name = {t.name: t for t in reader.tensors}
    for i in layers:
        for kind, heads, hf in (("attn_q", n_head, "q_proj"), ("attn_k", n_kv, "k_proj")):
            raw = dequant(by_name[f"blk.{i}.{kind}.weight"])
            w = llama_cpp_unpermute(raw, heads)
            assert np.array_equal(llama_cpp_permute(w, heads), raw)
            got = getattr(model.model.layers[i].self_attn, hf).weight.detach().numpy()
            assert got.shape == w.shape and np.array_equal(got, w), f"layer {i} {kind} differs"
            # and the permutation is real (not the identity)
            assert not np.array_equal(got, raw)
        for kind, hf in (("attn_v", "self_attn.v_proj"), ("ffn_down", "mlp.down_proj"),
                         ("attn_norm", "input_layernorm")):
            w = dequant(by_name[f"blk.{i}.{kind}.weight"])
            got = model.model.layers[i].get_submodule(hf).weight.detach().numpy()
            assert np.array_equal(got, w), f"layer {i} {kind} differs"
    emb = dequant(by_name["token_embd.weight"])
    assert np.array_equal(model.model.embed_tokens.weight.detach().numpy(), emb)
    assert np.array_equal(model.model.norm.weight.detach().numpy(),
                          dequant(by_name["output_norm.weight"]))
    print(f"weights: layers {list(layers)} q/k (unpermuted), v, ffn_down, attn_norm, "
          "token_embd and output_norm equal a hand gguf.quants.dequantize, bit for bit")


# --- runs ----------------------------------------------------------------------

@torch.no_grad()
def hidden_norms(model, ids):
    """Norms of output_hidden_states at the last position, and a hook-based check
    of what each entry is."""
    layer_out, pre_norm = {}, {}
    hooks = [l.register_forward_hook(
        lambda mod, a, out, i=i: layer_out.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, l in enumerate(model.model.layers)]
    hooks.append(model.model.norm.register_forward_hook(
        lambda mod, a, out: pre_norm.update(inp=a[0], out=out)))
    try:
        out = model(ids, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    hs = out.hidden_states
    L = model.config.num_hidden_layers
    assert len(hs) == L + 1, len(hs)
    assert torch.equal(hs[0], model.model.embed_tokens(ids))
    for i in range(L - 1):
        assert torch.equal(hs[i + 1], layer_out[i]), i
    assert torch.equal(pre_norm["inp"], layer_out[L - 1])
    assert torch.equal(hs[L], pre_norm["out"]), "entry 30 is not norm(layer 29 output)"
    assert not torch.equal(hs[L], layer_out[L - 1])
    norms = torch.stack([h[0, -1].double().norm() for h in hs]).float().numpy()
    return out.logits[0, -1].clone(), norms


@torch.no_grad()
def greedy(model, ids, n):
    """Explicit argmax loop with the KV cache. Returns the new tokens and the
    max |logit| difference to a full-sequence forward of prompt + tokens."""
    # transformers 5.x renamed past_key_values -> cache (the old name still works
    # but warns); use whichever this version's forward takes.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(ids, use_cache=True)
    past, step_logits, toks = getattr(out, cache_kw), [out.logits[0, -1]], []
    for s in range(n):
        nxt = int(torch.argmax(step_logits[-1]))
        toks.append(nxt)
        if s == n - 1:
            break
        out = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: past})
        past = getattr(out, cache_kw)
        step_logits.append(out.logits[0, -1])
    full = model(torch.cat([ids, torch.tensor([toks])], 1), use_cache=False).logits[0]
    T = ids.shape[1]
    full_steps = full[T - 1:T - 1 + n]
    diff = (torch.stack(step_logits) - full_steps).abs().max().item()
    agree = torch.equal(full_steps.argmax(-1), torch.tensor(toks))
    return toks, diff, agree


def main():
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    torch.manual_seed(0)
    reader = GGUFReader(gguf_path)
    file_sha = sha256(gguf_path)

    model, how = load_model(gguf_path, reader)
    model.eval()
    print("loaded with:", how)
    print(model.config)
    check_config(model)
    verify_weights(model, reader)

    d, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids

    tensors = {}
    for k, p in enumerate(PROMPTS):
        ids_list = enc(p)
        if k == 3:
            assert ids_list.count(1) == 3 and ids_list.count(2) == 2, ids_list  # <|im_start|> / <|im_end|>
        assert tok.decode(ids_list) == p, (tok.decode(ids_list), p)
        ids = torch.tensor([ids_list])
        logits, norms = hidden_norms(model, ids)
        toks, diff, agree = greedy(model, ids, N_GREEDY)
        assert torch.equal(model(ids).logits[0, -1], logits)

        tensors[f"prompt{k}.tokens"] = np.array(ids_list, np.int32)
        lg = logits.numpy().astype(np.float32)
        if k in FULL_LOGITS:
            tensors[f"prompt{k}.last_logits"] = lg
        else:
            v, i = torch.topk(logits, TOPK)
            tensors[f"prompt{k}.top_ids"] = i.numpy().astype(np.int32)
            tensors[f"prompt{k}.top_logits"] = v.numpy().astype(np.float32)
            tensors[f"prompt{k}.logsumexp"] = np.array(
                [torch.logsumexp(logits.double(), 0).item()], np.float32)
        tensors[f"prompt{k}.hidden_norms"] = norms.astype(np.float32)
        tensors[f"prompt{k}.greedy"] = np.array(toks, np.int32)

        top5 = torch.topk(logits, 5)
        print(f"\nprompt{k}: {p!r}\n  tokens ({len(ids_list)}): {ids_list}")
        print("  top-5:", ", ".join(f"{tok.decode([int(i)])!r} {v:.3f}"
                                    for v, i in zip(top5.values.tolist(), top5.indices)))
        print("  hidden_norms:", np.array2string(norms, precision=2, max_line_width=200))
        print(f"  greedy: {toks}\n  greedy text: {tok.decode(toks)!r}")
        print(f"  KV-cache vs full-sequence forward: max |logit diff| = {diff:.3g}, "
              f"argmax agree: {agree}")

    # answer-only loss; prompt and answer tokenized separately, then joined
    p_ids, a_ids = enc(CHAT), enc(ANSWER)
    ids_list = p_ids + a_ids
    if ids_list != enc(CHAT + ANSWER):
        print("note: tokenizing prompt+answer jointly gives different ids; using the split ones")
    labels = [-100] * len(p_ids) + a_ids
    ids, lab = torch.tensor([ids_list]), torch.tensor([labels])
    with torch.no_grad():
        out = model(ids, labels=lab)
        lp = torch.log_softmax(out.logits[0, :-1].double(), -1)
        tgt = lab[0, 1:]
        m = tgt != -100
        manual = -lp[m].gather(1, tgt[m][:, None]).mean().item()
    loss = out.loss.item()
    assert abs(loss - manual) < 1e-4, (loss, manual)
    tensors["loss.tokens"] = np.array(ids_list, np.int32)
    tensors["loss.labels"] = np.array(labels, np.int32)
    tensors["loss.value"] = np.array([loss], np.float32)
    print(f"\nloss: T={len(ids_list)}, {int(m.sum())} scored targets, "
          f"HF loss = {loss:.6f} (manual fp64 check {manual:.6f})")

    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": file_sha,
        "gguf_file": name,
        "gguf_py": md.version("gguf"),
        "loader": how,
        "hidden_norms": "[0] embeddings, [i] output of layer i-1 (i=1..29), "
                        "[30] model.norm(output of layer 29)",
        "labels": "unshifted (HF): logits[t] scored against labels[t+1]",
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata=meta)
    size = os.path.getsize(OUT)
    print(f"\nwrote {os.path.relpath(OUT, ROOT)}: {size} bytes, {len(tensors)} tensors")
    for k in sorted(tensors):
        print(f"  {k:24s} {tensors[k].dtype} {list(tensors[k].shape)}")
    assert size < 1_200_000, size


if __name__ == "__main__":
    main()
