"""Tile sizes and heuristics of every conv kernel, and the first-call timing that picks among them.

Heuristic block shapes come from searches on an H100 (benchmarks/gpu_convs.py, gpu_plane.py --search,
gpu_train_convs.py). ``pick`` is the one place a conv's tiling is decided: ``TUNE`` switches the first-call timing on
(the default) or off (tests); what it chose per shape is in ``CHOSEN``, and in a file per GPU model (``choose``) for
later processes.
"""
import contextlib
import functools
import json
import os
import warnings
from pathlib import Path

import torch
import triton

from .common import FP8, block, channel_pad, ieee, interpreted, round_up


def conv_meta(CIN, COUT, dtype, window_ok=False):
    """Block shapes and K loop for one conv (measured on an H100: benchmarks/gpu_convs.py).
    ``window_ok``: the input's q stride equals C_in (see K_LOOP 2)."""
    thin = 2 if window_ok else 1
    if interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "K_LOOP": thin if CIN < 16 else 0, "num_warps": 1}
    if ieee(dtype):  # fp32 tiles: half the shared memory per element budget
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "K_LOOP": thin if CIN < 32 else 0, "num_warps": 4,
                "num_stages": 2}
    if CIN <= 32:  # 64 x 64 tiles beat N = 16 even for 10 output channels
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "K_LOOP": thin, "num_warps": 4, "num_stages": 3}
    block_n = block(COUT, 32, 256)
    if block_n == 32:
        return {"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 4,
                "num_stages": 1 if CIN <= 64 else 4}
    if block_n == 64:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": block_n, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 8, "num_stages": 3}


def wgrad_meta(CIN, COUT, dtype):
    if interpreted():
        return {"BLOCK_CI": 16, "BLOCK_CO": 16, "BLOCK_K": 16, "num_warps": 1}
    if ieee(dtype):
        return {"BLOCK_CI": 64, "BLOCK_CO": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    bci, bco = block(CIN), block(COUT)
    warps = 8 if bci * bco >= 128 * 128 else 4
    return {"BLOCK_CI": bci, "BLOCK_CO": bco, "BLOCK_K": 64, "num_warps": warps, "num_stages": 3}


def plane_meta(CIN, COUT, dtype):
    """Block shapes for ``conv2d_plane`` (from a search on an H100: benchmarks/gpu_plane.py --search).
    WINDOW whenever the channels do not fill whole K blocks: a tap row's (j, channel) pairs then
    round up once, not once per tap. A_PTR: see ``_plane_tile``."""
    if interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "WINDOW": CIN % 16 != 0, "num_warps": 1}
    if ieee(dtype):  # fp32 tiles: twice the shared memory per element
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "WINDOW": CIN % 32 != 0, "num_warps": 4,
                "num_stages": 2}
    window = CIN % 64 != 0
    if COUT <= 64 and CIN <= 32:  # a tap's channels in one K block: 16 or 32, no window
        return {"BLOCK_M": 256, "BLOCK_N": block(COUT, 16, 64), "BLOCK_K": block(CIN, 16, 32), "WINDOW": False,
                "A_PTR": True, "num_warps": 4, "num_stages": 3}
    if COUT <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": block(COUT, 16, 64), "BLOCK_K": 64, "WINDOW": window, "num_warps": 4,
                "num_stages": 4}
    if COUT <= 128 or round_up(COUT, 128) < round_up(COUT, 256):  # 256-wide N tiles would waste more
        return {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "WINDOW": window, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "WINDOW": window, "num_warps": 8, "num_stages": 3}


def forward_weight_layout(cout):
    """The weight layout inference packs for a conv with ``cout`` output channels: 0 (``pack_weight_plane``)
    where ``cout`` is a multiple of 256, else 1 (its ``out_major`` form, whose [N, 64] weight tiles are one
    128-byte swizzle row each). On an H100 (benchmarks/gpu_plane.py, docs/journal.md; every conv of the decoder at batch 8, each
    layout with its own tiling choice) 1 ran 5-15% faster on most convs, 0 on those with 256-wide N tiles
    (C_out 256, 512, 1024, 2048: 5-30%)."""
    return 0 if cout % 256 == 0 else 1


# ---- the weight gradient on planes: what training runs on Hopper ---------------------------------
def input_grad_reads_forward_weight(cout):
    """Whether the input gradient of a conv with ``cout`` output channels runs from the forward's out-major
    weight (W_LAYOUT 2: no copy, but K rounds up once per tap, so only when ``cout`` is within 5% of a
    multiple of 64), rather than from a packed flipped copy with the window K loop."""
    return round_up(cout, 64) <= 1.05 * cout


def wgrad_plane_meta(KC8, COUT, dtype):
    """Block shapes for ``conv2d_plane_wgrad``: M = a tap row's (j, channel) pairs (KS * C8), N = C_out."""
    if interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1}
    if ieee(dtype):
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    bn = block(COUT, 16, 256)
    bm = 128 if KC8 > 64 else 64
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "num_warps": 8 if bm * bn >= 128 * 128 else 4,
            "num_stages": 3}


def wgrad_splits(M, base_ctas, block_k, weight_numel):
    """Enough splits of the position axis to fill the GPU when the weight GEMM is thin (few
    C_in x C_out tiles, millions of positions), within a 256 MiB fp32 partial buffer."""
    splits = max(1, min(1024 // base_ctas, M // (16 * block_k)))
    while splits > 1 and splits * weight_numel * 4 > 1 << 28:
        splits //= 2
    return splits


# The first call of each conv shape times a few block shapes and keeps the fastest (never while a
# CUDA graph is captured: a capture uses what its warm-up chose, else the heuristic). Tilings cannot
# change the result (each output's K loop runs in the same order); SPLIT_K adds its partial sums
# in a fixed order, so a choice that includes it is deterministic too, rounded differently.
# DND_FAST_TUNE=0 keeps the heuristic tiling: no compile of the other candidates (minutes for a new
# decoder shape in a fresh process), for runs where the first call's latency matters more than the last 5-15%.
# DND_FAST_TUNE=known times nothing either, but takes a pick where one is known (``known``), the picks shipped for
# another GPU model of the same chip included, else the heuristic.
_MODE = os.environ.get("DND_FAST_TUNE", "1")
if _MODE not in ("0", "1", "known"):
    raise ValueError(f"DND_FAST_TUNE={_MODE!r}: expected 1 (search, the default), known or 0 (the heuristic)")
TUNE, KNOWN = _MODE == "1", _MODE == "known"
# DND_FAST_TUNE_SHARD=i/n: this process compiles and times only the heuristic and every n-th other candidate from
# the i-th, so that n processes, each with a throwaway DND_FAST_CACHE, fill Triton's disk cache in parallel before one
# process searches with every compile cached (scripts/gpu/tune.sh). Such a process's picks are not the search's.
SHARD = os.environ.get("DND_FAST_TUNE_SHARD", "")


def sharded(candidates: list, shard: str) -> list:
    """``candidates`` as the process of ``shard`` ("i/n", or "" for all) times them: the first (the heuristic) and
    those at positions 1 + i, 1 + i + n, ..."""
    if not shard:
        return candidates
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        i = n = -1
    if not 0 <= i < n:
        raise ValueError(f"DND_FAST_TUNE_SHARD={shard!r}: expected i/n with 0 <= i < n (e.g. 0/4)")
    return candidates[:1] + candidates[1 + i::n]


CHOSEN: dict[tuple, dict] = {}


def pick(key: tuple, candidates: list[dict], search, device: torch.device) -> dict:
    """The tiling a conv of ``key`` runs: the heuristic (``candidates[0]``) off the GPU, with DND_FAST_TUNE=0, or
    while a CUDA graph is captured before a search (a capture uses what its warm-up chose); with
    DND_FAST_TUNE=known a known pick (``known``), else the heuristic; else ``choose``."""
    if len(candidates) == 1 or device.type != "cuda" or not (TUNE or KNOWN):
        return candidates[0]
    if KNOWN:  # remembered in CHOSEN: the files are read once a shape
        CHOSEN[key] = known(key, candidates, device, same_chip=True) or candidates[0]
        return CHOSEN[key]
    if torch.cuda.is_current_stream_capturing():
        return candidates[0]
    return choose(key, candidates, search, device)


# What the timing chose outlives the process: one JSON file per GPU model and Triton version under
# $DND_FAST_CACHE/tilings (a fresh process otherwise compiles and times every candidate again: minutes for
# the paper decoder). A remembered tiling is used only while it is still one of the shape's candidates, so a
# change to the candidates or the kernel's parameters searches again; deleting the file does too. Files of the
# same name under SHIPPED come with the package (searched on the lent GPUs: the paper decoder's shapes at
# batch 1 and 8), so a fresh machine of that model skips those searches; the machine's own file comes first.
SHIPPED = Path(__file__).parent / "tilings"


# The GPU models whose picks ship, by chip: (compute capability, SMs). A model with no pick for a shape may take one
# of another model of the same chip (DND_FAST_TUNE=known): the H100 SXM and the H200 are both a GH100 with 132 SMs
# (HBM differs: 3.35 against 4.8 TB/s), and their searches picked the same tiling for 13 of the 20 shapes both timed.
SHIPPED_CHIPS = {"NVIDIA_H100_80GB_HBM3": (9, 0, 132), "NVIDIA_H200": (9, 0, 132)}


def choose(key: tuple, candidates: list[dict], search, device: torch.device) -> dict:
    """CHOSEN[key]: the tiling known for this GPU model (``known``), else ``search(candidates)``, remembered."""
    meta = known(key, candidates, device)
    if meta is None:
        path = tilings_file(device)
        # shown once a process (the warnings filter's default): the first call can otherwise sit silent for minutes
        warnings.warn(f"dnd_fast: timing conv tilings, a first use of these decoder shapes on this GPU model and "
                      f"Triton version (minutes of compiles; kept in {path}). DND_FAST_TUNE=known skips the timing: "
                      "known picks, else the heuristic", RuntimeWarning, stacklevel=2)
        meta = search(candidates)
        _write(path, _key_text(key), meta)
    CHOSEN[key] = meta
    return meta


def known(key: tuple, candidates: list[dict], device: torch.device, same_chip: bool = False) -> dict | None:
    """The pick for ``key`` on ``device``'s GPU model that is one of ``candidates``: this machine's file's, else the
    shipped one's, else (``same_chip``) one shipped for another model of the same chip (``SHIPPED_CHIPS``); None."""
    path, text = tilings_file(device), _key_text(key)
    files = [SHIPPED / path.name] + (_same_chip_files(device, path.name) if same_chip else [])
    for meta in [_read(path).get(text)] + [_shipped(f).get(text) for f in files]:
        if meta in candidates:
            return meta
    return None


def _same_chip_files(device: torch.device, own: str) -> list[Path]:
    chip, triton_part = _chip(device), own[own.index("-triton-"):]
    return [SHIPPED / f"{model}{triton_part}" for model, c in SHIPPED_CHIPS.items()
            if c == chip and f"{model}{triton_part}" != own]


def _chip(device: torch.device) -> tuple:
    p = torch.cuda.get_device_properties(device)
    return p.major, p.minor, p.multi_processor_count


def tilings_file(device: torch.device) -> Path:
    cache = Path(os.environ.get("DND_FAST_CACHE", Path.home() / ".cache" / "dnd_fast"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    name = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{gpu}-triton-{triton.__version__}")
    return cache / "tilings" / f"{name}.json"


def remembered(device: torch.device) -> dict:
    """The tilings remembered for ``device``'s GPU model: {shape key text: tiling}."""
    return _read(tilings_file(device))


@functools.cache
def _shipped(path: Path) -> dict:
    """A shipped tilings file, read once a process (package data does not change; this machine's own file is read
    afresh for each shape, since another process may have added to it)."""
    return _read(path)


def _key_text(key: tuple) -> str:
    """The key without its device (the file is per GPU model): shapes, flags and dtypes."""
    return "|".join(str(k) for k in key if not isinstance(k, torch.device))


def _read(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: time again
        return {}
    return found if isinstance(found, dict) else {}


def _write(path: Path, text: str, meta: dict) -> None:
    """Merged into what is there now (another process may have added shapes), written whole under a temporary
    name and renamed: a reader never sees half a file. A cache that cannot be written is skipped."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(_dumps({**_read(path), text: meta}))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _dumps(found: dict) -> str:
    """One shape a line, sorted: a file to read, diff and ship (``SHIPPED``) as it is."""
    rows = (f"{json.dumps(k)}: {json.dumps(m, sort_keys=True)}" for k, m in sorted(found.items()))
    return "{\n" + ",\n".join(rows) + "\n}\n"


@contextlib.contextmanager
def kept_other(other, out, mode):
    """Timing runs the conv many times: where the epilogue adds ``other`` and ``other`` is ``out``'s memory
    (MODE 2 accumulating in place, as the decoder's backward does), ``other`` is put back afterwards."""
    same = other is not None and other.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    kept = other.clone() if mode == 2 and same else None
    yield
    if kept is not None:
        other.copy_(kept)


def plane_candidates(CIN, COUT, dtype, positions=0, two_accumulators=False):
    """``plane_meta`` first, then the other tilings worth timing for this conv (``positions``: the
    plane's output rows, B * P * (Q + pad), which bound the SPLIT_K partial-sum buffer). ``two_accumulators``
    (fp8 sums added in fp32 every few K blocks): only tiles whose two fp32 accumulators fit in registers."""
    first = {"A_PTR": False, **plane_meta(CIN, COUT, dtype)}  # every key named: equal tilings compare equal
    if interpreted() or ieee(dtype):
        return [first]
    if dtype.itemsize == 1:
        out = _fp8_candidates(plane_candidates(CIN, COUT, torch.bfloat16, positions), CIN)
        if two_accumulators:
            fit = [m for m in out if _accumulator_regs(m) <= MAX_ACC_REGS]
            # the heuristic's tile, halved to 128 x 128 on 8 warps where its accumulators would not fit, then
            # that tile's variations (K depth, stages, SPLIT_K as above)
            first = out[0] if fit[:1] == out[:1] else dict(out[0], BLOCK_M=128, BLOCK_N=min(128, out[0]["BLOCK_N"]),
                                                          num_warps=8, num_stages=4)
            more = [dict(first, BLOCK_K=bk, WINDOW=round_up(CIN, channel_pad(FP8)) % bk != 0, num_stages=stages)
                    for bk, stages in ((128, 4), (64, 3), (128, 3))] if first["BLOCK_N"] >= 64 else []
            more += [dict(first, SPLIT_K=2)] if COUT >= 512 and 2 * positions * COUT * 4 <= 1 << 28 else []
            # few: each is compiled on a machine's first call (no shipped picks yet)
            out = [first] + [m for i, m in enumerate(more + fit) if m != first and m not in (more + fit)[:i]][:5]
        return out
    bn = first["BLOCK_N"]
    if COUT <= 64:  # (BLOCK_M, BLOCK_N, warps, stages, pointer loads of the input)
        shapes = [(128, bn, 4, 4, False), (64, bn, 4, 4, False), (256, bn, 8, 3, False)]
        if CIN <= 128:
            shapes += [(256, bn, 4, 3, True), (256, bn, 4, 1, True), (128, bn, 4, 1, True), (128, bn, 8, 1, True)]
    else:
        shapes = [(256, 128, 8, 3, False), (128, 256, 8, 3, False), (128, 128, 4, 4, False), (128, 128, 8, 4, False),
                  (64, 256, 4, 4, False)]
    out = [first]
    widths = _n_parts(COUT)
    if 64 < COUT <= 384 and len(widths) > 1 and sum(widths) < round_up(COUT, 64):
        # 128-row tiles, 8 warps, 4 stages: chosen on most such convs of the decoder at batch 8 on an H100
        out.append(dict(first, BLOCK_M=128, BLOCK_N=widths[0], BLOCK_N2=widths[1], BLOCK_N3=(widths + [0])[2],
                        num_warps=8, num_stages=4, A_PTR=False))
    for bm, bn, warps, stages, a_ptr in shapes:
        meta = dict(first, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, A_PTR=a_ptr)
        # SPLIT_K for the wide channel convs, whose grids are a wave or two of long tiles: on an H100
        # at batch 1 (benchmarks/gpu_plane.py) 128 x 256 tiles chose 3 (10 x 130 plane), 4 (25 x 200)
        # and 9 (10 x 200), each 4-8% faster than 2; the partial sums stay within 256 MiB.
        splits = [2] if warps == 8 else []
        if (bm, bn) == (128, 256):
            splits = [2, 3, 4, 9]
        splits = [s for s in splits if COUT >= 512 and s * positions * COUT * 4 <= 1 << 28]
        for m in [meta] + ([dict(meta, SPLIT_N=True)] if 0 < COUT % bn <= bn // 2 else []) + \
                [dict(meta, SPLIT_K=s) for s in splits]:
            if m not in out:
                out.append(m)
    return out


def _fp8_candidates(bf16_candidates, cin):
    """The bf16 tilings for an e4m3 plane: K tiles of at least 32 (the fp8 MMA's K), and each 64-deep one also
    128 deep (the bytes a 64-deep bf16 tile moves), the 128-deep one first: the heuristic. The search picked 128-deep
    tiles for 84 of the 112 e4m3 shapes it timed on an H200 and for all 10 on an H100 (kernels/tilings/), and the
    bf16 heuristic's tile made 128 deep for 41 of the H200's, the 64-deep one for 6. WINDOW where the channels
    (rounded to 16) do not fill whole K tiles."""
    out = []
    for meta in bf16_candidates:
        for bk in ([128, 64] if meta["BLOCK_K"] == 64 else [max(32, meta["BLOCK_K"])]):
            m = dict(meta, BLOCK_K=bk, WINDOW=round_up(cin, channel_pad(FP8)) % bk != 0)
            if m not in out:
                out.append(m)
    return out


# a thread's fp32 accumulator registers, at most, where a tile keeps two (the MMA's running sum and the fp32 total):
# 2 x 64 of the 255 a thread may hold (128 x 128 on 8 warps; 128 x 256 would need 256 and spill)
MAX_ACC_REGS = 64


def _accumulator_regs(meta):
    width = meta["BLOCK_N"] + meta.get("BLOCK_N2", 0) + meta.get("BLOCK_N3", 0)
    return meta["BLOCK_M"] * width // (32 * meta["num_warps"])


def _n_parts(cout):
    """``cout`` rounded up to 16 as up to three power-of-two widths of 16 to 256, widest first (200 = 128 +
    64 + 16 less 8): the N tile of BLOCK_N2 / BLOCK_N3 candidates, [] where three do not reach."""
    rest, widths = round_up(cout, 16), []
    while rest and len(widths) < 3:
        widths.append(min(256, 1 << (rest.bit_length() - 1)))
        rest -= widths[-1]
    return [] if rest else widths


def wgrad_plane_candidates(KC8, COUT, dtype):
    first = wgrad_plane_meta(KC8, COUT, dtype)
    if interpreted() or ieee(dtype):
        return [first]
    out, fit = [first], block(COUT, 16, 256)
    for bm, bn, warps in [(128, 256, 8), (128, 128, 8), (128, 128, 4), (256, 128, 8), (64, 256, 4), (128, 64, 4),
                          (64, 64, 4), (64, 32, 4), (128, 32, 4), (64, 16, 4), (128, 16, 4), (256, 16, 4)]:
        if bn > 2 * fit or bn < fit // 4 or bm > 2 * round_up(KC8, 64):
            continue
        meta = dict(first, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
        if meta not in out:
            out.append(meta)
    return out


def fastest(candidates, launch, reps=3, trials=3):
    """The candidate with the least device time (the best of ``trials`` timings of ``reps`` launches: one
    timing right after a compile was noisy enough that two processes chose tilings 40% apart on the fp8
    decoder at batch 1); the first (the heuristic) must run, the others may fail to compile on another GPU
    or Triton version (too many registers or too much shared memory)."""
    def device_ms(meta):
        try:
            launch(meta)  # compiles on first use
        except Exception:
            if meta is candidates[0]:
                raise
            return float("inf")
        best = float("inf")
        for _ in range(trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                launch(meta)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
        return best
    return min(sharded(candidates, SHARD), key=device_ms)
