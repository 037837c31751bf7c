"""A 2-step training run, checkpoints, resume, sampling; every bad input exits 2 with one line."""

import subprocess
import sys
from dataclasses import fields

import pytest
import torch

from models.checkpoint import model_from_checkpoint, read_checkpoint
from models.sample import sample
from models.train import GRAD_CLIP, TrainConfig, build_parser, config_overrides, main, parse_args, train, train_step

TINY = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "4", "--quiet", "--save-every", "1"]  # fmt: skip


def _train(tmp_path, model, *extra):
    return train(parse_args(["--model", model, "--out-dir", str(tmp_path), *TINY, *extra]))


@pytest.mark.parametrize("model,name", [("v1", "mamba"), ("v4", "transformer_v4")])
def test_two_steps_write_checkpoints_log_and_curve(tmp_path, model, name):
    out = _train(tmp_path, model, "--epochs", "1")
    assert out["steps"] == 2
    d = tmp_path / f"checkpoints_{name}"
    for f in (f"{name}_best.pth", f"{name}_latest.pth", f"{name}_epoch_0000.pth", f"{name}_log.csv",
              f"{name}_loss.png"):  # fmt: skip
        assert (d / f).is_file(), f
    ckpt = read_checkpoint(d / f"{name}_latest.pth", name)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and "optimizer" in ckpt and "rng" in ckpt


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "a"
    _train(straight, "v4", "--epochs", "2", "--max-steps", "4")
    resumed = tmp_path / "b"
    _train(resumed, "v4", "--epochs", "1", "--max-steps", "4")  # same schedule, stopped after epoch 0
    out = _train(resumed, "v4", "--epochs", "2", "--max-steps", "4", "--resume")
    assert out["steps"] == 4
    a = read_checkpoint(straight / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    b = read_checkpoint(resumed / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    assert b["step"] == a["step"] == 4
    for k in a["model"]:  # same data order, noise and dropout after the resume: the same weights
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-6, rtol=1e-5)


def test_sampler_runs_at_denser_grid(tmp_path):
    _train(tmp_path, "v1", "--epochs", "1")
    model, ckpt = model_from_checkpoint(tmp_path / "checkpoints_mamba/mamba_best.pth", "v1")
    assert ckpt["resolution"] == 16
    q = torch.rand(1, 64 * 64, 2)
    ic, iv = torch.rand(1, 50, 2), torch.rand(1, 50, 3)
    for method in ("euler", "heun"):
        x = sample(model, q, ic, iv, steps=2, method=method)
        assert x.shape == (1, 4096, 3) and torch.isfinite(x).all()


class _Field(torch.nn.Module):
    """A known velocity field v(x, t) = a·x + b (counts its evaluations): the sampler's arithmetic, checkable."""

    def __init__(self, a=-0.5, b=0.25):
        super().__init__()
        self.a, self.b, self.calls = a, b, []

    def forward(self, x, qc, t, ic, iv):
        self.calls.append(float(t[0]))
        return self.a * x + self.b


@pytest.mark.parametrize("steps", [1, 4])
def test_samplers_integrate_and_heun_ends_with_an_euler_step(steps):
    q, ic, iv = torch.rand(1, 5, 2), torch.rand(1, 3, 2), torch.rand(1, 3, 3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    f = _Field()
    x = sample(f, q, ic, iv, steps=steps, method="heun", generator=g, amp=False)
    assert len(f.calls) == 2 * steps - 1 and max(f.calls) < 1  # never evaluated at t = 1
    want, h = x0.clone(), 1 / steps
    for i in range(steps):  # the same recursion by hand
        v = f.a * want + f.b
        if i < steps - 1:
            v = 0.5 * (v + f.a * (want + h * v) + f.b)
        want = want + h * v
    torch.testing.assert_close(x, want)


def test_checkpoint_without_prediction_field_loads_as_velocity(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    path = tmp_path / "checkpoints_transformer_v4/transformer_v4_latest.pth"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["config"]["prediction"]  # as written before x1-prediction existed
    torch.save(ckpt, path)
    model, _ = model_from_checkpoint(path, "v4")
    assert model.cfg.prediction == "velocity"


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "models.train", *args], capture_output=True, text=True)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "v9"], "unknown model"),
        (["--model", "v4", "--attn-backend", "nope"], "unknown attention backend"),
        (["--model", "v1", "--mixer-backend", "nope"], "unknown mixer backend"),
        (["--model", "v4", "--resolution", "4"], "--resolution: must be an integer >= 8"),
        (["--model", "v4", "--resolution", "32.5"], "must be an integer >= 8, got '32.5'"),
        (["--model", "v4", "--observed-frac", "1.5"], "--observed-frac: must be a finite number > 0 and < 1"),
        (["--model", "v4", "--data", "/nonexistent/folder"], "does not exist"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, args, needle):
    rc, err = _cli(*args, "--out-dir", str(tmp_path), *TINY[:2])
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err


def test_empty_data_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    rc, err = _cli("--model", "v4", "--data", str(tmp_path / "imgs"), "--out-dir", str(tmp_path))
    assert rc == 2 and "need at least 2" in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint_and_wrong_model(tmp_path):
    _train(tmp_path, "v1", "--epochs", "1")
    d = tmp_path / "checkpoints_mamba"
    good = (d / "mamba_latest.pth").read_bytes()
    from models.common import ConfigError

    with pytest.raises(ConfigError, match="v1 \\(mamba\\) weights, not transformer_v4 weights; v4 loads v4"):
        model_from_checkpoint(d / "mamba_best.pth", "v4")  # V1 weights given to V4
    (d / "mamba_latest.pth").write_bytes(good[: len(good) // 2])
    rc = main(["--model", "v1", "--out-dir", str(tmp_path), *TINY, "--epochs", "2", "--resume"])
    assert rc == 2
    with pytest.raises(ConfigError, match="corrupt"):
        read_checkpoint(d / "mamba_latest.pth")
    assert (d / "mamba_best.pth").read_bytes()  # untouched


def test_fresh_run_never_overwrites_existing_checkpoints(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    best = tmp_path / "checkpoints_transformer_v4/transformer_v4_best.pth"
    before = best.read_bytes()
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "1"])
    assert rc == 2 and best.read_bytes() == before


def test_failed_run_leaves_good_checkpoint(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    best = tmp_path / "checkpoints_transformer_v4/transformer_v4_best.pth"
    before = best.read_bytes()
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "3", "--resume",
               "--data", str(tmp_path / "nope")])  # fmt: skip
    assert rc == 2 and best.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# Divergence: a non-finite loss or gradient stops the run (or skips the step); no NaN weights are saved
# ----------------------------------------------------------------------------------------------


def _poison_after(monkeypatch, calls: int):
    """flow_matching_loss returns NaN from its (calls + 1)-th training call on."""
    import models.train as mt

    real, n = mt.flow_matching_loss, {"i": 0}

    def loss(model, batch, generator=None):
        out = real(model, batch, generator)
        if generator is None:  # training calls (validation passes its own generator)
            n["i"] += 1
            if n["i"] > calls:
                return out * float("nan")
        return out

    monkeypatch.setattr(mt, "flow_matching_loss", loss)


def test_divergence_stops_in_one_line_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                          capsys):  # fmt: skip
    _train(tmp_path, "v4", "--epochs", "1")  # 2 good steps, checkpoints written
    d = tmp_path / "checkpoints_transformer_v4"
    before = {p.name: p.read_bytes() for p in d.glob("*.pth")}
    _poison_after(monkeypatch, 1)
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "3", "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert "training diverged at step 4 (epoch 1): loss nan" in err and "transformer_v4_latest.pth is kept" in err
    assert {p.name: p.read_bytes() for p in d.glob("*.pth")} == before  # nothing written over them


def test_a_huge_lr_diverges_and_is_caught(tmp_path, capsys):
    rc = main(["--model", "v4", "--out-dir", str(tmp_path), *TINY, "--epochs", "3", "--lr", "1e12",
               "--warmup-steps", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "training diverged at step" in err and len(err.splitlines()) == 1, err
    for p in (tmp_path / "checkpoints_transformer_v4").glob("*.pth"):  # whatever was saved is finite
        assert all(torch.isfinite(t).all() for t in read_checkpoint(p)["model"].values() if t.is_floating_point())


def test_nan_policy_skip_skips_the_step_then_gives_up(tmp_path, monkeypatch, capsys):
    import models.train as mt

    real, n = mt.flow_matching_loss, {"i": 0}

    def loss(model, batch, generator=None):  # the 2nd training step only is NaN
        out = real(model, batch, generator)
        if generator is None:
            n["i"] += 1
            return out * float("nan") if n["i"] == 2 else out
        return out

    monkeypatch.setattr(mt, "flow_matching_loss", loss)
    out = _train(tmp_path, "v4", "--epochs", "2", "--nan-policy", "skip")
    assert out["steps"] == 3 and torch.isfinite(torch.tensor(out["best_val"]))  # the NaN batch is dropped
    _poison_after(monkeypatch, 0)
    rc = main(["--model", "v4", "--out-dir", str(tmp_path / "b"), *TINY, "--epochs", "30", "--nan-policy", "skip"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "21 non-finite steps in a row" in err and "latest.pth is kept" in err, err  # unchanged weights


# ----------------------------------------------------------------------------------------------
# Resume checks its run
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    _train(tmp_path, "v4", "--epochs", "1")
    return tmp_path


@pytest.mark.parametrize(
    "extra,env,needle",
    [
        (["--resolution", "24"], {}, "--resume: --resolution is 24 but the run in"),
        (["--preset", "small"], {}, "--resume: --preset is small but the run"),
        (["--observed-frac", "0.3"], {}, "--resume: --observed-frac is 0.3 but the run"),
        (["--batch-size", "2"], {}, "--resume: --batch-size is 2 but the run"),
        (["--seed", "7"], {}, "--resume: --seed is 7 but the run"),
        (["--data", "{imgs}"], {}, "--resume: --data is {imgs} but the run in"),
        (["--num-layers", "3"], {}, "the model config differs from the run in"),
        ([], {"NUM_HEADS": "4"}, "(now vs then: num_heads 4 vs 2)"),
    ],
)
def test_resume_refuses_a_different_run_in_one_line(run_dir, monkeypatch, capsys, extra, env, needle):
    imgs = run_dir / "imgs"
    imgs.mkdir()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    d = run_dir / "checkpoints_transformer_v4"
    before = (d / "transformer_v4_latest.pth").read_bytes()
    extra = [a.format(imgs=imgs) for a in extra]
    rc = main(["--model", "v4", "--out-dir", str(run_dir), *TINY, *extra, "--epochs", "2", "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle.format(imgs=imgs) in err, err
    assert (d / "transformer_v4_latest.pth").read_bytes() == before


def test_resume_applies_and_logs_a_new_lr_and_epochs(run_dir, capsys):
    out = _train(run_dir, "v4", "--epochs", "2", "--lr", "3e-4", "--resume")
    said = capsys.readouterr().out
    assert "resume: --lr changes from 0.0001 to 0.0003" in said and "resume: --epochs changes from 1 to 2" in said
    ckpt = read_checkpoint(run_dir / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    assert out["steps"] == 4 and ckpt["args"]["lr"] == 3e-4
    assert ckpt["scheduler"]["base_lrs"] == [3e-4]  # the new lr is the one the schedule uses, not just recorded


def test_resume_without_lr_keeps_the_runs_lr(tmp_path, capsys):
    _train(tmp_path, "v4", "--epochs", "1", "--lr", "5e-4")
    _train(tmp_path, "v4", "--epochs", "2", "--resume")
    assert "--lr changes" not in capsys.readouterr().out
    ckpt = read_checkpoint(tmp_path / "checkpoints_transformer_v4/transformer_v4_latest.pth")
    assert ckpt["args"]["lr"] == 5e-4 and ckpt["scheduler"]["base_lrs"] == [5e-4]


def test_resuming_a_finished_run_says_so(run_dir, capsys):
    out = _train(run_dir, "v4", "--epochs", "1", "--resume")
    assert out["steps"] == 2 and "is finished (epoch 1 of 1, step 2 of 2)" in capsys.readouterr().out


def test_resume_from_best_an_epoch_or_a_path(run_dir):
    d = run_dir / "checkpoints_transformer_v4"
    for which in ("best", "epoch_0000", str(d / "transformer_v4_epoch_0000.pth")):
        assert _train(run_dir, "v4", "--epochs", "2", "--resume", which)["steps"] == 4


def test_cpu_default_batch_is_announced_and_fits(tmp_path, capsys):
    from models.train import CPU_BATCH

    tiny = TINY[:4] + TINY[6:]  # no --batch-size
    args = parse_args(["--model", "v4", "--out-dir", str(tmp_path), *tiny, "--train-samples", "16", "--max-steps", "1",
                       "--epochs", "1"])  # fmt: skip
    assert args.batch_size is None
    train(args)
    assert args.batch_size == CPU_BATCH and f"CPU run: --batch-size {CPU_BATCH}" in capsys.readouterr().out


def test_cpu_default_batch_shrinks_to_the_memory_there_is(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEM_BUDGET_GB", "0.9")  # the 0.6 GB process base + about 2 tiny-V4 samples at 48²
    args = parse_args(["--model", "v4", "--preset", "tiny", "--resolution", "48", "--train-samples", "8",
                       "--val-samples", "2", "--quiet", "--out-dir", str(tmp_path), "--max-steps", "1",
                       "--epochs", "1"])  # fmt: skip
    train(args)
    assert 1 <= args.batch_size < 8 and f"--batch-size {args.batch_size}" in capsys.readouterr().out
    rc = main(["--model", "v4", "--preset", "tiny", "--resolution", "48", "--batch-size", "8", "--train-samples", "8",
               "--val-samples", "2", "--quiet", "--out-dir", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"--batch-size {args.batch_size} fits" in err and "$MEM_BUDGET_GB" in err, err


# ----------------------------------------------------------------------------------------------
# The config object and the one training step
# ----------------------------------------------------------------------------------------------


def test_parser_and_train_config_agree(monkeypatch):
    """Every flag is a TrainConfig field with the same default (batch/lr/epochs: the dataclass's, without env)."""
    for var in ("BATCH_SIZE", "LR", "EPOCHS"):
        monkeypatch.delenv(var, raising=False)
    flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert flags == {f.name for f in fields(TrainConfig)}
    assert parse_args(["--model", "v4"]) == TrainConfig(model="v4")
    monkeypatch.setenv("BATCH_SIZE", "32")
    assert parse_args(["--model", "v4"]).batch_size == 32  # the spec's env var, when the flag is absent
    assert parse_args(["--model", "v4", "--batch-size", "8"]).batch_size == 8  # the flag wins


def test_train_takes_a_config_object(tmp_path):
    cfg = TrainConfig(model="v4", preset="tiny", resolution=16, batch_size=4, train_samples=8, val_samples=4,
                      epochs=1, max_steps=1, out_dir=str(tmp_path), save_every=0, quiet=True)  # fmt: skip
    out = train(cfg)
    assert out["steps"] == 1
    ckpt = read_checkpoint(tmp_path / "checkpoints_transformer_v4/transformer_v4_best.pth")
    assert ckpt["args"]["max_steps"] == 1 and ckpt["args"]["model"] == "v4"


def _train_step_ref(model, batch_fn, opt, max_norm):
    """The step written out by hand: zero grads, loss, backward, clip the global norm, AdamW."""
    opt.zero_grad(set_to_none=True)
    loss = batch_fn()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    opt.step()
    return loss


@pytest.mark.parametrize("max_norm", [GRAD_CLIP, 1e-3, float("inf")])
def test_train_step_matches_the_hand_written_step_and_clips(max_norm):
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    x, y = 10 * torch.randn(8, 6), torch.randn(8, 3)  # large inputs: gradients well above the clip
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    for _ in range(3):
        la, norm = train_step(lambda: (a(x) - y).square().mean(), opt_a, torch.device("cpu"), grad_clip=max_norm)
        lb = _train_step_ref(b, lambda: (b(x) - y).square().mean(), opt_b, max_norm)
        torch.testing.assert_close(la, lb)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in a.parameters()]))
        assert after <= min(max_norm, norm) * (1 + 1e-4)  # the grads the optimizer saw were clipped
        assert max_norm == float("inf") or norm > max_norm  # the returned norm is the one before clipping
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_train_step_can_skip_a_non_finite_step():
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.tensor([[float("nan"), 0.0, 0.0]])
    loss, norm = train_step(lambda: net(x).sum(), opt, torch.device("cpu"), skip_nonfinite=True)
    assert not torch.isfinite(loss) and all(p.grad is None for p in net.parameters()) and not opt.state
    for p, q in zip(net.parameters(), before):
        torch.testing.assert_close(p.detach(), q)  # weights untouched
    loss, _ = train_step(lambda: net(torch.ones(1, 3)).sum(), opt, torch.device("cpu"), skip_nonfinite=True)
    assert torch.isfinite(loss) and opt.state  # a finite step is applied


def test_benchmark_step_is_the_training_step(monkeypatch):
    """bench.measure's training step goes through models.train.train_step (gradient clipping included)."""
    from bench import measure

    calls = []
    real = measure.train_step
    monkeypatch.setattr(measure, "train_step", lambda *a, **k: calls.append(a) or real(*a, **k))
    wl = measure.build_workload("v4", "sdpa", "model", "tiny")
    step = measure.make_train_step(wl, wl.inputs(2, 64, "cpu"), torch.device("cpu"), amp=False)
    step()
    assert len(calls) == 1 and calls[0][1] is step.optimizer


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["v1", "v4"])
def test_benchmark_step_on_cuda_matches_the_hand_written_step(model, device="cuda"):
    """On the GPU, bf16 autocast: the benchmark's step (bench.measure → train_step) and the step written out by
    hand from the same weights and batch give the same loss, the same clipped gradients (norm <= GRAD_CLIP) and,
    after three steps, the same weights."""
    from bench import measure
    from models.train import autocast_for, flow_matching_loss

    dev = torch.device(device)
    backend = (
        "sdpa" if model == "v4" else "reference" if measure.backend_problem("v1", "mamba_ssm", dev) else "mamba_ssm"
    )
    wl = measure.build_workload(model, backend, "model", "tiny", dev)
    ref = measure.build_workload(model, backend, "model", "tiny", dev)
    ref.module.load_state_dict(wl.module.state_dict())
    ref.module.train()
    inputs = wl.inputs(4, 256, dev)
    inputs["query_values"] = 50 * inputs["query_values"]  # targets far off: gradients well above the clip
    step = measure.make_train_step(wl, inputs, dev, amp=True)
    opt = torch.optim.AdamW(ref.trainable(), lr=1e-4, weight_decay=0.01)

    def ref_loss():
        with autocast_for(dev, True):
            return flow_matching_loss(ref.module, inputs)

    for i in range(3):
        torch.manual_seed(i)  # the loss draws its own noise and times: the same draws for both
        step()
        torch.manual_seed(i)
        _train_step_ref(ref.module, ref_loss, opt, GRAD_CLIP)
        grads = [p.grad for p in wl.module.parameters() if p.grad is not None]
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= GRAD_CLIP * (1 + 1e-3)
        for (name, p), q in zip(wl.module.named_parameters(), ref.module.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=5e-2, msg=name)
    for (name, p), q in zip(wl.module.named_parameters(), ref.module.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=name)


def test_flags_reach_every_model_whose_config_has_them():
    """No model-name branches: a flag goes to each model whose config has the field (V3's mixer backend too)."""
    given = {"mixer_backend": "reference", "attn_backend": "sdpa", "dim_feedforward": 64, "d_model": None}
    assert config_overrides("v3", given) == {"mixer_backend": "reference", "attn_backend": "sdpa", "d_model": None}
    assert config_overrides("v4", given) == {"attn_backend": "sdpa", "dim_feedforward": 64, "d_model": None}
