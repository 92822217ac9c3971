"""The PyTorch side of the trainer benchmark: HF transformers + peft LoRA on a
random-weight Llama-family model of the same shape, batch, sequence length,
rank and targets as dev/bench_train.cu, on the same GPU.

  python3 dev/bench_hf_peft.py --shape smollm2-135m --batch 8 --seq 512 --recompute 1

The base is bf16 (bitsandbytes, for NF4, is not installed on the GPU machines
here), LoRA weights fp32 under bf16 autocast, torch AdamW (fused), SDPA
attention, gradient checkpointing with --recompute 1. Prints one line:
tokens per second, ms per step and peak GPU memory (torch.cuda.max_memory_allocated).
"""
import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=100000.0,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         tie_word_embeddings=False),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m", choices=SHAPES)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--recompute", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    config = LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, **SHAPES[args.shape])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    if args.recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()   # fp32 master weights, as ours
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    timed = 0.0
    for step in range(args.steps + 2):   # two warm-up steps
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            timed += time.perf_counter() - t0
    tok_per_s = args.batch * args.seq * args.steps / timed
    print(f"hf+peft | {args.shape} | bf16 | batch {args.batch} seq {args.seq} rank {args.rank} "
          f"recompute {args.recompute} | {tok_per_s:.0f} tok/s | {1000 * timed / args.steps:.1f} ms/step | "
          f"peak mem {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
