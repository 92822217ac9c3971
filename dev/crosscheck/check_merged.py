#!/usr/bin/env python3
"""Proves that transformers and HF `tokenizers` load what `./train --merge`
writes (OUT/merged/: model.safetensors in bf16, config.json, tokenizer.json,
tokenizer_config.json), and that they compute what we compute on it.

For a few prompts (English, Korean, a ChatML chat with special tokens):
  - tokenizers.Tokenizer.from_file(merged/tokenizer.json) and
    transformers' AutoTokenizer give the same ids as our tokenizer
    (build/dump_logits prints ours);
  - transformers' AutoModelForCausalLM loads the directory (no missing or
    unexpected weights), and its fp32 last-position logits (the bf16 weights
    upcast) equal ours (build/dump_logits: model_load + forward_cpu on the
    same directory): it prints the max |difference|; our forward matches
    transformers to ~6e-5 on the GGUF (test/test_forward.cpp), so expect that
    order here too;
  - for SmolLM2, the chat template of tokenizer_config.json renders the
    ChatML string (with the default system message) that chat_encode encodes.

Run (from the repository root):
    ./train --merge --out out          # or any run with --merge
    make build/dump_logits
    pip install torch transformers tokenizers safetensors numpy
    python3 dev/crosscheck/check_merged.py [out/merged]
Exits non-zero when an id differs or a logit differs by more than 2e-3.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DUMP = os.path.join(ROOT, "build", "dump_logits")
TOLERANCE = 2e-3
PROMPTS = [
    "The capital of France is",
    "대한민국의 수도는",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def ours(merged, prompt):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.safetensors")
        subprocess.run([DUMP, merged, out, prompt], check=True, stdout=subprocess.DEVNULL)
        t = load_file(out)
    return t["tokens"].tolist(), t["last_logits"]


def main():
    merged = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "out", "merged")
    if not os.path.exists(DUMP):
        sys.exit(f"{DUMP} is missing: run `make build/dump_logits` first")
    fast = Tokenizer.from_file(os.path.join(merged, "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(merged)
    model, info = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad_keys = {k: v for k, v in info.items() if v}
    print(f"transformers loaded {merged}: {type(model).__name__}, loading info problems: {bad_keys or 'none'}")
    ok = not bad_keys
    worst = 0.0
    for prompt in PROMPTS:
        our_ids, our_logits = ours(merged, prompt)
        fast_ids = fast.encode(prompt).ids
        auto_ids = auto(prompt, add_special_tokens=False).input_ids
        same_ids = our_ids == fast_ids == auto_ids
        with torch.no_grad():
            logits = model(torch.tensor([fast_ids])).logits[0, -1].numpy()
        diff = float(np.abs(logits - our_logits).max())
        worst = max(worst, diff)
        ok = ok and same_ids and diff <= TOLERANCE
        print(f"{prompt!r}: {len(our_ids)} tokens, ids {'equal' if same_ids else 'DIFFER'}, "
              f"top token {int(logits.argmax())} (ours {int(our_logits.argmax())}), max |logit diff| {diff:.3g}")
    if "SmolLM" in (auto.chat_template or ""):
        chat = auto.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                        tokenize=False)
        expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
        print(f"chat template renders SmolLM2's ChatML: {chat == expected}")
        ok = ok and chat == expected
    print(f"worst max |logit diff| {worst:.3g} (tolerance {TOLERANCE}): {'OK' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
