#!/usr/bin/env python3
"""Proves that what our GGUF export writes (./train --merge-gguf, ./merge
--out FILE.gguf, build/export_gguf) is the file llama.cpp's own converter
would write, as llama.cpp's `gguf` package and transformers read it.

  - keys: read with gguf.GGUFReader, every key of the llama.cpp-converted
    reference (by default the SmolLM2 GGUF we ship) is in ours with the same
    value types and the same values (tokens, token types, merges, special
    ids, pre-tokenizer, chat template, hyperparameters), except general.*
    provenance and general.file_type (what we wrote); keys only ours has
    are listed;
  - tensors: the same names and shapes; ours F16/BF16/Q8_0 matrices and F32
    vectors; dequantized with gguf.quants, ours equal the reference's values
    to the stored type's rounding (checked when the script exports the
    reference itself; a merged model differs by its adapter) -- the Q/K
    rows included, so the RoPE permutation is llama.cpp's;
  - transformers: AutoTokenizer and AutoModelForCausalLM load our file with
    their GGUF loader (gguf_file=...); their ids equal ours and their fp32
    last-position logits equal ours (build/dump_logits: model_load +
    forward_cpu on the same file) for English, Korean and a ChatML prompt.

Run (from the repository root):
    make build/export_gguf build/dump_logits
    pip install gguf torch transformers safetensors numpy
    python3 dev/crosscheck/check_gguf_export.py [OURS.gguf | f16 | bf16 | q8_0] [REFERENCE.gguf]
With a type (default f16) instead of OURS, it exports the reference with
build/export_gguf in that type into a temporary folder. Exits non-zero when
a key, tensor, id or logit (> 2e-3) differs, or (exporting the reference
itself) a weight differs by more than its type's rounding.
"""
import os
import subprocess
from importlib.metadata import version
import sys
import tempfile

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DUMP = os.path.join(ROOT, "build", "dump_logits")
EXPORT = os.path.join(ROOT, "build", "export_gguf")
REFERENCE = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
TOLERANCE = 2e-3
PROMPTS = [
    "The capital of France is",
    "대한민국의 수도는",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]
# The largest rounding error of each stored type, relative to the tensor's max |x|:
# half an fp16 / bf16 ulp; Q8_0's d / 2 = max|block| / 254, plus |q| <= 127 times
# the fp16 rounding of d (2^-11 d): max|block| (1 / 254 + 2^-11).
ROUNDING = {"F16": 2.0 ** -11, "BF16": 2.0 ** -8, "Q8_0": 1.0 / 254 + 2.0 ** -11, "F32": 0.0}
# What the reference has that says who made it and how it was stored, not what the model is.
OWN_KEYS = {"general.file_type", "general.quantization_version"}


def is_own_key(key):
    return key in OWN_KEYS or (key.startswith("general.") and key != "general.architecture")


def field_value(field):
    value = field.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value


def compare_keys(ours, ref):
    failures = 0
    compared = 0
    for key, field in ref.fields.items():
        if key.startswith("GGUF.") or is_own_key(key):
            continue
        compared += 1
        mine = ours.fields.get(key)
        if mine is None:
            print(f"  MISSING {key}")
            failures += 1
            continue
        if list(mine.types) != list(field.types):
            print(f"  TYPE    {key}: ours {[t.name for t in mine.types]}, reference {[t.name for t in field.types]}")
            failures += 1
            continue
        if field_value(mine) != field_value(field):
            print(f"  VALUE   {key}: ours {str(field_value(mine))[:80]}, reference {str(field_value(field))[:80]}")
            failures += 1
    extra = [k for k in ours.fields if not k.startswith("GGUF.") and k not in ref.fields]
    print(f"keys: {compared} of the reference's compared, {failures} differ; only in ours: {', '.join(extra)}")
    for key in ("general.file_type", "general.quantization_version", "general.alignment"):
        if key in ours.fields:
            print(f"  ours {key} = {field_value(ours.fields[key])}")
    return failures


def dequantized(tensor):
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(-1)


def compare_tensors(ours, ref, check_rounding):
    failures = 0
    mine = {t.name: t for t in ours.tensors}
    theirs = {t.name: t for t in ref.tensors}
    if set(mine) != set(theirs):
        print(f"  NAMES differ: only ours {sorted(set(mine) - set(theirs))}, only reference {sorted(set(theirs) - set(mine))}")
        failures += 1
    types = {}
    worst = {}
    for name in sorted(set(mine) & set(theirs)):
        a, b = mine[name], theirs[name]
        if list(a.shape) != list(b.shape):
            print(f"  SHAPE {name}: ours {list(a.shape)}, reference {list(b.shape)}")
            failures += 1
            continue
        types[a.tensor_type.name] = types.get(a.tensor_type.name, 0) + 1
        reference = dequantized(b)
        diff = float(np.max(np.abs(dequantized(a) - reference)))
        bound = ROUNDING[a.tensor_type.name] * float(np.max(np.abs(reference))) * (1 + 1e-6) + 1e-7
        if check_rounding and diff > bound:
            print(f"  VALUES {name}: max |ours - reference| {diff:.3e} is more than {a.tensor_type.name} rounding ({bound:.3e})")
            failures += 1
        kind = name.split(".")[-2] if name.startswith("blk.") else name
        worst[kind] = max(worst.get(kind, 0.0), diff)
    print(f"tensors: {len(mine)} in ours, {len(theirs)} in the reference, {failures} differ (name, shape, values); "
          f"ours stored as {types}")
    print("  max |ours - reference| dequantized, per kind: " +
          ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
    return failures, worst


def ours_logits(path, prompt):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.safetensors")
        subprocess.run([DUMP, path, out, prompt], check=True, stdout=subprocess.DEVNULL)
        t = load_file(out)
    return t["tokens"].tolist(), t["last_logits"]


def compare_transformers(path):
    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    failures = 0
    for prompt in PROMPTS:
        ids, logits = ours_logits(path, prompt)
        theirs = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if theirs != ids:
            print(f"  IDS differ for {prompt!r}: ours {ids}, transformers {theirs}")
            failures += 1
            continue
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0, -1].numpy()
        diff = float(np.max(np.abs(reference - logits)))
        same_top = int(np.argmax(reference)) == int(np.argmax(logits))
        print(f"  {prompt[:30]!r:34} {len(ids):3d} tokens, same ids; max |logit diff| {diff:.2e}, "
              f"same top token: {same_top}")
        failures += diff > TOLERANCE or not same_top
    print(f"transformers {version('transformers')}: {failures} prompts differ")
    return failures


def main():
    for tool in (DUMP, EXPORT):
        if not os.path.exists(tool):
            sys.exit(f"{tool} is missing: run `make build/export_gguf build/dump_logits` first")
    reference = sys.argv[2] if len(sys.argv) > 2 else REFERENCE
    given = sys.argv[1] if len(sys.argv) > 1 else "f16"
    export = given in ("f16", "bf16", "q8_0")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"model.{given}.gguf") if export else given
        if export:
            subprocess.run([EXPORT, reference, path, given], check=True)
        print(f"ours: {path}\nreference: {reference}\ngguf {version('gguf')}")
        ours, ref = gguf.GGUFReader(path), gguf.GGUFReader(reference)
        failures = compare_keys(ours, ref)
        tensor_failures, _ = compare_tensors(ours, ref, export)
        failures += tensor_failures + compare_transformers(path)
    print("OK" if failures == 0 else f"FAILED: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
