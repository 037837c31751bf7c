"""bench.autotune: a real triton.autotune kernel (the CPU interpreter) starts from saved choices and skips tuning."""

import json
import sys
import types

import pytest
import torch
import triton
import triton.language as tl

from bench import autotune
from models.common import ConfigError

CONFIGS = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})]


@triton.autotune(configs=CONFIGS, key=["n"])
@triton.jit
def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, 2.0 * tl.load(x_ptr + offs, mask=mask), mask=mask)


def _scale(x):
    y = torch.empty_like(x)
    _scale_kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, x.numel())
    return y


@pytest.fixture
def tuners(monkeypatch):
    """The kernel as a global of a fake mamba_ssm module, its cache empty before and after."""
    mod = types.ModuleType("mamba_ssm.fake_ssd")
    mod._scale_kernel = _scale_kernel
    monkeypatch.setitem(sys.modules, "mamba_ssm.fake_ssd", mod)
    _scale_kernel.cache.clear()
    yield autotune.autotuners(("mamba_ssm.",))
    _scale_kernel.cache.clear()


def test_a_saved_choice_is_used_without_tuning_and_the_result_is_right(tuners, tmp_path, monkeypatch):
    assert list(tuners) == ["mamba_ssm.fake_ssd._scale_kernel"]
    x = torch.randn(100)
    # tunes: "benchmarks" every config (the interpreter has no timer: a fake one, BLOCK 32 fastest), keeps one
    monkeypatch.setattr(_scale_kernel, "_bench", lambda *a, config, **k: [abs(config.kwargs["BLOCK"] - 32.0)])
    _scale(x)
    assert _scale_kernel.best_config is CONFIGS[1]
    (key,) = _scale_kernel.cache
    saved = autotune.choices(tuners)
    path = tmp_path / "tune.json"
    autotune.save(path, saved, gpu="cpu")
    assert json.loads(path.read_text())["gpu"] == "cpu"

    _scale_kernel.cache.clear()  # a new process
    pick = {name: [dict(p, config=2, text=str(CONFIGS[2])) for p in ps] for name, ps in saved.items()}
    assert autotune.preload(tuners, pick) == (1, 0)
    assert _scale_kernel.cache[key] is CONFIGS[2]
    monkeypatch.setattr(_scale_kernel, "_bench", lambda *a, **k: pytest.fail("tuned again despite the saved choice"))
    y = _scale(x)
    assert _scale_kernel.best_config is CONFIGS[2]
    torch.testing.assert_close(y, 2 * x)
    assert autotune.load(path, gpu="cpu") == saved  # round trip


def test_choices_that_do_not_match_the_kernel_are_skipped_and_a_tuned_key_keeps_its_own(tuners):
    name = "mamba_ssm.fake_ssd._scale_kernel"
    stale = {name: [{"key": [100, "torch.float32"], "config": 1, "text": "BLOCK: 999"}],  # other configs
             "mamba_ssm.gone._kernel": [{"key": [1], "config": 0, "text": ""}]}  # fmt: skip
    assert autotune.preload(tuners, stale) == (0, 2) and not _scale_kernel.cache
    _scale_kernel.cache[(100, "torch.float32")] = CONFIGS[0]
    ok = {name: [{"key": [100, "torch.float32"], "config": 1, "text": str(CONFIGS[1])}]}
    assert autotune.preload(tuners, ok) == (0, 0) and _scale_kernel.cache[(100, "torch.float32")] is CONFIGS[0]


def test_keys_json_cannot_carry_are_left_out_and_equal_configs_are_found(tuners):
    import numpy as np

    _scale_kernel.cache[(np.int64(3), "torch.float32")] = CONFIGS[0]  # would come back as "3": never matching
    _scale_kernel.cache[(7, "torch.float32")] = triton.Config({"BLOCK": 32})  # an equal copy (triton's disk cache)
    (picked,) = autotune.choices(tuners).values()
    assert picked == [{"key": [7, "torch.float32"], "config": 1, "text": str(CONFIGS[1])}]


def test_two_writers_keep_each_others_keys_and_a_differing_choice_is_counted(tmp_path):
    path = tmp_path / "tune.json"
    a = {"k": [{"key": [1], "config": 0, "text": "a"}]}
    b = {"k": [{"key": [2], "config": 1, "text": "b"}, {"key": [1], "config": 1, "text": "b"}]}
    autotune.update(path, a)
    both, differ = autotune.update(path, b)  # a second process, started before the first wrote
    assert autotune.load(path) == both == {"k": a["k"] + b["k"][:1]} and differ == 1  # key 1: the file's stands


@pytest.mark.parametrize(
    "entry",
    [
        "oops",
        {"key": [[1]], "config": 0, "text": ""},
        {"key": [1], "config": True, "text": ""},
        {"key": [1], "config": 0},
    ],  # fmt: skip
)
def test_malformed_entries_are_refused_by_load(tmp_path, entry):
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"format": autotune.FORMAT, "choices": {"k": [entry]}}))
    with pytest.raises(ConfigError, match="not an autotune cache file"):
        autotune.load(path)


def test_merge_keeps_the_files_first_choice():
    old = {"k": [{"key": [1], "config": 0, "text": "a"}]}
    new = {"k": [{"key": [1], "config": 1, "text": "b"}, {"key": [2], "config": 1, "text": "b"}]}
    assert autotune.merged(old, new) == {"k": [{"key": [1], "config": 0, "text": "a"},
                                               {"key": [2], "config": 1, "text": "b"}]}  # fmt: skip


def test_bad_or_foreign_files_are_one_line_errors(tmp_path):
    assert autotune.load(tmp_path / "missing.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not an autotune cache file"):
        autotune.load(bad)
    other = tmp_path / "other.json"
    autotune.save(other, {}, gpu="NVIDIA H100")
    with pytest.raises(ConfigError, match="tuned on NVIDIA H100, this is NVIDIA H200"):
        autotune.load(other, gpu="NVIDIA H200")


QUICK = ["--quick", "--models", "v4", "--backends", "sdpa", "--res", "8"]


def test_the_sweep_saves_what_a_process_tuned_and_the_next_starts_from_it(tuners, tmp_path, monkeypatch):
    from bench import sweep

    path = tmp_path / "tune.json"
    args = sweep.build_parser().parse_args([*QUICK, "--out", str(tmp_path / "out"), "--autotune-cache", str(path)])
    s = sweep.settings_from_args(args)
    first = sweep.Sweep(s)
    monkeypatch.setattr(_scale_kernel, "_bench", lambda *a, config, **k: [abs(config.kwargs["BLOCK"] - 64.0)])
    _scale(torch.randn(50))  # what a backend's first call does: tune
    first.autotune_save()
    assert first.autotune_stats["keys"] == 1 and path.exists()

    _scale_kernel.cache.clear()  # the next call of the run: a new process
    second = sweep.Sweep(s)
    second.autotune_preload()
    assert second.autotune_stats["preloaded"] == 1 and list(_scale_kernel.cache.values()) == [CONFIGS[2]]


def test_a_quick_sweep_with_a_cache_records_it_and_a_bad_file_is_refused_first(tmp_path, capsys):
    from bench import sweep

    out, path = tmp_path / "out", tmp_path / "tune.json"
    assert sweep.main([*QUICK, "--out", str(out), "--autotune-cache", str(path)]) == 0
    (env,) = json.loads((out / "raw" / "sweep_B2_fp32.json").read_text())["runs"]
    assert env["autotune_cache"] == {"path": str(path), "preloaded": 0, "skipped": 0, "keys": 0, "differ": 0}
    capsys.readouterr()
    path.write_text("[]")
    assert sweep.main([*QUICK, "--out", str(tmp_path / "bad"), "--autotune-cache", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an autotune cache file" in err and not (tmp_path / "bad").exists()


@pytest.mark.gpu
def test_gpu_mamba2_choices_round_trip_and_the_next_process_does_not_tune(tmp_path, monkeypatch):
    """V1 on the mamba2 backend: its first training step tunes mamba_ssm's SSD kernels; with the saved choices put
    back into emptied caches (a new process), the same step runs without benchmarking a single config."""
    pytest.importorskip("mamba_ssm")
    from bench import measure

    dev = torch.device("cuda")
    wl = measure.build_workload("v1", "mamba2", "model", "tiny", dev)
    step = measure.make_train_step(wl, wl.inputs(2, 256, dev), dev, True)
    step()
    torch.cuda.synchronize()
    tuners = autotune.autotuners()
    saved = autotune.choices(tuners)
    n = sum(len(v) for v in saved.values())
    assert n > 0, "no mamba_ssm Triton kernel was tuned"
    path = tmp_path / "tune.json"
    autotune.save(path, saved, gpu=torch.cuda.get_device_name(dev))
    for t in tuners.values():
        t.cache.clear()
        monkeypatch.setattr(t, "_bench", lambda *a, **k: pytest.fail("tuned despite the saved choices"))
    assert autotune.preload(tuners, autotune.load(path, gpu=torch.cuda.get_device_name(dev))) == (n, 0)
    step()
    torch.cuda.synchronize()


def test_the_default_cache_is_one_file_per_gpu_beside_the_rows_and_off_turns_it_off(tmp_path, monkeypatch):
    from bench import sweep

    def settings(*extra):
        return sweep.settings_from_args(sweep.build_parser().parse_args([*QUICK, "--out", str(tmp_path), *extra]))

    assert settings().autotune_cache == "auto" and settings("--autotune-cache", "off").autotune_cache is None
    assert sweep.Sweep(settings()).s.autotune_cache is None  # CPU: nothing is autotuned, no file
    assert sweep.slug("NVIDIA H200") == "nvidia-h200" and sweep.slug("  ") == "gpu"
    # on CUDA "auto" names <out>/raw/autotune_<gpu>.json (the device name stubbed: no GPU here)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H200")
    s = settings()
    s.device = "cuda"
    assert sweep.Sweep(s).s.autotune_cache == str(tmp_path / "raw" / "autotune_nvidia-h200.json")
