"""Where generate()'s time goes at batch 1 (paper_qwen05 decoder + MiniLM): torch.profiler's top ops.
Run: python benchmarks/gpu_generate_profile.py"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import qwen05_lora  # noqa: E402

from dnd_fast import DecoderConfig, Generator, HyperConvDecoder, PromptEncoder  # noqa: E402

layout, lora = qwen05_lora()
gen = Generator(PromptEncoder(max_length=384, num_prompts=128), HyperConvDecoder(DecoderConfig.paper_qwen05()), layout,
                torch.ones(layout.num_tokens, 2), "shapes", lora).for_inference("cuda")
gen.use_cuda_graphs = False
sets = [[f"Question {i}: which answer is the most likely? A: x B: y" for i in range(128)]]
for _ in range(3):
    gen.generate_flat(sets).cpu()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as p:
    gen.generate_flat(sets).cpu()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
