"""The sweep spread over several GPUs, checked on CPU with fakes: the plan's shares are deterministic, complete,
disjoint and in priority order; the workers' part files merge into the single-run table; --gpus is checked."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from bench import multi_gpu, report, sweep
from models.common import ConfigError

TINY = ["--quick", "--models", "v1", "v4", "--backends", "reference", "sdpa", "--levels", "mixer", "--res", "8", "12"]


def settings(tmp_path, *extra):
    return sweep.settings_from_args(sweep.build_parser().parse_args([*TINY, "--out", str(tmp_path), *extra]))


def table(out) -> pd.DataFrame:
    rows = json.loads((out / "raw" / "sweep_B2_fp32.json").read_text())["rows"]
    df = pd.DataFrame(rows)
    return df.set_index(list(sweep.KEY)).sort_index()


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shares_are_deterministic_complete_disjoint_and_in_plan_order(monkeypatch, world):
    monkeypatch.setattr(sweep, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(sweep, "gpu_count", lambda: 0)
    s = sweep.settings_from_args(sweep.build_parser().parse_args([]))  # the full GPU plan
    dev = torch.device("cuda")
    plan = sweep.make_plan(s, dev)

    def cost(u):
        return sweep.unit_seconds(u, s, dev)

    shares = multi_gpu.share_plan(plan, world, cost)
    assert shares == multi_gpu.share_plan(sweep.make_plan(s, dev), world, cost)  # deterministic
    ids = [id(u) for share in shares for u in share]
    assert sorted(ids) == sorted(id(u) for u in plan) and len(set(ids)) == len(plan)  # complete, disjoint
    pos = {id(u): i for i, u in enumerate(plan)}
    for share in shares:
        assert [pos[id(u)] for u in share] == sorted(pos[id(u)] for u in share)  # priority order kept
    loads = [sum(cost(u) for u in share) for share in shares]
    assert max(loads) - min(loads) <= max(cost(u) for u in plan) + 1e-9  # greedy: within one unit of each other


def test_share_plan_ties_and_zero_cost_units_spread():
    assert multi_gpu.share_plan(list("abcd"), 2, lambda u: 0.0) == [["a", "c"], ["b", "d"]]
    assert multi_gpu.share_plan(list("abc"), 2, {"a": 5, "b": 1, "c": 1}.get) == [["a"], ["b", "c"]]
    with pytest.raises(ValueError):
        multi_gpu.share_plan([], 0, len)


def fake_spawn(fn, args, nprocs):
    """torch.multiprocessing's role, on CPU: each worker's share in turn, in this process (cuda:i → cpu)."""
    s, world = args
    assert fn is multi_gpu._worker and nprocs == world
    for i in range(nprocs):
        sweep._run_sweep(replace(s, shard=(i, world), render=False))


def test_two_workers_merge_into_the_single_run_table_and_a_rerun_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert sweep.main([*TINY, "--out", str(one), "--no-flops"]) == 0
    multi_gpu.run_parallel(settings(two, "--no-flops"), 2, spawn=fake_spawn)
    a, b = table(one), table(two)
    assert list(a.index) == list(b.index) and (a["status"] == b["status"]).all()  # same rows, same outcome
    assert not list((two / "raw").glob("*.gpu*"))  # the parts are folded in
    page = (two / "README.md").read_text()
    assert "**Devices.**" in page and "Rows from" not in page  # one call on two GPUs: one run_id, not two calls
    assert b["run_id"].nunique() == 1
    runs = json.loads((two / "raw" / "sweep_B2_fp32.json").read_text())["runs"]
    assert sorted(r["shard"][0] for r in runs) == [0, 1] and all(r["shard"][1] == 2 for r in runs)

    # rerun: nothing left to measure (every row is done, in the merged file); the table stays as it is
    before = b["run_id"].copy()
    multi_gpu.run_parallel(settings(two, "--no-flops"), 2, spawn=fake_spawn)
    assert (table(two)["run_id"] == before).all()


def test_leftover_parts_of_an_interrupted_run_are_merged_first(tmp_path):
    s = settings(tmp_path, "--no-flops")
    sweep._run_sweep(replace(s, shard=(1, 2), render=False))  # GPU 1 finished, GPU 0 never ran: its part is left
    (part,) = multi_gpu.part_paths(tmp_path / "raw", s.tag)
    assert part.name == "sweep_B2_fp32.gpu1.json"
    done = {sweep.row_key(r) for r in json.loads(part.read_text())["rows"] if r["status"] == "ok"}
    n = sweep.merge_parts(tmp_path, s.tag)
    assert n == len(done) > 0 and not multi_gpu.part_paths(tmp_path / "raw", s.tag)
    store = sweep.RowStore(tmp_path, s.tag)
    assert all(store.done(k) for k in done)


def test_merge_keeps_a_measured_row_over_a_skipped_copy(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    row = {"model": "v1", "backend": "reference", "level": "mixer", "res": 8, "batch": 2, "dtype": "fp32",
           "kind": "fwd", "variant": "", "schema": sweep.SCHEMA}  # fmt: skip
    (raw / "sweep_B2_fp32.json").write_text(json.dumps({"runs": [], "rows": [{**row, "status": "ok"}]}))
    (raw / "sweep_B2_fp32.gpu1.json").write_text(json.dumps({"runs": [{"shard": [1, 2]}],
                                                             "rows": [{**row, "status": "skipped"}]}))  # fmt: skip
    sweep.merge_parts(tmp_path, "B2_fp32")
    data = json.loads((raw / "sweep_B2_fp32.json").read_text())
    assert [r["status"] for r in data["rows"]] == ["ok"] and data["runs"] == [{"shard": [1, 2]}]


def test_gpus_flag():
    assert multi_gpu.pick_gpus(None, "auto", 2) == 2 and multi_gpu.pick_gpus(None, "auto", 1) == 1
    assert multi_gpu.pick_gpus(None, "cuda:1", 4) == 1 and multi_gpu.pick_gpus(None, "cpu", 0) == 1
    assert multi_gpu.pick_gpus(1, "auto", 0) == 1
    for flag, device, n, words in ((2, "auto", 0, "needs CUDA GPUs"), (3, "auto", 2, "this host has 2 GPUs"),
                                   (2, "cuda:1", 2, "pass --device auto")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            multi_gpu.pick_gpus(flag, device, n)


def test_gpus_on_cpu_is_a_one_line_error(capsys, tmp_path):
    assert sweep.main([*TINY, "--gpus", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 2 needs CUDA GPUs" in err[0]


def test_devices_line():
    assert report.devices_line(pd.DataFrame({"status": ["ok"]})) == ""  # older sweeps: no device columns
    one = pd.DataFrame({"status": ["ok", "ok"], "device_index": [0, 0], "device_name": ["H200", "H200"]})
    assert report.devices_line(one) == "**Devices.** every row that records its device ran on cuda:0 H200 (2 rows)."
    two = pd.DataFrame({"status": ["ok", "oom", "skipped"], "device_index": [0, 1, 1], "device_name": ["H200"] * 3})
    line = report.devices_line(two)
    assert "2 devices" in line and "cuda:0 H200 (1 rows)" in line and "cuda:1 H200 (1 rows)" in line
    # a resumed sweep whose earlier calls predate the device columns: those rows are not a device of their own
    mixed = pd.DataFrame({"status": ["ok"] * 3, "device_index": [None, None, 0], "device_name": [None, None, "H200"]})
    line = report.devices_line(mixed)
    assert (
        "cuda:0 H200 (1 rows); 2 rows of earlier calls predate" in line
        and "cpu" not in line
        and "2 devices" not in line
    )
