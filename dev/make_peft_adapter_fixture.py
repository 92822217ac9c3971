#!/usr/bin/env python3
"""Proof that Hugging Face peft loads the adapter ./train writes, to the
logits we compute with it; the fixtures for test/test_peft_adapter.cpp.

  1. Our side (only with --train): runs
       ./train --data data/sample_raft.jsonl --steps 2 --grad-accum 1 --seq 160
               --val-frac 0 --rank 2 --targets q,v --lr 1e-2 --warmup 0 --out TMP
     (two CPU steps, about a minute; lr 1e-2 so that B moves well away from
     0) and copies TMP/adapter/ (adapter_config.json and
     adapter_model.safetensors, 0.46 MB) to test/fixtures/peft_adapter/.
     Without --train the committed adapter is used.
  2. transformers loads models/SmolLM2-135M-Instruct.Q4_1.gguf in fp32 on the
     CPU (its GGUF loader dequantizes it as dev/make_reference.py describes;
     our model_load gives the same weights, test/test_forward.cpp), and
     PeftModel.from_pretrained applies test/fixtures/peft_adapter/. The
     script checks that peft found every tensor of the file (each lora_A /
     lora_B weight in the model equals the file's, 60 modules, scaling
     alpha / r = 16) and that the adapter changes the logits.
  3. Writes test/fixtures/peft_adapter_reference.safetensors:
       tokens       int32 [n]        the prompt, no BOS (HF's tokenizer)
       last_logits  float32 [49152]  peft model's logits at the last position
     and prints how far the base model's logits are from them.

Regenerate:
    pip install torch transformers peft gguf safetensors numpy accelerate
    make train                      # only for --train
    python3 dev/make_peft_adapter_fixture.py [--train]
Generated with torch 2.15.0 (CPU), transformers 5.24.0, peft 0.21.2,
gguf 0.19.0, safetensors 0.8.0, accelerate 1.15.0, Python 3.11.7 (also in
the fixture's __metadata__).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import peft
import torch
import transformers
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
ADAPTER = os.path.join(ROOT, "test", "fixtures", "peft_adapter")
OUT = os.path.join(ROOT, "test", "fixtures", "peft_adapter_reference.safetensors")
TRAIN_ARGS = ["--data", "data/sample_raft.jsonl", "--steps", "2", "--grad-accum", "1", "--seq", "160", "--val-frac", "0", "--rank", "2",
              "--targets", "q,v", "--lr", "1e-2", "--warmup", "0"]
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def train_adapter():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(ROOT, "train"), *TRAIN_ARGS, "--out", tmp], cwd=ROOT, check=True)
        os.makedirs(ADAPTER, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(os.path.join(tmp, "adapter", name), os.path.join(ADAPTER, name))
    print(f"trained with ./train {' '.join(TRAIN_ARGS)}; adapter copied to {os.path.relpath(ADAPTER, ROOT)}")


def check_loaded(pm, tensors):
    """Every lora_A / lora_B of the file is in the peft model with its values."""
    state = pm.state_dict()
    n_modules = 0
    for name, value in tensors.items():
        key = name.replace(".weight", ".default.weight")
        assert key in state, f"peft did not load {name}"
        assert np.array_equal(state[key].numpy(), value), f"{name}: values differ"
        n_modules += name.endswith("lora_A.weight")
    n_lora_in_model = sum(k.endswith("lora_A.default.weight") for k in state)
    assert n_lora_in_model == n_modules == 60, (n_lora_in_model, n_modules)
    scalings = {m.scaling["default"] for m in pm.modules() if isinstance(m, LoraLayer)}
    assert scalings == {16.0}, scalings
    return n_modules


def main():
    if "--train" in sys.argv[1:]:
        train_adapter()
    d, name = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        base_logits = base(torch.tensor([ids])).logits[0, -1].numpy().copy()
    pm = PeftModel.from_pretrained(base, ADAPTER)
    pm.eval()
    n_modules = check_loaded(pm, load_file(os.path.join(ADAPTER, "adapter_model.safetensors")))
    with torch.no_grad():
        logits = pm(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    change = float(np.abs(logits - base_logits).max())
    print(f"peft loaded {n_modules} LoRA modules; prompt {len(ids)} tokens; the adapter moves the last logits by "
          f"up to {change:.3f}; top token {int(logits.argmax())} (base {int(base_logits.argmax())})")
    assert change > 0.1, "the adapter barely changes the logits: retrain with --train"
    with open(GGUF, "rb") as f:
        gguf_sha = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(ADAPTER, "adapter_model.safetensors"), "rb") as f:
        adapter_sha = hashlib.sha256(f.read()).hexdigest()
    meta = {
        "description": "last-position logits of SmolLM2-135M (GGUF dequantized, fp32) with the LoRA adapter of "
                       "test/fixtures/peft_adapter applied by peft; see dev/make_peft_adapter_fixture.py",
        "prompt": PROMPT,
        "adapter_change": f"{change:.6g}",
        "adapter_sha256": adapter_sha,
        "gguf": gguf_sha,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    save_file({"tokens": np.array(ids, np.int32), "last_logits": logits.astype(np.float32)}, OUT, metadata=meta)
    os.chmod(OUT, 0o644)
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
