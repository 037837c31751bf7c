"""Data-parallel training on CPU: torchrun with gloo in 2 processes equals one process with the same global batch
and seed, and its checkpoint resumes at world size 1 (and V4's single-process checkpoint at world size 2); the
shards, the noise and the one-line launch errors."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import distributed as ddp
from models.checkpoint import read_checkpoint
from models.common import ConfigError
from models.data import DeviceBatches, SparseFieldDataset
from models.train import flow_noise, main, parse_args, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--resolution", "8", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "6", "--dropout", "0", "--device", "cpu", "--quiet", "--max-steps", "4"]  # fmt: skip
MODELS = {"v4": ("transformer_v4", []), "v1": ("mamba", ["--mixer-backend", "reference"])}
LAUNCH_TIMEOUT_S = 150  # a hung collective fails the test instead of blocking CI (each collective: 60 s)


def torchrun(nproc: int, args: list[str], timeout=LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m models.train ARGS` (a free port; the whole process group is
    killed on timeout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DIST_TIMEOUT_S": "60"}
    env.pop("WORLD_SIZE", None)
    proc, timed_out = ddp.torchrun(nproc, "models.train", args, ROOT, env, timeout)
    if timed_out:
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{proc.stderr[-3000:]}")
    return proc


def _weights_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:  # fp32: the reductions sum in another order; AdamW divides by tiny second moments early on
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("model", list(MODELS))
def test_two_gloo_ranks_equal_one_process_and_resume_at_world_one(tmp_path, model):
    name, extra = MODELS[model]
    args, ckpt = ["--model", model, *TINY, *extra], f"checkpoints_{name}/{name}_latest.pth"
    two, one, resumed = tmp_path / "w2", tmp_path / "w1", tmp_path / "w2to1"
    r = torchrun(2, [*args, "--epochs", "1", "--out-dir", str(two)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks (gloo), 2 per rank" in r.stdout and r.stdout.count("epoch    0") == 1  # rank 0 prints
    train(parse_args([*args, "--epochs", "2", "--out-dir", str(one), "--save-every", "1"]))

    a = read_checkpoint(two / ckpt)
    b = read_checkpoint(one / f"checkpoints_{name}/{name}_epoch_0000.pth")
    assert a["step"] == b["step"] == 2 and a["world_size"] == 2
    _weights_close(a["model"], b["model"])
    for key in ("train_loss", "val_loss"):  # the reduced log: the global batch's loss, the whole validation set
        assert a["log"][0][key] == pytest.approx(b["log"][0][key], rel=1e-5)

    # the world-2 checkpoint continues in one process: the same weights as the straight single-process run
    resumed.mkdir()
    (resumed / f"checkpoints_{name}").mkdir()
    (resumed / ckpt).write_bytes((two / ckpt).read_bytes())
    out = train(parse_args([*args, "--epochs", "2", "--out-dir", str(resumed), "--resume"]))
    assert out["steps"] == 4 and out["world_size"] == 1
    _weights_close(read_checkpoint(resumed / ckpt)["model"], read_checkpoint(one / ckpt)["model"])

    if model != "v4":
        return
    # and the other way: a single-process checkpoint continued by 2 ranks
    up = tmp_path / "w1to2"
    (up / f"checkpoints_{name}").mkdir(parents=True)
    (up / ckpt).write_bytes((one / f"checkpoints_{name}/{name}_epoch_0000.pth").read_bytes())
    r = torchrun(2, [*args, "--epochs", "2", "--out-dir", str(up), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    c = read_checkpoint(up / ckpt)
    assert c["step"] == 4 and c["world_size"] == 2
    _weights_close(c["model"], read_checkpoint(one / ckpt)["model"])


def test_device_batches_shards_are_the_single_process_batch():
    ds = SparseFieldDataset([torch.rand(3, 20, 20) * 2 - 1], resolution=8, num_samples=10, seed=3)
    whole = list(DeviceBatches(ds, 4, "cpu", shuffle=False, drop_last=False).epoch(2))
    for world in (2, 3):
        parts = [list(DeviceBatches(ds, 4, "cpu", shuffle=False, drop_last=False, rank=r, world=world).epoch(2))
                 for r in range(world)]  # fmt: skip
        for i, batch in enumerate(whole):
            for key in ("index", "input_index", "query_values", "input_coords"):
                joined = torch.cat([p[i][key] for p in parts])  # the ranks' rows, in rank order
                torch.testing.assert_close(joined, batch[key], rtol=0, atol=0)
            assert [p[i]["shard"] for p in parts][-1][2] == batch["shard"][2] == len(batch["index"])


def test_flow_noise_of_a_shard_is_the_slice_of_the_global_draw():
    x1 = torch.zeros(6, 5, 3)
    full = flow_noise(x1, torch.Generator().manual_seed(0))
    assert torch.equal(full[0], torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(0)))  # as before
    for lo, hi in ((0, 3), (3, 6), (2, 2)):
        x0, t = flow_noise(x1[lo:hi], torch.Generator().manual_seed(0), (lo, hi, 6))
        assert torch.equal(x0, full[0][lo:hi]) and torch.equal(t, full[1][lo:hi])


def test_shard_is_contiguous_disjoint_and_complete():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            ranges = [ddp.shard(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_single_process_has_no_process_group():
    assert ddp.launch_info({}) is ddp.SINGLE and ddp.launch_info({"WORLD_SIZE": "1"}) is ddp.SINGLE
    assert ddp.setup(None, "cpu", {}) == (ddp.SINGLE, "cpu")
    assert not ddp.active()


TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


@pytest.mark.parametrize(
    "extra,env,needle",
    [
        (["--batch-size", "5"], {}, "--batch-size 5 is the global batch and must be divisible by the world size 2"),
        (["--batch-size", "4", "--dist-backend", "nccl"], {"CUDA_VISIBLE_DEVICES": ""}, "nccl needs CUDA GPUs"),
        (["--batch-size", "4", "--device", "cuda:1"], {}, "each rank takes cuda:LOCAL_RANK"),
        (["--batch-size", "4"], {"DIST_BACKEND": "mpi"}, "--dist-backend must be one of auto, nccl, gloo"),
    ],
)
def test_bad_launches_fail_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, extra, env, needle):
    if "CUDA_VISIBLE_DEVICES" in env and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    for k, v in {**TORCHRUN_ENV, **env}.items():
        monkeypatch.setenv(k, v)
    rc = main(["--model", "v4", "--preset", "tiny", "--resolution", "8", "--out-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not any(tmp_path.iterdir())  # nothing written, no process group waited for (MASTER_PORT 1)


def test_launch_checks():
    with pytest.raises(ConfigError, match="more processes per node than there are GPUs"):
        ddp.rank_device(ddp.DistInfo(rank=2, world=3, local_rank=2), "auto", cuda_count=2)
    assert ddp.rank_device(ddp.DistInfo(rank=1, world=2, local_rank=1), "auto", cuda_count=2) == "cuda:1"
    assert ddp.rank_device(ddp.DistInfo(rank=1, world=2, local_rank=1), "auto", cuda_count=0) == "cpu"
    with pytest.raises(ConfigError, match="nccl with --device cpu"):
        ddp.pick_backend("nccl", "cpu", cuda=True)
    assert ddp.pick_backend(None, "auto", cuda=True) == "nccl" and ddp.pick_backend("auto", "cpu", cuda=True) == "gloo"
    with pytest.raises(ConfigError, match="RANK must be in"):
        ddp.launch_info({"WORLD_SIZE": "2", "RANK": "2"})
    assert ddp.check_batch(64, 2) == 32
    with pytest.raises(ConfigError, match="more processes per node than there are GPUs"):
        ddp.preflight(3, ["--model", "v4", "--batch-size", "6"], {}, cuda_count=2)
    ddp.preflight(2, ["--model", "v4", "--batch-size", "6"], {}, cuda_count=2)  # fine: 2 GPUs, 3 per rank
    ddp.preflight(1, ["--model", "v4", "--batch-size", "5"], {}, cuda_count=0)  # one process: nothing to divide


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["ARGS=--batch-size 5"], {}, "models.train: error: --batch-size 5 is the global batch and must be divisible"),
        ([], {"BATCH_SIZE": "3"}, "models.train: error: BATCH_SIZE 3 is the global batch"),
        (["ARGS=--lr nan"], {}, "models.train: error: argument --lr: must be a finite number > 0"),
    ],
)
def test_make_train_ddp_checks_the_launch_in_one_line_before_torchrun(args, env, needle):
    top = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    cmd = ["make", "--no-print-directory", "train-ddp", f"PY={sys.executable}", "NPROC=2", "MODEL=v4", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**top, "PYTHONPATH": str(ROOT), **env},
                       timeout=300)  # fmt: skip
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and re.match(r"make(\[\d+\])?: \*\*\* ", lines[-1]) and lines[-1].endswith("Error 2")
    assert lines[-2].startswith(needle) and not any("torch.distributed.run" in ln for ln in lines[:-2]), lines
