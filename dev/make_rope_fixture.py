"""Writes test/fixtures/rope_inv_freq.json: RoPE inverse frequencies as
transformers computes them, plain and with Llama-3 scaling (Llama 3.2's
settings), for test_layers.cpp to compare rope_inv_freq() against.

Regenerate: python3 dev/make_rope_fixture.py   (transformers 5.x, torch, CPU)
"""
import json

import torch
import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def inv_freq(rope_scaling, theta, head_dim):
    config = LlamaConfig(hidden_size=head_dim * 32, num_attention_heads=32, head_dim=head_dim, rope_theta=theta,
                         max_position_embeddings=131072, rope_scaling=rope_scaling)
    kind = rope_scaling["rope_type"] if rope_scaling else "default"
    if kind == "default":
        # the plain formula, as LlamaRotaryEmbedding computes it
        values = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    else:
        values, _ = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    return [float(x) for x in values.tolist()]


cases = [
    {"name": "smollm2", "theta": 100000.0, "head_dim": 64, "rope_scaling": None},
    {"name": "llama3.2", "theta": 500000.0, "head_dim": 64, "rope_scaling": LLAMA3},
    {"name": "llama3.1-8b", "theta": 500000.0, "head_dim": 128,
     "rope_scaling": dict(LLAMA3, factor=8.0)},
]
for case in cases:
    case["inv_freq"] = inv_freq(case["rope_scaling"], case["theta"], case["head_dim"])
with open("test/fixtures/rope_inv_freq.json", "w") as f:
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "cases": cases}, f, indent=1)
print("wrote test/fixtures/rope_inv_freq.json")
