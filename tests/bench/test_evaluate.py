"""bench.evaluate and bench.interp on the CPU: the interpolation floor, the metrics, an evaluation of two tiny
checkpoints end to end (CSV / markdown / PNG), and every bad input exits 2 with one line."""

import numpy as np
import pandas as pd
import pytest
import torch

from bench.evaluate import (
    PSNR_CAP,
    EvalConfig,
    image_metrics,
    load_models,
    main,
    paired_delta,
    parse_resolutions,
    run_evaluation,
    ssim_window,
    summarize,
)
from bench.interp import interpolate, interpolate_image
from models.common import ConfigError
from models.data import pixel_coords, split_pixels
from models.train import parse_args, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/bench/conftest.py


# ----------------------------------------------------------------------------------------------
# The interpolation floor
# ----------------------------------------------------------------------------------------------


def _smooth(r: int) -> torch.Tensor:
    """A smooth (3, r, r) image in [-1, 1]."""
    xy = pixel_coords(r)
    x, y = xy[:, 0], xy[:, 1]
    chans = [torch.sin(2 * x + y), torch.cos(3 * y) * 0.8, 0.5 * x * y - 0.2]
    return torch.stack(chans).reshape(3, r, r).clamp(-1, 1)


def test_linear_beats_nearest_on_a_smooth_image():
    img = _smooth(32)
    obs = split_pixels(32 * 32, 0.2, torch.Generator().manual_seed(0))[0]
    err = {m: ((interpolate_image(img, obs, 32, m) - img) ** 2).mean().item() for m in ("nearest", "linear")}
    assert err["linear"] < 0.5 * err["nearest"], err
    hr = _smooth(64)  # upsampling: the same smooth function on a denser grid
    err_hr = {m: ((interpolate_image(img, obs, 64, m) - hr) ** 2).mean().item() for m in ("nearest", "linear")}
    assert err_hr["linear"] < err_hr["nearest"], err_hr


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_interpolation_is_exact_at_observed_pixels_and_finite_everywhere(method):
    img = _smooth(16)
    obs = split_pixels(16 * 16, 0.2, torch.Generator().manual_seed(1))[0]
    out = interpolate_image(img, obs, 16, method)
    assert out.shape == img.shape and torch.isfinite(out).all()  # outside the hull: nearest fill, no NaN
    torch.testing.assert_close(out.flatten(1)[:, obs], img.flatten(1)[:, obs], atol=1e-5, rtol=0)


def test_interpolation_degenerate_inputs():
    pts, vals = np.array([[0.2, 0.2], [0.8, 0.8]]), np.array([[0.0, 0, 0], [1, 1, 1]])
    out = interpolate(pts, vals, np.array([[0.25, 0.2], [0.8, 0.75]]), "linear")  # 2 points: no triangulation
    np.testing.assert_allclose(out, [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ConfigError):
        interpolate(pts, vals, pts, "cubic")


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [8, 16, 33])
def test_metrics_on_identical_images(side):
    img = _smooth(side)
    m = image_metrics(img, img.clone())
    assert m["mse"] == 0 and m["psnr"] == PSNR_CAP and m["ssim"] == pytest.approx(1.0)


def test_metrics_on_different_images():
    a = _smooth(16)
    b = (a + 0.1).clamp(-1, 1)
    m = image_metrics(a, b)
    mse = ((a - b) ** 2).mean().item()
    assert m["mse"] == pytest.approx(mse, rel=1e-5)
    assert m["psnr"] == pytest.approx(10 * np.log10(4 / mse), rel=1e-5)  # data range 2 ([-1, 1])
    assert 0 < m["ssim"] < 1


def test_ssim_window_fits_small_images():
    assert [ssim_window(s) for s in (8, 7, 6, 16, 128)] == [7, 7, 5, 7, 7]


def test_parse_resolutions():
    assert parse_resolutions("64,96,128") == (64, 96, 128)
    assert parse_resolutions(["64", "96,128"]) == (64, 96, 128)
    for bad in ("abc", "4", "0,64", "-3"):
        with pytest.raises(ConfigError):
            parse_resolutions(bad)


def test_paired_delta_pairs_by_image():
    rows = [{"method": m, "estimator": "mean", "resolution": 16, "image": i, "psnr": base + i}
            for m, base in (("v1", 20.0), ("v4", 21.5)) for i in range(4)]  # fmt: skip
    d = paired_delta(pd.DataFrame(rows), "v4", "v1")
    assert d["delta"].iloc[0] == pytest.approx(1.5) and d["sem"].iloc[0] == pytest.approx(0.0)


def test_paired_delta_by_source_averages_each_photographs_crops_first():
    # two photographs; v4 is ahead on photograph 0's crops and behind on photograph 1's
    deltas = {0: [1.0, 3.0], 1: [-0.5, -1.5]}
    rows = [{"method": m, "estimator": "mean", "resolution": 16, "image": 2 * s + j, "source": s,
             "psnr": 20.0 + (d[j] if m == "v4" else 0.0)}
            for m in ("v1", "v4") for s, d in deltas.items() for j in range(2)]  # fmt: skip
    per_crop = paired_delta(pd.DataFrame(rows), "v4", "v1").iloc[0]
    per_photo = paired_delta(pd.DataFrame(rows), "v4", "v1", unit="source").iloc[0]
    assert (per_crop["n"], per_crop["wins"]) == (4, 2) and per_crop["delta"] == pytest.approx(0.5)
    assert (per_photo["n"], per_photo["wins"]) == (2, 1) and per_photo["delta"] == pytest.approx(0.5)
    assert per_photo["sem"] == pytest.approx(1.5)  # std of (2.0, -1.0) / √2
    old = pd.DataFrame(rows).drop(columns="source")  # data saved before the column existed
    assert paired_delta(old, "v4", "v1", unit="source").empty


# ----------------------------------------------------------------------------------------------
# End to end on tiny checkpoints
# ----------------------------------------------------------------------------------------------

TINY = ["--preset", "tiny", "--resolution", "16", "--batch-size", "4", "--train-samples", "8",
        "--val-samples", "4", "--max-steps", "2", "--epochs", "1", "--quiet", "--save-every", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    for model in ("v1", "v4"):
        train(parse_args(["--model", model, "--out-dir", str(d), *TINY]))
    return {
        "v1": d / "checkpoints_mamba/mamba_best.pth",
        "v4": d / "checkpoints_transformer_v4/transformer_v4_best.pth",
    }


def test_run_evaluation_rows_and_observed_pixels_kept(ckpts):
    models = load_models(ckpts, torch.device("cpu"))
    cfg = EvalConfig(resolutions=(24,), num_samples=3, steps=2, mean_draws=2, batch=2, show=2, progress=False)
    res = run_evaluation(models, cfg, torch.device("cpu"))
    # 4 methods (nearest, linear, V1, V4) → 6 (method, estimator) pairs, × 2 resolutions × 3 images
    assert len(res.per_image) == 6 * 2 * 3 and res.train_res == 16
    s = summarize(res.per_image, res.timing)
    assert len(s) == 12 and (s["n"] == 3).all() and (s["sec_per_image"] > 0).all()
    assert set(s["resolution"]) == {16, 24} and s[["psnr_mean", "ssim_mean", "mse_mean"]].notna().all().all()
    # the same run twice: the same numbers (fixed crops, masks and noise)
    again = run_evaluation(models, cfg, torch.device("cpu"))
    pd.testing.assert_series_equal(again.per_image["psnr"], res.per_image["psnr"])
    assert set(res.panels[24]) >= {"observed (16²)", "linear interp", "V1 mean", "V4 sample", "truth (24²)"}


def test_cli_writes_csv_markdown_and_grids(ckpts, tmp_path):
    out = tmp_path / "out"
    rc = main(["--v1_checkpoint", str(ckpts["v1"]), "--v4_checkpoint", str(ckpts["v4"]), "--num_samples", "2",
               "--steps", "2", "--method", "euler", "--mean-draws", "1", "--resolutions", "24", "--device", "cpu",
               "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    for f in ("eval.csv", "eval_per_image.csv", "eval.md", "eval_samples_res16.png", "eval_samples_sr24.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    df = pd.read_csv(out / "eval.csv")
    assert {"psnr_mean", "psnr_std", "ssim_mean", "mse_mean", "sec_per_image"} <= set(df.columns)
    assert set(df["method"]) == {"nearest", "linear", "v1", "v4"}
    md = (out / "eval.md").read_text()
    assert "linear interp" in md and "V4 − V1" in md and "eval_samples_sr24.png" in md


def test_checkpoint_per_model_any_order_and_baseline(ckpts, tmp_path):
    """--checkpoint MODEL=PATH, --models in any order, another baseline: the same numbers as the spec's flags."""
    common = ["--num_samples", "2", "--steps", "1", "--mean-draws", "1", "--resolutions", "16", "--device", "cpu",
              "--quiet", "--show", "1"]  # fmt: skip
    spec = tmp_path / "spec"
    assert main(["--v1_checkpoint", str(ckpts["v1"]), "--v4_checkpoint", str(ckpts["v4"]), *common,
                 "--out", str(spec)]) == 0  # fmt: skip
    new = tmp_path / "new"
    assert main(["--checkpoint", f"v4={ckpts['v4']}", "--checkpoint", f"v1={ckpts['v1']}", "--models", "v4", "v1",
                 "--baseline", "v4", *common, "--out", str(new)]) == 0  # fmt: skip
    key = ["method", "estimator", "resolution", "image"]
    a = pd.read_csv(spec / "eval_per_image.csv").sort_values(key, ignore_index=True)
    b = pd.read_csv(new / "eval_per_image.csv").sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    md = (new / "eval.md").read_text()
    assert md.startswith("# Evaluation: V4 (Transformer), V1 (Mamba)") and "V1 − V4 PSNR" in md and "V4 − V1" not in md
    rows = [line for line in md.splitlines() if line.startswith("| 16² (train)")]
    assert [r.split(" | ")[1] for r in rows] == [
        "nearest interp", "linear interp", "V4 (Transformer), posterior mean", "V1 (Mamba), posterior mean",
        "V4 (Transformer), sample", "V1 (Mamba), sample",
    ]  # fmt: skip


def test_one_checkpoint_is_enough(ckpts, tmp_path):
    rc = main(["--v4-checkpoint", str(ckpts["v4"]), "--num-samples", "1", "--steps", "1", "--mean-draws", "1",
               "--resolutions", "16", "--out", str(tmp_path), "--prefix", "only_v4", "--quiet"])  # fmt: skip
    assert rc == 0
    assert set(pd.read_csv(tmp_path / "only_v4.csv")["method"]) == {"nearest", "linear", "v4"}


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "give a checkpoint per model: --checkpoint MODEL=PATH"),
        (["--checkpoint", "{v1}"], "--checkpoint: must be MODEL=PATH"),
        (["--checkpoint", "v9={v1}"], "--checkpoint: unknown model 'v9'"),
        (["--checkpoint", "v1={v1}", "--checkpoint", "v1={v1}"], "--checkpoint v1=... given twice"),
        (["--checkpoint", "v1={v1}", "--v1_checkpoint", "{v1}"], "V1's checkpoint given twice"),
        (["--checkpoint", "v1={v1}", "--models", "v1", "v4"], "--models v4: no checkpoint"),
        (["--checkpoint", "v1={v1}", "--checkpoint", "v4={v4}", "--models", "v4"], "not in --models v4"),
        (["--checkpoint", "v1={v1}", "--baseline", "v4"], "--baseline 'v4' is not one of --models v1"),
        (["--checkpoint", "v4={v1}"], "not transformer_v4 weights"),
        (["--v1_checkpoint", "/nonexistent/mamba_best.pth"], "does not exist"),
        (["--v4_checkpoint", "{v1}"], "not transformer_v4 weights"),
        (["--v1_checkpoint", "{v1}", "--resolutions", "abc"], "resolution must be an integer"),
        (["--v1_checkpoint", "{v1}", "--resolutions", "4"], "resolution must be >= 8"),
        (["--v1_checkpoint", "{v1}", "--resolutions", "12"], ">= the training resolution 16"),
        (["--v1_checkpoint", "{v1}", "--num_samples", "0"], "--num-samples: must be an integer >= 1, got 0"),
        (["--v1_checkpoint", "{v1}", "--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        (["--v1_checkpoint", "{v1}", "--method", "rk4"], "invalid choice"),
        (["--v1_checkpoint", "{v1}", "--device", "tpu"], "unknown device"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(ckpts, tmp_path, capsys, args, needle):
    args = [a.format(v1=ckpts["v1"], v4=ckpts["v4"]) for a in args]
    assert main([*args, "--out", str(tmp_path / "o"), "--quiet"]) == 2  # argparse errors too: an exit code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bench.evaluate: error:"), err
    assert needle in err, err
    assert not (tmp_path / "o").exists()  # nothing written


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--v1_checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt or unreadable" in err
