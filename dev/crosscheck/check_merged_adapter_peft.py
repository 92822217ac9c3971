"""peft loads ./merge's adapter onto exactly the modules it holds.

./merge writes a merged adapter's target_modules as full module names
("model.layers.0.self_attn.q_proj"): leaf names ("q_proj") would select every
layer's, more than an input adapting some layers (peft's layers_to_transform)
holds (peft would then add LoRA layers without weights, and our loader refuse
the adapter). This makes such an input with peft on the serve fixture model (2
layers; q, v and down of layer 0, B random), merges it with itself by ./merge
--method cat --weights 1,0.5, loads both in peft and checks that
merge_and_unload changes the same weights, the merged one by 1.5 times the
original's delta.

    make merge && python3 dev/crosscheck/check_merged_adapter_peft.py
"""
import json
import os
import subprocess
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model, PeftModel
base_dir = "test/fixtures/serve/model"
work = tempfile.mkdtemp(prefix="qlora_merged_adapter_")
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[0])
pm = get_peft_model(m, cfg)
for n, p in pm.named_parameters():
    if "lora_B" in n: torch.nn.init.normal_(p, std=0.05)
pm.save_pretrained(os.path.join(work, "layer0"))
def merged_delta(adapter):
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    return {k: v - ref[k] for k, v in merged.state_dict().items() if (v - ref[k]).abs().max() > 0}
r = subprocess.run(["./merge", "--method", "cat", "--weights", "1,0.5", "--out", os.path.join(work, "cat"), os.path.join(work, "layer0"), os.path.join(work, "layer0")], capture_output=True, text=True)
print(r.stdout[-400:], r.stderr[-400:])
print(json.load(open(os.path.join(work, "cat", "adapter_config.json")))["target_modules"])
d0, d1 = merged_delta(os.path.join(work, "layer0")), merged_delta(os.path.join(work, "cat"))
print("modules changed: original", sorted(d0), "\n merged", sorted(d1))
assert sorted(d0) == sorted(d1)
err = max(((d1[k] - 1.5 * d0[k]).abs().max() / d0[k].abs().max()).item() for k in d0)
print("max relative |delta_merged - 1.5 delta_original|: %.2e" % err)
assert err < 1e-5
print("OK: peft applies ./merge's cat adapter to exactly the original modules, 1.5 x the delta")
