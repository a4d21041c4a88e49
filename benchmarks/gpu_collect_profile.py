"""Where a collect step's time goes on the GPU: data, forward, backward, optimizer (20 steps).
Run: python benchmarks/gpu_collect_profile.py TASK_DIR TASK"""
import sys
import time

import torch
from peft import get_peft_model

from dnd_fast.collect import CollectConfig, batch_indices, encode_example, pad_batch
from dnd_fast.data import load_tasks
from dnd_fast.models import load_base

task = load_tasks(sys.argv[1], [sys.argv[2]])[sys.argv[2]]
cfg = CollectConfig()
model, tok = load_base(None, device="cuda")
model = get_peft_model(model, cfg.lora_config())
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
items = task.split("train")
totals = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
for step in range(25):
    t0 = time.perf_counter()
    batch = pad_batch([encode_example(tok, items[i], cfg.max_length) for i in batch_indices(step, len(items), 8, 0)],
                      tok.pad_token_id, "cuda")
    torch.cuda.synchronize(); t1 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
    torch.cuda.synchronize(); t2 = time.perf_counter()
    loss.backward()
    torch.cuda.synchronize(); t3 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(); t4 = time.perf_counter()
    if step >= 5:
        for k, v in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[k] += v / 20
print({k: f"{v * 1e3:.1f} ms" for k, v in totals.items()}, "tokens", tuple(batch["input_ids"].shape),
      "dtype", next(model.parameters()).dtype)
