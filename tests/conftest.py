import os

import pytest
import torch

# CI has no GPU: Triton kernels run under the interpreter there. Must precede any triton import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# References are compared in true fp32: cuDNN's default TF32 convs are ~1e-4 off.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

from peft import LoraConfig  # noqa: E402
from transformers import LlamaConfig, Qwen2Config  # noqa: E402

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_config(family: str):
    """2 layers, hidden 64: random-weight test models built in code, no downloads."""
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family)).eval()


def lora_config(r=8, modules=ALL_MODULES):
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(modules),
                      task_type="CAUSAL_LM")


def qwen05_config():
    """Qwen2.5-0.5B's shapes (24 layers, hidden 896, intermediate 4864, kv 128): the published layout."""
    return Qwen2Config(vocab_size=1024, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512)


def random_lora_state_dict(layout, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02 + 0.003).to(device=device, dtype=dtype)
            for k, s in layout.tensors}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the lent GPU)")


def reseed():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = torch.seed() % 2**31
    torch.manual_seed(seed)
    print(f"seed={seed}")
    return seed
