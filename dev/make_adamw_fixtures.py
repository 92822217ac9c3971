#!/usr/bin/env python3
"""Writes test/fixtures/adamw_reference.json, the reference for test/test_adamw.cpp.

Regenerate (from the repository root, CPU only, a second):

    pip install torch transformers
    python3 dev/make_adamw_fixtures.py

Made with torch 2.15 and transformers 5.24 (the versions are stored in the
file). Everything is float32 on the CPU, and every hyperparameter handed to
torch is first rounded to float32, so that torch and our float AdamWConfig
start from the same numbers. Floats are written with repr(), which reads back
exactly.

  adamw     cases of torch.optim.AdamW(foreach=False) run for 5 steps on a
            random vector with given gradients and a different lr each step:
            {"name", "lr"[steps], "beta1", "beta2", "eps", "weight_decay",
             "params0", "grads"[steps][n], "params"[steps][n] (after each
             step), "exp_avg", "exp_avg_sq" (after the last step)}
  schedule  {"max_lr", "min_lr_frac", "warmup_steps", "total_steps",
             "lr"[total_steps]: the lr used at steps 0..total_steps-1 by
             transformers' get_cosine_with_min_lr_schedule_with_warmup_lr_rate
             (lr_scheduler_type "cosine_warmup_with_min_lr"),
             "lr_cosine_with_min_lr"[total_steps + 1]: steps 0..total_steps of
             get_cosine_with_min_lr_schedule_with_warmup ("cosine_with_min_lr"),
             which is the same schedule one step earlier: warmup step/W, not
             (step+1)/W}
  warmup    TrainingArguments.get_warmup_steps: {"warmup", "total_steps", "steps"}
  clip      torch.nn.utils.clip_grad_norm_ over three tensors:
            {"max_norm", "grads"[3][...], "total_norm", "clipped"[3][...]}
"""
import json
import types
import warnings

import numpy as np
import torch
import transformers
from transformers import TrainingArguments
from transformers.optimization import (get_cosine_with_min_lr_schedule_with_warmup,
                                       get_cosine_with_min_lr_schedule_with_warmup_lr_rate)

OUT = "test/fixtures/adamw_reference.json"
N_PARAMS = 12
N_STEPS = 5


def f32(x):
    """x rounded to float32, as a Python float (exact)."""
    return float(np.float32(x))


def floats(tensor):
    return [float(x) for x in tensor.detach().flatten().tolist()]


def adamw_case(name, lrs, beta1, beta2, eps, weight_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    params0 = torch.randn(N_PARAMS, generator=gen)
    grads = [torch.randn(N_PARAMS, generator=gen) * 10.0 ** (step - 2) for step in range(N_STEPS)]
    for g in grads:
        g[0] = 0.0    # a parameter that never gets a gradient: only decay moves it
        g[1] *= 1e3   # a large gradient next to small ones
    lrs = [f32(lr) for lr in lrs]
    beta1, beta2, eps, weight_decay = f32(beta1), f32(beta2), f32(eps), f32(weight_decay)

    param = torch.nn.Parameter(params0.clone())
    opt = torch.optim.AdamW([param], lr=lrs[0], betas=(beta1, beta2), eps=eps,
                            weight_decay=weight_decay, foreach=False)
    after = []
    for step in range(N_STEPS):
        opt.param_groups[0]["lr"] = lrs[step]
        param.grad = grads[step].clone()
        opt.step()
        after.append(floats(param))
    state = opt.state[param]
    return {"name": name, "lr": lrs, "beta1": beta1, "beta2": beta2, "eps": eps,
            "weight_decay": weight_decay, "params0": floats(params0),
            "grads": [floats(g) for g in grads], "params": after,
            "exp_avg": floats(state["exp_avg"]), "exp_avg_sq": floats(state["exp_avg_sq"])}


def schedule_values(make_schedule, max_lr, min_lr_frac, warmup_steps, total_steps, n_values):
    """The lr of steps 0..n_values-1, stepping the scheduler as a training loop does."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=max_lr)
    sched = make_schedule(opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                          min_lr_rate=min_lr_frac)
    lrs = []
    for _ in range(n_values):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def schedule_case(max_lr, min_lr_frac, warmup_steps, total_steps):
    max_lr, min_lr_frac = f32(max_lr), f32(min_lr_frac)
    args = (max_lr, min_lr_frac, warmup_steps, total_steps)
    return {"max_lr": max_lr, "min_lr_frac": min_lr_frac, "warmup_steps": warmup_steps,
            "total_steps": total_steps,
            "lr": schedule_values(get_cosine_with_min_lr_schedule_with_warmup_lr_rate, *args, total_steps),
            "lr_cosine_with_min_lr": schedule_values(get_cosine_with_min_lr_schedule_with_warmup, *args,
                                                     total_steps + 1)}


def warmup_case(warmup, total_steps):
    args = types.SimpleNamespace(warmup_steps=warmup)
    return {"warmup": warmup, "total_steps": total_steps,
            "steps": TrainingArguments.get_warmup_steps(args, total_steps)}


def clip_case(max_norm, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(shape, generator=gen) * scale for shape in ((7, 5), (64,), (3, 3, 3))]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    return {"max_norm": f32(max_norm), "grads": [floats(g) for g in grads],
            "total_norm": float(total_norm), "clipped": [floats(p.grad) for p in params]}


def main():
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    lrs = [1e-3, 2e-3, 3e-3, 2.5e-3, 1e-3]
    out = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "adamw": [
            adamw_case("weight_decay_0.1", lrs, 0.9, 0.999, 1e-8, 0.1, seed=1),
            adamw_case("weight_decay_0", lrs, 0.9, 0.999, 1e-8, 0.0, seed=2),
            adamw_case("betas_0.8_0.95_eps_1e-6", [0.05, 0.02, 0.01, 0.01, 0.005], 0.8, 0.95, 1e-6, 0.01, seed=3),
        ],
        "schedule": [
            schedule_case(2e-4, 0.1, 5, 20),
            schedule_case(1e-3, 0.0, 0, 8),
            schedule_case(3e-4, 0.05, 3, 4),
        ],
        "warmup": [warmup_case(w, t) for w, t in
                   ((0.1, 100), (0.1, 95), (0.1, 30), (0.05, 7), (0.0, 50), (0.5, 1), (5, 100), (2.7, 100), (1, 10))],
        "clip": [clip_case(1.0, 1.0, seed=4), clip_case(1.0, 0.01, seed=5), clip_case(0.5, 3.0, seed=6)],
    }
    with open(OUT, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {OUT}")
    for case in out["clip"]:
        print(f"clip: max_norm {case['max_norm']} total_norm {case['total_norm']:.6g}")


if __name__ == "__main__":
    main()
