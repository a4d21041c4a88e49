"""The first-call tiling choice (kernels/tuning.py): timed on the GPU, remembered per GPU model on disk."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import reseed
from test_hyperconv import plane_conv, plane_of, rel_err

from dnd_fast.kernels import tuning

CANDIDATES = [{"BLOCK_M": 64, "BLOCK_N": 64}, {"BLOCK_M": 128, "BLOCK_N": 64}, {"BLOCK_M": 128, "BLOCK_N": 128}]
KEY = (2, 10, 40, 64, 130, 9, 0, False, torch.bfloat16, torch.bfloat16, torch.device("cpu"), 1)


class Search:
    """A stand-in for the timing: picks ``pick`` and counts its calls."""

    def __init__(self, pick):
        self.pick, self.calls = pick, 0

    def __call__(self, candidates):
        self.calls += 1
        return candidates[self.pick]


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DND_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "CHOSEN", {})
    monkeypatch.setattr(tuning, "SHIPPED", tmp_path / "shipped")
    return tuning.tilings_file(torch.device("cpu"))


def test_a_choice_outlives_the_process(cache):
    first = Search(2)
    with pytest.warns(RuntimeWarning, match="timing conv tilings.*DND_FAST_TUNE=known"):  # minutes: say so
        assert tuning.choose(KEY, CANDIDATES, first, torch.device("cpu")) == CANDIDATES[2]
    assert first.calls == 1 and tuning.CHOSEN[KEY] == CANDIDATES[2]
    tuning.CHOSEN.clear()  # a later process: the file, not the dict
    later = Search(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to time, nothing to say
        assert tuning.choose(KEY, CANDIDATES, later, torch.device("cpu")) == CANDIDATES[2]
    assert later.calls == 0 and tuning.CHOSEN[KEY] == CANDIDATES[2]
    # the file is per GPU model: the key's device is not in it
    assert list(json.loads(cache.read_text())) == ["2|10|40|64|130|9|0|False|torch.bfloat16|torch.bfloat16|1"]


def test_a_remembered_tiling_that_is_no_longer_a_candidate_is_searched_again(cache):
    tuning.choose(KEY, CANDIDATES, Search(2), torch.device("cpu"))
    tuning.CHOSEN.clear()
    again = Search(1)
    assert tuning.choose(KEY, CANDIDATES[:2], again, torch.device("cpu")) == CANDIDATES[1]
    assert again.calls == 1
    assert list(json.loads(cache.read_text()).values()) == [CANDIDATES[1]]


def test_shapes_from_two_processes_are_merged_and_a_bad_file_is_replaced(cache):
    other = KEY[:1] + (20,) + KEY[2:]
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    tuning.choose(KEY, CANDIDATES, Search(0), torch.device("cpu"))
    tuning.choose(other, CANDIDATES, Search(1), torch.device("cpu"))
    found = json.loads(cache.read_text())
    assert sorted(found.values(), key=str) == sorted([CANDIDATES[0], CANDIDATES[1]], key=str)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left behind


def test_a_shipped_tiling_is_used_unless_this_machine_chose_or_it_is_no_candidate(cache):
    shipped = tuning.SHIPPED / cache.name
    shipped.parent.mkdir(parents=True)
    shipped.write_text(json.dumps({tuning._key_text(KEY): CANDIDATES[1]}))
    none = Search(2)
    assert tuning.choose(KEY, CANDIDATES, none, torch.device("cpu")) == CANDIDATES[1] and none.calls == 0
    assert not cache.exists()  # nothing searched, nothing written
    tuning.CHOSEN.clear()
    searched = Search(0)  # the shipped tiling is no longer a candidate: searched, and this machine's file wins after
    assert tuning.choose(KEY, CANDIDATES[::2], searched, torch.device("cpu")) == CANDIDATES[0] and searched.calls == 1
    tuning.CHOSEN.clear()
    assert tuning.choose(KEY, CANDIDATES, Search(2), torch.device("cpu")) == CANDIDATES[0]


def test_the_shipped_tilings_parse_and_name_gpu_models_and_triton_versions():
    files = sorted(tuning.SHIPPED.glob("*.json"))
    assert files, f"no shipped tilings in {tuning.SHIPPED}"
    for f in files:
        assert "-triton-" in f.stem
        assert f.stem.split("-triton-")[0] in tuning.SHIPPED_CHIPS, f"{f.name}: name its chip in SHIPPED_CHIPS"
        found = json.loads(f.read_text())
        assert found and all(isinstance(m, dict) and {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(m) for m in found.values())


@pytest.fixture
def chips(cache, monkeypatch):
    """Shipped picks of two other GPU models: SAME (this machine's chip) picks CANDIDATES[2], SMALLER (the same
    architecture, fewer SMs) CANDIDATES[1]."""
    own = cache.name.split("-triton-")[0]
    monkeypatch.setattr(tuning, "SHIPPED_CHIPS", {own: (9, 0, 132), "SAME": (9, 0, 132), "SMALLER": (9, 0, 114)})
    monkeypatch.setattr(tuning, "_chip", lambda device: (9, 0, 132))
    tuning.SHIPPED.mkdir(parents=True)
    triton_part = cache.name[cache.name.index("-triton-"):]
    for model, meta in (("SAME", CANDIDATES[2]), ("SMALLER", CANDIDATES[1])):
        (tuning.SHIPPED / f"{model}{triton_part}").write_text(json.dumps({tuning._key_text(KEY): meta}))
    return tuning.SHIPPED / cache.name


def test_known_picks_take_a_same_chip_models_only_when_asked_and_only_as_a_candidate(chips):
    cpu = torch.device("cpu")
    assert tuning.known(KEY, CANDIDATES, cpu) is None
    assert tuning.known(KEY, CANDIDATES, cpu, same_chip=True) == CANDIDATES[2]
    assert tuning.known(KEY, CANDIDATES[:2], cpu, same_chip=True) is None  # SMALLER's is no pick for this chip
    chips.write_text(json.dumps({tuning._key_text(KEY): CANDIDATES[0]}))  # this model's own shipped pick comes first
    tuning._shipped.cache_clear()
    assert tuning.known(KEY, CANDIDATES, cpu, same_chip=True) == CANDIDATES[0]
    search = Search(1)  # the search never takes another model's pick
    chips.unlink()
    tuning._shipped.cache_clear()
    assert tuning.choose(KEY, CANDIDATES, search, cpu) == CANDIDATES[1] and search.calls == 1


@pytest.mark.parametrize("tune,known,capturing,expected,searched", [
    (True, False, False, 1, 1),   # the default: searched (nothing known for this model)
    (True, False, True, 0, 0),    # inside a CUDA graph capture: the heuristic
    (False, True, False, 2, 0),   # DND_FAST_TUNE=known: the same chip's pick, no search
    (False, False, False, 0, 0),  # DND_FAST_TUNE=0: the heuristic
])
def test_one_place_picks_the_tiling_of_each_tuning_mode(chips, monkeypatch, tune, known, capturing, expected,
                                                        searched):
    monkeypatch.setattr(tuning, "TUNE", tune)
    monkeypatch.setattr(tuning, "KNOWN", known)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    monkeypatch.setattr(tuning, "tilings_file", lambda device: chips.parent.parent / "cache" / chips.name)
    tuning._shipped.cache_clear()
    search = Search(1)
    assert tuning.pick(KEY, CANDIDATES, search, torch.device("cuda")) == CANDIDATES[expected]
    assert search.calls == searched
    assert tuning.pick(KEY, CANDIDATES, search, torch.device("cpu")) == CANDIDATES[0]  # off the GPU: the heuristic
    assert tuning.pick(KEY, CANDIDATES[1:2], search, torch.device("cuda")) == CANDIDATES[1]  # one candidate
    assert search.calls == searched


def test_a_bad_tuning_mode_names_itself():
    env = {**os.environ, "DND_FAST_TUNE": "yes"}
    run = subprocess.run([sys.executable, "-c", "import dnd_fast.kernels.tuning"], env=env, capture_output=True,
                         text=True)
    assert run.returncode != 0 and "DND_FAST_TUNE='yes': expected 1" in run.stderr


def test_an_unwritable_cache_still_gives_the_choice(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DND_FAST_CACHE", str(blocker))  # a file where the cache directory should be
    monkeypatch.setattr(tuning, "CHOSEN", {})
    assert tuning.choose(KEY, CANDIDATES, Search(1), torch.device("cpu")) == CANDIDATES[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_first_call_keeps_the_fastest_tiling(monkeypatch, tmp_path):
    from dnd_fast.kernels import hyperconv

    monkeypatch.setenv("DND_FAST_CACHE", str(tmp_path))  # nothing remembered: the timing runs
    monkeypatch.setattr(hyperconv.tuning, "TUNE", True)
    monkeypatch.setattr(hyperconv.tuning, "CHOSEN", {})
    reseed()
    b, cin, p, q, cout, k = 2, 64, 10, 40, 130, 9
    x = torch.randn(b, cin, p, q, device="cuda").bfloat16()
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    exact = F.conv2d(x.double(), weight.double(), padding="same")
    for _ in range(2):  # timed on the first call, looked up on the second
        assert rel_err(plane_conv(x, weight, None, False, "cuda", torch.bfloat16), exact) < 4e-3
    (chosen,) = hyperconv.tuning.CHOSEN.values()
    assert chosen in hyperconv.plane_candidates(cin, cout, torch.bfloat16)
    (remembered,) = json.loads(hyperconv.tuning.tilings_file(torch.device("cuda")).read_text()).values()
    assert remembered == chosen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_first_call_timing_keeps_an_in_place_accumulation(monkeypatch, tmp_path):
    """MODE 2 adding into its own output (the decoder's backward): the tiling choice runs the conv many
    times, and the result must still be the output's old contents plus one conv."""
    from dnd_fast.kernels import hyperconv

    monkeypatch.setenv("DND_FAST_CACHE", str(tmp_path))
    reseed()
    b, cin, p, q, cout, k = 2, 24, 10, 40, 48, 9
    x = torch.randn(b, cin, p, q, device="cuda").bfloat16()
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    start = torch.randn(b, p, q, cout, device="cuda").permute(0, 3, 1, 2)
    plane, packed = plane_of(x, k, torch.bfloat16), hyperconv.pack_weight_plane(weight, torch.bfloat16)
    results = []
    for tune in (False, True):
        monkeypatch.setattr(hyperconv.tuning, "TUNE", tune)
        monkeypatch.setattr(hyperconv.tuning, "CHOSEN", {})
        acc = start.clone()
        hyperconv.conv2d_plane(plane, packed, k, acc, mode=2, other=acc)
        results.append(acc)
    assert len(hyperconv.tuning.CHOSEN) == 1  # the timing ran
    exact = F.conv2d(x.double(), weight.double(), padding="same") + start.double()
    assert rel_err(results[0], exact) < 4e-3 and rel_err(results[1], exact) < 4e-3


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs a Hopper GPU (the e4m3 plane conv)")
def test_fp8_accumulations_are_timed_apart(monkeypatch, tmp_path):
    """fp32 adds every few K blocks (Paths.fp8_acc_terms > 0) and whole-K accumulation (both precisions) differ:
    each has its own remembered tiling; the whole-K key is the one the shipped files hold."""
    from dnd_fast.kernels import hyperconv

    monkeypatch.setenv("DND_FAST_CACHE", str(tmp_path))
    monkeypatch.setattr(hyperconv.tuning, "TUNE", True)
    monkeypatch.setattr(hyperconv.tuning, "CHOSEN", {})
    b, cin, p, q, cout, k = 1, 48, 10, 40, 64, 9
    plane = hyperconv.PaddedPlane(b, p, q, cin, k, hyperconv.FP8, "cuda")
    plane.interior.copy_(torch.randn(b, p, q, cin, device="cuda").to(hyperconv.FP8))
    w8, w_scale = hyperconv.pack_weight_plane_fp8(torch.randn(cout, cin, k, k, device="cuda"))
    out = torch.empty(b, p, q, cout, device="cuda").permute(0, 3, 1, 2)
    for acc_terms in (0, 512):
        hyperconv.conv2d_plane(plane, w8, k, out, w_layout=1, col_scale=w_scale, acc_terms=acc_terms)
    keys = sorted(hyperconv.tuning.CHOSEN, key=len)
    assert len(keys) == 2 and keys[1] == keys[0] + ("acc_terms", 512)
    assert len(json.loads(hyperconv.tuning.tilings_file(torch.device("cuda")).read_text())) == 2


@pytest.mark.parametrize("n", [1, 3, 7])
def test_shards_split_the_candidates_between_them(n):
    """Every candidate but the heuristic is timed by exactly one of the n processes; each times the heuristic."""
    candidates = [{"BLOCK_M": m} for m in range(11)]
    shards = [tuning.sharded(candidates, f"{i}/{n}") for i in range(n)]
    assert all(s[0] == candidates[0] for s in shards)
    rest = sorted(m["BLOCK_M"] for s in shards for m in s[1:])
    assert rest == list(range(1, 11))
    assert tuning.sharded(candidates, "") == candidates


@pytest.mark.parametrize("shard", ["4/4", "x", "1/0", "-1/2"])
def test_a_bad_shard_names_itself(shard):
    with pytest.raises(ValueError, match="DND_FAST_TUNE_SHARD"):
        tuning.sharded([{}], shard)


@pytest.mark.parametrize("cin,cout", [(300, 256), (128, 200), (256, 50), (2048, 4296), (24, 48), (100, 130)])
def test_the_e4m3_heuristic_takes_128_deep_k_tiles_within_shared_memory(monkeypatch, cin, cout):
    """The first e4m3 candidate (what DND_FAST_TUNE=0 runs, and what must compile) is the bf16 heuristic with its
    64-deep K tile made 128 deep, the search's usual pick (kernels/tilings/); the same set of candidates either way;
    every candidate's pipeline fits a Hopper SM's 227 KiB of shared memory."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU's candidates, not the interpreter's one
    bf16 = tuning.plane_candidates(cin, cout, torch.bfloat16, 1 << 20)
    e4m3 = tuning.plane_candidates(cin, cout, torch.float8_e4m3fn, 1 << 20)
    assert e4m3[0]["BLOCK_K"] == (128 if bf16[0]["BLOCK_K"] == 64 else max(32, bf16[0]["BLOCK_K"]))
    assert {k: v for k, v in e4m3[0].items() if k not in ("BLOCK_K", "WINDOW")} == \
        {k: v for k, v in bf16[0].items() if k not in ("BLOCK_K", "WINDOW")}
    assert len({json.dumps(m, sort_keys=True) for m in e4m3}) == len(e4m3)
    for meta in e4m3:
        width = meta["BLOCK_M"] + meta["BLOCK_N"] + meta.get("BLOCK_N2", 0) + meta.get("BLOCK_N3", 0)
        assert meta["num_stages"] * width * meta["BLOCK_K"] <= 227 * 1024, meta
