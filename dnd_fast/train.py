"""``dnd-fast train``: fit the hyper-conv decoder to (prompt batch -> LoRA checkpoint) pairs from a store.

Data, prepared once per run: every kept checkpoint of the training tasks as a flat LoRA buffer on
the device; per-token normalisation stats over all of them (the generator keeps them to turn its
outputs back into weights); per task, the frozen encoder's embeddings of up to ``max_prompts``
train prompts, cached in the store as safetensors so later runs skip the encoder.

A step draws, from a generator seeded by (seed, step) alone, ``batch_size`` samples of (task,
one of its checkpoints, ``num_prompts`` of its prompts). Targets are tokenized on the fly with the
fast tokenizer and the fixed stats. Loss: MSE over the real (unpadded) slots, each token weighted
by its std in parameter space (normalised to mean 1), so tokens that carry large weights count
more. Noise augmentation on condition and target, AdamW (fused on CUDA), warm-up then cosine,
grad clipping, accumulation, bf16 autocast, the decoder's plane kernels on Hopper (torch.compile on
older GPUs). Under ``torchrun`` each rank takes its slice of the global batch (DDP), so N ranks
compute what one process would.
Saves the generator and a resume state every ``save_every`` steps and at the end.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dnd_fast import decoder_fp8, distributed, io
from dnd_fast.collect import PROMPTS, load_checkpoints, load_store
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, plane_convs_run_on
from dnd_fast.encoder import PromptEncoder
from dnd_fast.generator import Generator
from dnd_fast.layout import LoRALayout
from dnd_fast.resume import load_state, open_log, read_log, save_state
from dnd_fast.tokenizer import STD_FLOOR, tokenize_flat

# (num_layers, kernel_size, max_channels) of DecoderConfig.for_layout; "paper" is the published cascade
DECODER_SIZES = {"tiny": (2, 3, 16), "small": (3, 5, 64), "medium": (4, 5, 512), "large": (6, 9, 1024)}


@dataclass
class TrainConfig:
    hold_out: list[str] = field(default_factory=list)
    encoder: str | None = None
    num_prompts: int = 64
    max_length: int = 64
    max_prompts: int = 512
    decoder: str = "medium"
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    clip: float = 1.0
    noise_condition: float = 1e-4
    noise_target: float = 1e-5
    seed: int = 0
    save_every: int = 200
    compile: bool | None = None  # None: on CUDA GPUs that the plane kernels do not serve (before Hopper)
    # train through e4m3's rounding (decoder_fp8.fp8_aware_forward), an experiment for precision fp8-fast: on two
    # held-out tasks it did not bring fp8-fast's NLL nearer bf16's (benchmarks/RESULTS.md, FP8)
    fp8_aware: bool = False
    log_every: int = 1

    def decoder_config(self, layout: LoRALayout, hidden: int) -> DecoderConfig:
        condition = (self.num_prompts, self.max_length, hidden)
        if self.decoder == "paper":
            paper = DecoderConfig.paper_qwen05()
            if paper.condition_shape != condition:
                raise ValueError(f"the paper decoder takes a {paper.condition_shape} condition; use --num-prompts 128 "
                                 f"--max-length 384 with a 384-wide encoder (got {condition})")
            return DecoderConfig(paper.features[:-1] + ((layout.num_tokens, *layout.token_shape),), 9)
        if self.decoder not in DECODER_SIZES:
            raise ValueError(f"unknown decoder size {self.decoder!r}; choose from {sorted(DECODER_SIZES) + ['paper']}")
        layers, k, channels = DECODER_SIZES[self.decoder]
        return DecoderConfig.for_layout(layout, condition, num_layers=layers, kernel_size=k, max_channels=channels)


class TrainingData:
    """Checkpoints as flat buffers, stats, per-token loss weights and cached prompt embeddings, on one device."""

    def __init__(self, store: Path, tasks: list[str], encoder: PromptEncoder, cfg: TrainConfig, device, *,
                 progress: bool = True):
        manifests = load_store(store, tasks)
        self.tasks = list(manifests)
        self.base_model = manifests[self.tasks[0]]["base_model"]
        self.lora_config = manifests[self.tasks[0]]["lora_config"]
        flats, self.ckpt_ranges, self.layout = [], [], None
        for name, manifest in manifests.items():
            if manifest["lora_config"] != self.lora_config or manifest["base_model"] != self.base_model:
                raise ValueError(f"store task {name!r} was collected with another base model or LoRA config than "
                                 f"{self.tasks[0]!r}; one generator serves one (base model, LoRA config)")
            ckpts = load_checkpoints(store, manifest)
            if not ckpts:
                raise ValueError(f"store task {name!r} has no checkpoints")
            self.layout = self.layout or LoRALayout.from_state_dict(ckpts[0])
            start = sum(f.shape[0] for f in flats)
            flats.append(self.layout.flatten(ckpts))
            self.ckpt_ranges.append((start, start + len(ckpts)))
        self.flat = torch.cat(flats).to(device)
        self.stats = self._stats(self.flat)
        std = self.stats[:, 1]
        self.token_weight = (std / std.mean()).to(device)
        self.mask = self.layout.mask(device)
        self.embeddings = [self._embeddings(store, name, encoder, cfg, device, progress) for name in self.tasks]

    def _stats(self, flat: torch.Tensor) -> torch.Tensor:
        """[T, 2] (mean, std) per token over every slot of every checkpoint."""
        # A few checkpoints at a time: only the scales are kept, not [K, T, h, w] tokens of every checkpoint.
        scales = torch.cat([tokenize_flat(chunk, self.layout)[1] for chunk in flat.split(16)])
        mean, std = scales[..., 0], scales[..., 1]
        global_mean = mean.mean(0)
        var = (std.square() + mean.square()).mean(0) - global_mean.square()
        return torch.stack([global_mean, var.clamp_min(0).sqrt().clamp_min(STD_FLOOR)], -1)

    @staticmethod
    def _embeddings(store: Path, task: str, encoder: PromptEncoder, cfg: TrainConfig, device, progress) -> torch.Tensor:
        prompts = io.read_json(store / task / PROMPTS)
        key = hashlib.sha1(json.dumps([str(encoder.name_or_path), cfg.max_length, cfg.max_prompts,
                                       cfg.seed]).encode()).hexdigest()[:10]
        cache = store / task / f"embeddings-{key}.safetensors"
        if cache.exists():
            return io.load_tensors(cache, device)["embeddings"]
        g = torch.Generator().manual_seed(cfg.seed)
        chosen = [prompts[i] for i in torch.randperm(len(prompts), generator=g)[:cfg.max_prompts].tolist()]
        if progress:
            print(f"dnd-fast train: encoding {len(chosen)} prompts of {task} (cached in {cache.name})", flush=True)
        emb = encoder.embed(chosen).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
        io.save_tensors(cache, {"embeddings": emb})
        return emb.to(device)

    def sample(self, step: int, batch: int, num_prompts: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(condition [B, N, L, C], checkpoint rows [B]) of step ``step``: a function of (seed, step) only."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        tasks = torch.randint(len(self.tasks), (batch,), generator=g).tolist()
        conditions, rows = [], []
        for t in tasks:
            lo, hi = self.ckpt_ranges[t]
            rows.append(int(torch.randint(lo, hi, (1,), generator=g)))
            n = self.embeddings[t].shape[0]
            idx = (torch.randperm(n, generator=g)[:num_prompts] if n >= num_prompts
                   else torch.randint(n, (num_prompts,), generator=g))
            conditions.append(self.embeddings[t][idx.to(self.embeddings[t].device)])
        return torch.stack(conditions), torch.tensor(rows, device=self.flat.device)


def weighted_masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        token_weight: torch.Tensor) -> torch.Tensor:
    w = mask * token_weight[:, None, None]
    return ((pred.float() - target).square() * w).sum() / (w.sum() * pred.shape[0])


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
LOG, SUMMARY = "train_log.jsonl", "train_summary.json"


def _tensorboard_writer(logdir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch's writer needs the tensorboard package
        raise ImportError(f"--tensorboard needs the tensorboard package ({exc}): pip install tensorboard") from None
    return SummaryWriter(str(logdir))


def train(store: str | Path, out: str | Path, cfg: TrainConfig, *, device=None, resume: bool | None = None,
          restart: bool = False, keep_state: bool = False, progress: bool = True, stop_after: int | None = None,
          tensorboard: str | Path | None = None) -> dict:
    """Train a generator on the store's tasks minus ``cfg.hold_out``; saves it to ``out``. Returns a summary.

    A run directory with a saved state resumes from it (``resume=True`` insists on one; ``restart`` discards
    it); a finished run is not trained over unless ``restart``. The resume state is dropped at the end unless
    ``keep_state``. ``tensorboard``: a log directory for TensorBoard scalars (loss, lr, step time,
    samples/s), besides the json-lines log that is always written."""
    from tqdm.auto import tqdm

    world = distributed.init(device)
    dev = world.device
    store, out = Path(store), Path(out)
    if cfg.batch_size % (world.size * cfg.grad_accum):
        raise ValueError(f"batch size {cfg.batch_size} must divide into {world.size} rank(s) x {cfg.grad_accum} "
                         "accumulation steps")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file: give a directory")
    saved = (out / STATE_JSON).exists()
    if resume and not saved:
        raise FileNotFoundError(f"--resume: {out / STATE_JSON} does not exist")
    if not saved and not restart and (out / SUMMARY).exists():
        raise ValueError(f"{out} holds a finished training run: pass --restart to train it again (replacing it), "
                         "or choose another --out")
    resume = saved and not restart
    groups = {name: m.get("group", name) for name, m in load_store(store).items()}  # entry -> its task
    unknown = [t for t in cfg.hold_out if t not in groups and t not in groups.values()]
    if unknown:
        raise ValueError(f"--hold-out {unknown[0]!r}: not a task of the store ({', '.join(sorted(set(groups.values())))})")
    tasks = [t for t, g in groups.items() if t not in cfg.hold_out and g not in cfg.hold_out]
    if not tasks:
        raise ValueError("no training tasks left after --hold-out")
    encoder = PromptEncoder(cfg.encoder, max_length=cfg.max_length, num_prompts=cfg.num_prompts)
    encoder.to(dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    data = TrainingData(store, tasks, encoder, cfg, dev, progress=progress and world.is_main)
    torch.manual_seed(cfg.seed)
    decoder = HyperConvDecoder(cfg.decoder_config(data.layout, encoder.hidden_size)).to(dev)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type == "cuda")
    params = dict(decoder.named_parameters())
    meta = load_state(out / STATE_TENSORS, out / STATE_JSON, params, opt) if resume else {}
    start, seconds_before = int(meta.get("step", 0)), float(meta.get("seconds", 0.0))
    model = decoder
    if world.size > 1:
        model = torch.nn.parallel.DistributedDataParallel(decoder, device_ids=[dev.index] if dev.type == "cuda" else None)
    # On Hopper the plane kernels run eagerly (torch.compile would trace the strided ones instead): an H100
    # training step of paper_qwen05() at batch 8 took 463 ms that way, 965 ms compiled (benchmarks/gpu_decoder.py --train-backends).
    use_compile = cfg.compile if cfg.compile is not None else dev.type == "cuda" and not plane_convs_run_on(dev)
    forward = torch.compile(model) if use_compile else model
    if cfg.fp8_aware:
        if world.size > 1 or use_compile:
            raise ValueError("fp8_aware training runs on one device, uncompiled")
        forward = functools.partial(decoder_fp8.fp8_aware_forward, decoder)
    out.mkdir(parents=True, exist_ok=True)
    log = open_log(out / LOG, start) if world.is_main else None
    board = _tensorboard_writer(tensorboard) if tensorboard is not None and world.is_main else None
    micro = cfg.batch_size // (world.size * cfg.grad_accum)
    num_params = sum(p.numel() for p in decoder.parameters())
    if world.is_main and progress:
        print(f"dnd-fast train: {len(tasks)} tasks ({', '.join(tasks)}), {data.flat.shape[0]} checkpoints, "
              f"{data.layout}; decoder {num_params:,} params {decoder.config.features}; {world.size} rank(s) on {dev}",
              flush=True)

    def save(step: int) -> None:
        if world.is_main:
            gen = Generator(encoder, decoder, data.layout, data.stats, data.base_model, data.lora_config)
            gen.save(out / "generator")
            save_state(out / STATE_TENSORS, out / STATE_JSON, params, opt,
                       {"step": step, "config": asdict(cfg), "seconds": seconds_before + time.perf_counter() - t_start})

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", dynamic_ncols=True,
               disable=not (progress and world.is_main))
    t_start, done = time.perf_counter(), start
    try:
        for step in bar:
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            condition, rows = data.sample(step, cfg.batch_size, cfg.num_prompts, cfg.seed)
            noise = torch.Generator(device=dev).manual_seed(cfg.seed * 1_000_003 + step)
            # noise for the whole global batch on every rank, so any split of it sees the same numbers
            cond_noise = cfg.noise_condition * torch.randn(condition.shape, generator=noise, device=dev)
            target_noise = cfg.noise_target * torch.randn((cfg.batch_size, *data.mask.shape), generator=noise, device=dev)
            total = torch.zeros((), device=dev)
            for a in range(cfg.grad_accum):
                lo = (world.rank * cfg.grad_accum + a) * micro
                cond = condition[lo:lo + micro].float() + cond_noise[lo:lo + micro]
                target, _ = tokenize_flat(data.flat[rows[lo:lo + micro]], data.layout, stats=data.stats)
                target = target + target_noise[lo:lo + micro] * data.mask
                sync = a == cfg.grad_accum - 1 or world.size == 1
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss = weighted_masked_mse(forward(cond), target, data.mask, data.token_weight) / cfg.grad_accum
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                if world.size > 1:
                    torch.distributed.all_reduce(total)
                    total /= world.size
                value = float(total)  # a host sync, once per logged step
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{value:.4f}", step_ms=f"{dt * 1e3:.0f}", samples_s=f"{cfg.batch_size / dt:.1f}",
                                refresh=False)
                record = {"loss": value, "lr": lr_at(step, cfg), "step_s": dt, "samples_per_s": cfg.batch_size / dt}
                if log:
                    log.write(json.dumps({"step": done, **record}) + "\n")
                    log.flush()
                if board:
                    for name, v in record.items():
                        board.add_scalar(f"train/{name}", v, done)
            if done % cfg.save_every == 0 or done == cfg.steps:
                save(done)
            if stop_after is not None and done - start >= stop_after and done < cfg.steps:
                save(done)
                break
    except KeyboardInterrupt:
        save(done)  # the steps done so far are kept: the next call resumes from them
        raise
    elapsed = seconds_before + time.perf_counter() - t_start
    if log:
        log.close()
    if board:
        board.close()
    world.barrier()
    losses = [r["loss"] for r in read_log(out / LOG)] if world.is_main else []  # every segment of the run
    summary = {"tasks": tasks, "hold_out": cfg.hold_out, "checkpoints": int(data.flat.shape[0]),
               "decoder_params": num_params, "steps": cfg.steps, "steps_done": done, "seconds": round(elapsed, 2),
               "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
               "generator": str(out / "generator")}
    if world.is_main:
        io.write_json(out / SUMMARY, summary)
        _plot_losses(out / "loss.png", out / LOG)
        if done == cfg.steps and not keep_state:  # the generator is saved; the state (optimizer moments) is not needed
            for name in (STATE_TENSORS, STATE_JSON):
                (out / name).unlink(missing_ok=True)
    return summary


def _plot_losses(png: Path, log: Path) -> None:
    plt = io.pyplot()
    if plt is None:
        return
    rows = read_log(log)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("weighted masked MSE")
    ax.set_yscale("log")
    ax.set_title("generator training loss")
    fig.tight_layout()
    io.save_figure(fig, png)
