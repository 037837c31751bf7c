"""Data-parallel training on GPUs (marked gpu; `make gpu-test` on a CUDA host). With 2+ GPUs: torchrun + NCCL in 2
processes equals one GPU (fp32, --no-amp), a bf16 run resumes at world size 1, the sweep spreads over the GPUs and
bench.ddp_scaling measures 1 vs 2 GPUs. With one GPU: torchrun with one process is the plain single-GPU run."""

import json
import math

import pandas as pd
import pytest
import torch

from bench import ddp_scaling, sweep
from models.checkpoint import read_checkpoint
from models.train import parse_args, train
from tests.models.test_distributed import torchrun

TINY = ["--model", "v4", "--preset", "tiny", "--resolution", "16", "--batch-size", "8", "--train-samples", "16",
        "--val-samples", "8", "--dropout", "0", "--quiet", "--max-steps", "4"]  # fmt: skip
CKPT = "checkpoints_transformer_v4/transformer_v4_latest.pth"
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.gpu
@two_gpus
def test_two_nccl_ranks_equal_one_gpu_and_resume_at_world_one(tmp_path):
    r = torchrun(2, [*TINY, "--no-amp", "--epochs", "2", "--out-dir", str(tmp_path / "w2")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks (nccl), 4 per rank" in r.stdout
    train(parse_args([*TINY, "--no-amp", "--epochs", "2", "--device", "cuda:0", "--out-dir", str(tmp_path / "w1")]))
    a, b = read_checkpoint(tmp_path / "w2" / CKPT), read_checkpoint(tmp_path / "w1" / CKPT)
    for k in a["model"]:  # TF32 is off by default for matmuls; the all-reduce sums in another order
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-4, rtol=1e-3, msg=k)

    r = torchrun(2, [*TINY, "--epochs", "1", "--out-dir", str(tmp_path / "bf16")])  # bf16 autocast
    assert r.returncode == 0, r.stderr[-3000:]
    out = train(parse_args([*TINY, "--epochs", "2", "--out-dir", str(tmp_path / "bf16"), "--resume"]))
    assert out["steps"] == 4 and out["world_size"] == 1 and math.isfinite(out["best_val"])


@pytest.mark.gpu
def test_torchrun_with_one_process_is_the_plain_run(tmp_path):
    r = torchrun(1, [*TINY, "--epochs", "1", "--out-dir", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks" not in r.stdout and read_checkpoint(tmp_path / CKPT)["world_size"] == 1


@pytest.mark.gpu
@two_gpus
def test_sweep_spreads_over_two_gpus(tmp_path):
    args = ["--quick", "--levels", "model", "--res", "16", "32", "--backends", "mamba_ssm", "sdpa", "--no-flops",
            "--global-warmup", "0.5", "--gpus", "2", "--out", str(tmp_path)]  # fmt: skip
    assert sweep.main(args) == 0
    df = pd.DataFrame(json.loads((tmp_path / "raw" / "sweep_B2_bf16.json").read_text())["rows"])
    assert set(df.loc[df["status"] == "ok", "device_index"]) == {0, 1}
    assert "the rows ran on 2 devices" in (tmp_path / "README.md").read_text()


@pytest.mark.gpu
@two_gpus
def test_ddp_scaling_on_two_gpus(tmp_path):
    args = ["--nproc", "2", "--cases", "v4:32:8", "--preset", "tiny", "--steps", "5", "--warmup", "2",
            "--out", str(tmp_path)]  # fmt: skip
    assert ddp_scaling.main(args) == 0
    df = pd.read_csv(tmp_path / "ddp_scaling.csv")
    assert list(df["world"]) == [1, 2] and set(df["status"]) == {"ok"} and list(df["backend"]) == ["-", "nccl"]
