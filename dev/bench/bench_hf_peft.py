"""The PyTorch side of the trainer benchmark: HF transformers + peft LoRA on a
random-weight Llama-family model of the same shape, batch, sequence length,
rank and targets as dev/bench/bench_train.cu, on the same GPU.

  python3 dev/bench/bench_hf_peft.py --shape smollm2-135m --batch 8 --seq 512 --recompute 1
  python3 dev/bench/bench_hf_peft.py --model models/random-llama-3.2-1b --batch 4 --seq 512

--model DIR loads an HF directory (e.g. the random model `./build/bench_train
--shape S --save DIR` writes), so both trainers run on the same file;
without it the model is built here from the shape with torch's random init.

On the GPU the base is bf16 (bitsandbytes, for NF4, is not installed on the
GPU machines here), LoRA weights fp32 under bf16 autocast, torch AdamW
(fused), SDPA attention, gradient checkpointing with --recompute 1. Prints one
line: tokens per second, ms per step and peak GPU memory
(torch.cuda.max_memory_allocated). With --device cpu everything is fp32 on
all cores (the comparison for our CPU reference path, ./build/bench_train --device cpu).
"""
import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from model_shapes import SHAPES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="smollm2-135m", choices=SHAPES)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--recompute", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", default=None, help="an HF model directory instead of --shape")
    args = ap.parse_args()
    on_gpu = args.device == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32

    torch.manual_seed(0)
    if args.model:
        model = LlamaForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").to(args.device)
        config = model.config
        args.shape = args.model
    else:
        config = LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, **SHAPES[args.shape])
        config._attn_implementation = "sdpa"
        with torch.device(args.device):
            model = LlamaForCausalLM(config).to(dtype)
    if args.recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()   # fp32 master weights, as ours
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=on_gpu)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=args.device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    warmup = 2 if on_gpu else 1
    timed = 0.0
    for step in range(args.steps + warmup):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=on_gpu):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= warmup:
            timed += time.perf_counter() - t0
    tok_per_s = args.batch * args.seq * args.steps / timed
    memory = f" | peak mem {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if on_gpu else ""
    print(f"hf+peft | {args.shape} | {'bf16' if on_gpu else 'fp32'} | {args.device} | batch {args.batch} "
          f"seq {args.seq} rank {args.rank} recompute {args.recompute} | {tok_per_s:.1f} tok/s | "
          f"{1000 * timed / args.steps:.0f} ms/step{memory}")


if __name__ == "__main__":
    main()
