"""Generator (encoder + decoder + layout + normalisation stats) and ``generate()``: prompts in, LoRA out.

On disk a generator is a directory of two files, written atomically:
``generator.json`` (encoder name, decoder config, LoRA layout, base model, LoRA config) and
``generator.safetensors`` (decoder weights and the per-token (mean, std) ``stats``). The prompt
encoder is a frozen public model and is referenced by name or path, not copied.

The generate path runs on the device end to end (tokenized prompts -> encoder -> decoder ->
detokenize) and syncs once, when the flat LoRA buffer is copied to the host. On CUDA it is
captured once per batch size and trimmed prompt length (PromptEncoder.tokenize) as a CUDA graph
after a warm-up, so a call is one graph replay.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dnd_fast import decoder_fp8, io, paths
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, nvtx_range, plane_convs_run_on
from dnd_fast.encoder import PromptEncoder, check_prompt_sets, select_prompts
from dnd_fast.layout import LoRALayout, lora_config_dict, make_lora_config
from dnd_fast.tokenizer import detokenize_flat

FORMAT = "dnd_fast.generator"
CONFIG_FILE, WEIGHTS_FILE = "generator.json", "generator.safetensors"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
# the decoder's precision at inference -> its kernel paths (dnd_fast.paths). "fp8-fast": every layer's convs on
# e4m3 planes and weights; "fp8": the same with the first and last layers in bf16, which keeps the held-out NLL
# within 0.25% of bf16's on nine trained generators (fp8-fast: up to 1.7% off), their wide convs by FFT (bf16's
# rounding: within 0.21% on the same nine tasks, 25% less time a batch of 8 than direct ends; RESULTS.md, FP8)
PRECISION_PATHS = {"bf16": {}, "fp8": {"fp8": True, "fp8_bf16_layers": (0, -1), "fft_convs": True},
                   "fp8-fast": {"fp8": True}}
PRECISIONS = tuple(PRECISION_PATHS)


class Generator(nn.Module):
    def __init__(self, encoder: PromptEncoder, decoder: HyperConvDecoder, layout: LoRALayout, stats: torch.Tensor,
                 base_model: str, lora_config: dict):
        super().__init__()
        if decoder.config.condition_shape != encoder.condition_shape:
            raise ValueError(f"decoder expects a condition {decoder.config.condition_shape}, the encoder gives "
                             f"{encoder.condition_shape} (num_prompts, max_length, hidden)")
        if decoder.config.output_shape != (layout.num_tokens, *layout.token_shape):
            raise ValueError(f"decoder output {decoder.config.output_shape} does not match the layout's "
                             f"{(layout.num_tokens, *layout.token_shape)}")
        if tuple(stats.shape) != (layout.num_tokens, 2):
            raise ValueError(f"stats must be [{layout.num_tokens}, 2], got {list(stats.shape)}")
        self.encoder, self.decoder, self.layout = encoder, decoder, layout
        self.register_buffer("stats", stats.float().clone())
        self.base_model = str(base_model)
        self.lora_config = lora_config_dict(lora_config)
        self._graphs: dict[tuple[tuple[int, ...], paths.Paths], _GraphedCall] = {}
        self.use_cuda_graphs = True
        self.precision = "bf16"  # of the decoder at inference; set_precision("fp8" or "fp8-fast"): e4m3 on Hopper

    # ---- persistence ------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "base_model": self.base_model, "lora_config": self.lora_config,
                "layout": self.layout.to_dict(), "decoder": self.decoder.config.to_dict(),
                "encoder": {"name_or_path": self.encoder.name_or_path, "max_length": self.encoder.max_length,
                            "num_prompts": self.encoder.num_prompts}}

    def save(self, directory: str | Path, *, overwrite: bool = False) -> None:
        """Writes the directory atomically; refuses one holding files of its own unless ``overwrite``."""
        tensors = {f"decoder.{k}": v.float() for k, v in self.decoder.state_dict().items()}
        tensors["stats"] = self.stats
        with io.atomic_dir(directory, {CONFIG_FILE, WEIGHTS_FILE}, overwrite=overwrite, what="generator") as tmp:
            io.write_json(tmp / CONFIG_FILE, self.config_dict())
            io.save_tensors(tmp / WEIGHTS_FILE, tensors, {"format": FORMAT})

    @classmethod
    def load(cls, directory: str | Path, *, device=None, dtype: torch.dtype | None = None) -> Generator:
        """Load a saved generator; on CUDA the weights default to bf16 (inference)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"generator directory {str(directory)!r} does not exist")
        cfg = io.read_json(directory / CONFIG_FILE)
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{directory / CONFIG_FILE} is not a dnd_fast generator config")
        try:
            layout = LoRALayout.from_dict(cfg["layout"])
            dcfg = DecoderConfig.from_dict(cfg["decoder"])
            enc = cfg["encoder"]
            encoder = PromptEncoder(enc["name_or_path"], max_length=enc["max_length"], num_prompts=enc["num_prompts"])
        except KeyError as exc:
            raise ValueError(f"{directory / CONFIG_FILE} lacks {exc}") from None
        tensors = io.load_tensors(directory / WEIGHTS_FILE)
        with torch.device("meta"):
            decoder = HyperConvDecoder(dcfg)
        expected = {f"decoder.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()}
        expected["stats"] = (layout.num_tokens, 2)
        for key, shape in expected.items():
            if key not in tensors or tuple(tensors[key].shape) != shape:
                found = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ValueError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: {key} expected {shape}, "
                                 f"found {found}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: unexpected tensor {extra[0]}")
        decoder = decoder.to_empty(device="cpu")
        decoder.load_state_dict({k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")})
        gen = cls(encoder, decoder, layout, tensors["stats"], cfg["base_model"], cfg["lora_config"])
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return gen.for_inference(device, dtype)

    def for_inference(self, device, dtype: torch.dtype | None = None) -> Generator:
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.encoder.to(device=device, dtype=dtype)
        self.decoder.to(device=device, dtype=dtype)
        self.stats = self.stats.to(device)  # stays fp32
        self._graphs.clear()
        decoder_fp8.reset(self.decoder)  # scales live on the old device; the next fp8 call sets them again
        return self.eval().requires_grad_(False)

    def set_precision(self, precision: str) -> Generator:
        """"bf16" (the default), "fp8" or "fp8-fast" (``PRECISION_PATHS``): the decoder's convs on e4m3 planes and
        weights (Hopper GPUs; per-plane scales set from the next call's prompts, see decoder_fp8.py); "fp8" keeps
        the first and last layers in bf16, their wide convs by FFT."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
        if precision != "bf16" and not plane_convs_run_on(self.device):
            raise ValueError(f"precision {precision} needs a Hopper GPU (H100, H200) for the e4m3 plane kernels; the generator "
                             f"is on {self.device}" + (f" ({torch.cuda.get_device_name(self.device)})"
                                                       if self.device.type == "cuda" else ""))
        if precision != self.precision:
            decoder_fp8.reset(self.decoder)
            self._graphs.clear()
            self.precision = precision
        return self

    # ---- generation -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.stats.device

    def _pipeline(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B*N, L] token ids -> [B, P] fp32 flat LoRA buffer, all on the device."""
        n, length, hidden = self.encoder.condition_shape
        batch = input_ids.shape[0] // n
        with nvtx_range("generate.encoder", self.device):
            condition = self.encoder.embed_ids(input_ids, attention_mask).view(batch, n, length, hidden)
        tokens = self.decode(condition)
        with nvtx_range("generate.detokenize", self.device):
            return detokenize_flat(tokens, self.stats, self.layout)

    def decode(self, condition: torch.Tensor) -> torch.Tensor:
        """The decoder on ``condition`` [B, N, L, H] at this generator's precision (its paths) -> tokens."""
        fp8 = self.precision != "bf16"
        with paths.use(**PRECISION_PATHS[self.precision]):  # e4m3: only the plane kernels (a CPU: the interpreter's)
            return self.decoder(condition, backend="triton" if fp8 else None)

    def _host_tokens(self, prompt_sets: list[list[str]], seed: int) -> torch.Tensor:
        """The host stage: each set's prompts chosen, then [2, B*N, L] ids and mask on the host."""
        texts = [p for s in prompt_sets for p in select_prompts(s, self.encoder.num_prompts, seed)]
        return self.encoder.tokens_on_host(texts, trim=True)

    @torch.no_grad()
    def generate_flat(self, prompt_sets: list[list[str]], seed: int = 0) -> torch.Tensor:
        """[B, P] flat LoRA buffers on the device, one row per prompt set."""
        return self._launch(self._host_tokens(prompt_sets, seed))

    def _launch(self, host_tokens: torch.Tensor) -> torch.Tensor:
        """[2, B*N, L] host ids and mask -> the device's [B, P] flat buffer; on CUDA the kernels are queued,
        not waited for."""
        if self.device.type == "cuda":  # pinned: the copy is queued, not waited for (a pageable one syncs)
            host_tokens = host_tokens.pin_memory()
        ids, mask = host_tokens.to(self.device, non_blocking=True)
        if self.device.type != "cuda" or not self.use_cuda_graphs:
            return self._pipeline(ids, mask)
        # batch x prompts, the trimmed length, and the caller's paths: a graph replays the kernels it was captured on
        key = (tuple(ids.shape), paths.current())
        if key not in self._graphs:
            try:
                self._graphs[key] = _GraphedCall(self._pipeline, ids, mask)
            except Exception as exc:  # capture is an optimisation: fall back to eager, say so once
                warnings.warn(f"dnd_fast: CUDA graph capture failed ({exc}); generating eagerly", RuntimeWarning)
                self.use_cuda_graphs = False
                return self._pipeline(ids, mask)
        return self._graphs[key](ids, mask)

    def generate_to_host(self, prompt_sets: list[list[str]], seed: int = 0) -> torch.Tensor:
        """[B, P] flat LoRA buffers in host memory (pinned when generated on a GPU). The one host sync."""
        return _wait(*_copy_out(self.generate_flat(prompt_sets, seed)))

    @torch.no_grad()
    def generate_stream(self, prompt_sets: list[list[str]], seed: int = 0, batch_size: int = 8):
        """Yields [b, P] host flat buffers, ``batch_size`` prompt sets at a time, in order. On a GPU the host's
        work on one batch (choosing and tokenising its prompts; the caller's use of the batch before) runs while
        the GPU works on the batch before it: a batch is queued, then the previous one is waited for."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pending = None
        for start in range(0, len(prompt_sets), batch_size):
            queued = _copy_out(self._launch(self._host_tokens(prompt_sets[start:start + batch_size], seed)))
            if pending is not None:
                yield _wait(*pending)
            pending = queued
        if pending is not None:
            yield _wait(*pending)

    def make_adapters(self, flat: torch.Tensor) -> list[GeneratedAdapter]:
        config = make_lora_config(self.lora_config)
        return [GeneratedAdapter(sd, config, self.layout, self.base_model) for sd in self.layout.unflatten(flat)]


def _copy_out(flat: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A GPU's ``flat`` queued for a copy into pinned host memory behind its kernels (a pageable copy of a
    17.6 MB Qwen2.5-0.5B LoRA costs ~9 ms, a pinned one under 1 ms), with the event that marks the copy done;
    elsewhere ``flat`` itself. The copy runs on a side stream from a snapshot (``flat`` may be a CUDA graph's
    output, which the next batch rewrites), so the next batch's kernels do not wait for the PCIe transfer."""
    if flat.device.type != "cuda":
        return flat, None
    snapshot = flat.clone()
    side = _copy_stream(flat.device)
    side.wait_stream(torch.cuda.current_stream(flat.device))
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
    with torch.cuda.stream(side):
        host.copy_(snapshot, non_blocking=True)
    snapshot.record_stream(side)  # its memory is not reused before the copy has read it
    done = torch.cuda.Event()
    done.record(side)
    return host, done


@functools.cache
def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _wait(host: torch.Tensor, done) -> torch.Tensor:
    if done is not None:
        done.synchronize()
    return host


class _GraphedCall:
    """``fn(ids, mask)`` captured as a CUDA graph over static input buffers."""

    def __init__(self, fn, ids: torch.Tensor, mask: torch.Tensor):
        self.ids, self.mask = ids.clone(), mask.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles Triton kernels, fills weight caches, picks cuDNN algorithms
                fn(self.ids, self.mask)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.ids, self.mask)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.mask.copy_(mask)
        self.graph.replay()
        return self.out


class GeneratedAdapter:
    """One generated LoRA: PEFT state dict + config; loads with ``PeftModel.from_pretrained`` once saved."""

    def __init__(self, state_dict: dict[str, torch.Tensor], peft_config, layout: LoRALayout, base_model: str):
        self._state_dict = state_dict
        self.peft_config = peft_config
        self.peft_config.base_model_name_or_path = base_model
        self.layout = layout
        self.base_model = base_model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state_dict)

    def __repr__(self) -> str:
        return f"GeneratedAdapter(base_model={self.base_model!r}, {len(self._state_dict)} tensors, {self.layout!r})"

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False) -> None:
        """``adapter_config.json`` + ``adapter_model.safetensors``, written atomically. An earlier adapter
        there is replaced; a file, or a directory holding anything else, only with ``overwrite=True``."""
        with io.atomic_dir(directory, ADAPTER_FILES, overwrite=overwrite, what="adapter directory") as tmp:
            self.peft_config.save_pretrained(str(tmp))
            io.save_tensors(tmp / "adapter_model.safetensors", self._state_dict, {"format": "pt"})

    def check_model(self, model) -> None:
        found = LoRALayout.from_model(model, self.peft_config, self.layout.token_shape)
        if found != self.layout:
            name = getattr(model.config, "_name_or_path", "") or type(model).__name__
            raise ValueError(f"this adapter was generated for base model {self.base_model!r} ({self.layout}); "
                             f"{name!r} gives {found} under the same LoRA config: use a generator trained for it")

    def apply(self, model, adapter_name: str = "default"):
        """Wrap ``model`` (a transformers causal LM) in a ``PeftModel`` carrying this adapter."""
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        base = model.get_base_model() if isinstance(model, PeftModel) else model
        self.check_model(base)
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, self.peft_config)
            peft_model = model
        else:
            peft_model = get_peft_model(model, self.peft_config, adapter_name=adapter_name)
        device = next(base.parameters()).device
        set_peft_model_state_dict(peft_model, {k: v.to(device) for k, v in self._state_dict.items()},
                                  adapter_name=adapter_name)
        peft_model.set_adapter(adapter_name)
        return peft_model


@functools.lru_cache(maxsize=4)
def _cached_generator(directory: str, version: tuple, device: str, dtype: torch.dtype | None) -> Generator:
    return Generator.load(directory, device=device, dtype=dtype)


def _version(directory: Path) -> tuple:
    """Changes when the generator directory is saved again, so a re-saved generator is re-loaded."""
    return tuple((directory / f).stat().st_mtime_ns if (directory / f).exists() else None
                 for f in (CONFIG_FILE, WEIGHTS_FILE))


def load_generator(generator, *, device=None, dtype: torch.dtype | None = None) -> Generator:
    """A :class:`Generator`, from one or a directory (loaded once per process, then reused)."""
    if isinstance(generator, Generator):
        return generator
    if not isinstance(generator, (str, Path)):
        raise TypeError(f"generator must be a Generator or a directory, got {type(generator).__name__}")
    device = str(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    directory = Path(generator).resolve()
    return _cached_generator(str(directory), _version(directory), device, dtype)


def generate(prompts: Sequence[str] | Sequence[Sequence[str]], generator, *, device=None,
             seed: int = 0, precision: str = "bf16", batch_size: int = 8) -> GeneratedAdapter | list[GeneratedAdapter]:
    """Unlabeled prompts of a task -> a LoRA adapter for the generator's base model.

    ``prompts``: a list of strings (one task -> one adapter) or a list of lists (many tasks ->
    a list of adapters, ``batch_size`` tasks per batched pass; on a GPU the host's work on one batch
    overlaps the GPU's on the one before, see :meth:`Generator.generate_stream`). ``generator``: a
    :class:`Generator` or a directory saved by :meth:`Generator.save`. ``precision``: "bf16", or on a Hopper GPU
    "fp8" or "fp8-fast" (:meth:`Generator.set_precision`; the scales come from the first fp8 call's prompts).
    """
    sets, single = check_prompt_sets(prompts)
    gen = load_generator(generator, device=device).set_precision(precision)
    adapters = [a for flat in gen.generate_stream(sets, seed, batch_size) for a in gen.make_adapters(flat)]
    return adapters[0] if single else adapters
