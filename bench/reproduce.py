"""Do two sweep runs agree? Matches their rows and prints the worst deviation.

    python -m bench.reproduce RUN_A RUN_B                 # results folders or raw/sweep_<tag>.json files
    python -m bench.reproduce results/ results/run2/ --tol 5 --out results/reproduce.md

Rows are matched on the sweep's key (model, backend, level, r, batch, dtype, kind and, where present, the
variant); both must be "ok". For each timed pair it reports |B/A − 1| in % of
    device_ms   the device time (CUDA-graph replay, else the profiler's kernel sum)
    median_ms   the eager wall time
and prints the worst deviation on (a) device-time rows, (b) wall-time rows at r ≥ --min-res (default 96), (c) all
wall-time rows, each with the row it comes from. Issue 10's bar: (a) and (b) within 5 %. --tol makes the exit
status 1 when (a) or (b) is worse than it.

Class (b) is then split by regime. A wall-time row is *host-affected* when, in either run, its wall time exceeds its
device time by more than --host-margin (default 5 %): the host (Python, autograd, kernel launches) then sets part
of the wall time, and the host's speed differs between machines and between moments on one machine (its own
rounds show it: `round_spread_pct`). The rest are *device-bound* in both runs. Each host-affected row at r ≥
--min-res is listed with its wall/device ratio and round spread in both runs. --exempt-host-bound holds only the
device-bound rows of (b) to --tol (the report still gives the strict class).

The header names each run's calls (run_id), commit(s) and GPU, and how many of its rows a rerun would still
measure (skipped by a time budget: "rerun to continue"). Issue 10's bar is about two *full* runs at *one*
commit: with --tol, a run with rows left, or runs at different commits, also make the exit status 1.

Device time is then taken per series and kind (device_shifts): a row outside the bar has *shifted* when its
deviation is more than 3 × the larger of its two replays' spreads across rounds (each run steady, the two apart:
something fixed per process, such as an autotuned kernel config), else it is scatter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from models.common import ConfigError
from models.utils import ArgParser, atomic_write_text, cli_main

KEY = ("model", "backend", "level", "res", "batch", "dtype", "kind")
EXTRA_KEY = ("variant",)  # present once the sweep has variants; matched on when both runs have it
TIMED = ("fwd", "train", "fwd_graph")


def _sweep_files(path: str | Path) -> list[Path]:
    """A run's sweep JSON files: the file itself, or a folder's raw/sweep_*.json (else its sweep_*.json)."""
    p = Path(path)
    return [p] if p.is_file() else sorted((p / "raw").glob("sweep_*.json")) or sorted(p.glob("sweep_*.json"))


def load_rows(path: str | Path) -> pd.DataFrame:
    """The rows of a run: a raw/sweep_*.json file, or every raw/sweep_*.json of a results folder."""
    files = _sweep_files(path)
    if not files:
        raise ConfigError(f"{path}: no sweep data (expected a raw/sweep_<tag>.json file or a folder holding raw/)")
    frames = []
    for f in files:
        try:
            rows = json.loads(f.read_text()).get("rows", [])
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{f}: not a sweep JSON file ({type(e).__name__})") from None
        frames.append(pd.DataFrame(rows))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty or not set(KEY) <= set(df.columns):
        raise ConfigError(f"{path}: no sweep rows (the files hold no rows with {', '.join(KEY)})")
    return df


def load_runs(path: str | Path) -> list[dict]:
    """The call records (bench.env's environment, one per sweep call) of a run, in file order."""
    out = []
    for f in _sweep_files(path):
        try:
            out += json.loads(f.read_text()).get("runs", [])
        except (OSError, json.JSONDecodeError):
            pass  # load_rows has already refused an unreadable file
    return out


def run_summary(rows: pd.DataFrame, runs: list[dict]) -> dict:
    """{calls, commits, gpus, rows, left}: what a run is made of, and how many rows a rerun would still measure."""
    from bench.sweep import rows_left

    return {
        "calls": [r.get("run_id") for r in runs if r.get("run_id")],
        "commits": sorted({str(r.get("git_commit") or "unknown") for r in runs}) or ["unknown"],
        "gpus": sorted({str(r.get("device_name") or r.get("gpu_name") or "?") for r in runs}),
        "rows": len(rows),
        "left": rows_left(rows.to_dict("records")),
    }


def _num(row, col: str) -> float:
    try:
        return float(row.get(col))
    except (TypeError, ValueError):
        return float("nan")


def _ratio(row, side: str) -> float:
    """wall / device time of one run's row (NaN where either is missing)."""
    wall, dev = _num(row, f"median_ms_{side}"), _num(row, f"device_ms_{side}")
    return wall / dev if wall > 0 and dev > 0 else float("nan")


def compare(a: pd.DataFrame, b: pd.DataFrame, min_res: int = 96, host_margin: float = 5.0) -> pd.DataFrame:
    """One line per matched timed row and metric: A, B and the deviation |B/A − 1| in %. Wall-time lines also get
    each run's wall/device ratio, round spread, and `host_affected`: a ratio above 1 + host_margin/100 in either run
    (a line without both device times counts as host-affected: nothing shows it device-bound)."""
    key = list(KEY) + [k for k in EXTRA_KEY if k in a and k in b]
    ok_a = a[(a["status"] == "ok") & a["kind"].isin(TIMED)]
    ok_b = b[(b["status"] == "ok") & b["kind"].isin(TIMED)]
    m = ok_a.merge(ok_b, on=key, suffixes=("_a", "_b"))
    out = []
    for _, row in m.iterrows():
        for metric in ("device_ms", "median_ms"):
            va, vb = row.get(f"{metric}_a"), row.get(f"{metric}_b")
            try:
                va, vb = float(va), float(vb)
            except (TypeError, ValueError):
                continue
            if not (va > 0 and vb > 0):
                continue
            line = {**{k: row[k] for k in key}, "metric": metric, "A": va, "B": vb,
                    "dev_pct": 100 * abs(vb / va - 1), "shift_pct": 100 * (vb / va - 1),
                    "large_r": int(row["res"]) >= min_res}  # fmt: skip
            if metric == "device_ms":  # the replay's own spread across its rounds (the device time's noise), and
                # where each run's device time comes from (a graph replay vs a profiler kernel sum: not one clock)
                line.update(graph_spread_a=_num(row, "graph_round_spread_pct_a"),
                            graph_spread_b=_num(row, "graph_round_spread_pct_b"),
                            same_source=str(row.get("device_source_a")) == str(row.get("device_source_b")))  # fmt: skip
            if metric == "median_ms":
                ra, rb = _ratio(row, "a"), _ratio(row, "b")
                limit = 1 + host_margin / 100
                line.update(wall_dev_a=ra, wall_dev_b=rb, spread_a=_num(row, "round_spread_pct_a"),
                            spread_b=_num(row, "round_spread_pct_b"),
                            host_affected=not (ra <= limit and rb <= limit),
                            host_frac_a=_num(row, "host_frac_a"), host_frac_b=_num(row, "host_frac_b"),
                            host_ms_a=_num(row, "host_ms_a"), host_ms_b=_num(row, "host_ms_b"),
                            run_id_a=str(row.get("run_id_a", "")), run_id_b=str(row.get("run_id_b", "")))  # fmt: skip
            out.append(line)
    return pd.DataFrame(out)


def _large_wall(cmp: pd.DataFrame, host: bool | None = None) -> pd.DataFrame:
    """Wall-time lines at r ≥ min_res; host=True / False: only the host-affected / device-bound ones."""
    if not len(cmp):
        return cmp
    sub = cmp[(cmp["metric"] == "median_ms") & cmp["large_r"]]
    if host is None:
        return sub
    return sub[sub["host_affected"].astype(bool) == host] if "host_affected" in sub else sub.iloc[0:0]


def worst(cmp: pd.DataFrame) -> dict[str, dict | None]:
    """The worst line of each class: device-time rows, wall-time rows at r ≥ min_res (all of them, then the
    device-bound and the host-affected ones), all wall-time rows."""
    classes = {
        "device time (all rows)": cmp[cmp["metric"] == "device_ms"] if len(cmp) else cmp,
        "wall time at r >= min_res": _large_wall(cmp),
        "wall time at r >= min_res, device-bound in both runs": _large_wall(cmp, host=False),
        "wall time at r >= min_res, host-affected": _large_wall(cmp, host=True),
        "wall time (all rows)": cmp[cmp["metric"] == "median_ms"] if len(cmp) else cmp,
    }
    return {name: (None if sub.empty else sub.loc[sub["dev_pct"].idxmax()].to_dict()) for name, sub in classes.items()}


def _describe(line: dict | None) -> str:
    if line is None:
        return "no matched rows"
    extra = f" {line['variant']}" if line.get("variant") else ""
    return (f"{line['dev_pct']:.2f} % ({line['model']}/{line['backend']}{extra}/{line['level']} r={line['res']} "
            f"B={line['batch']} {line['kind']}: {line['A']:.4g} vs {line['B']:.4g} ms)")  # fmt: skip


def host_pace(cmp: pd.DataFrame, min_host_frac: float = 0.5) -> pd.DataFrame:
    """How fast the host of run B's call was against run A's: over the matched wall-time rows that are host-bound in
    both runs (host_frac = (eager − kernel time) / eager > min_host_frac), the median and quartiles of B/A of their
    host time (host_ms = eager − kernel time), one line per pair of calls (run_id; a resumed run has one per call).
    The same workload on both sides, so the ratio estimates the hosts' speed ratio (a different GPU in one run would
    move the kernel part, which host_ms leaves out); a host-affected row's wall time moves with it."""
    need = {"host_frac_a", "host_frac_b", "run_id_a", "run_id_b"}
    if cmp.empty or not need <= set(cmp.columns):
        return pd.DataFrame(columns=["run_id_a", "run_id_b", "rows", "B/A", "q1", "q3"])
    d = cmp[
        (cmp["metric"] == "median_ms") & (cmp["host_frac_a"] > min_host_frac) & (cmp["host_frac_b"] > min_host_frac)
    ]
    if {"host_ms_a", "host_ms_b"} <= set(d.columns):  # the host part alone (eager − kernel time), where recorded
        d = d[(d["host_ms_a"] > 0) & (d["host_ms_b"] > 0)]
        d = d.assign(ratio=d["host_ms_b"] / d["host_ms_a"])
    else:
        d = d.iloc[0:0].assign(ratio=[])
    g = d.groupby(["run_id_a", "run_id_b"])["ratio"]
    out = pd.DataFrame({"rows": g.size(), "B/A": g.median(), "q1": g.quantile(0.25), "q3": g.quantile(0.75)})
    return out.reset_index()


def device_shifts(cmp: pd.DataFrame, tol: float = 5.0, factor: float = 3.0) -> pd.DataFrame:
    """Device-time agreement per series and kind (model, backend, variant, level, fwd/train), to tell a shift between
    the two runs from noise. A row outside `tol` has *shifted* when its |B/A − 1| is more than `factor` × the larger
    of its two replay spreads across rounds (each run is steady, they differ: something fixed per process, such as an
    autotuned kernel config, or the GPU); else it is *scatter* (the runs differ no more than their own rounds do).
    One line per series: rows, rows outside tol, how many of those shifted, the median and worst signed deviation
    and the largest in-run spread."""
    cols = ["model", "backend", "variant", "level", "kind", "rows", "outside", "shifted", "median shift %",
            "worst shift %", "in-run spread %", "verdict"]  # fmt: skip
    d = cmp[cmp["metric"] == "device_ms"] if len(cmp) else cmp
    if d.empty:
        return pd.DataFrame(columns=cols)
    d = d.assign(variant=d["variant"].fillna("") if "variant" in d else "")
    for c in ("graph_spread_a", "graph_spread_b"):
        if c not in d:
            d = d.assign(**{c: float("nan")})
    own = d[["graph_spread_a", "graph_spread_b"]].max(axis=1)  # NaN when neither run recorded it
    if "same_source" in d:  # the two runs' device times from different sources: their spread says nothing
        own = own.where(d["same_source"].astype(bool))
    d = d.assign(outside=d["dev_pct"] > tol, shifted=(d["dev_pct"] > tol) & (d["dev_pct"] > factor * own))
    out = []
    for keys, g in d.groupby(["model", "backend", "variant", "level", "kind"], sort=True):
        n_out, n_shift = int(g["outside"].sum()), int(g["shifted"].sum())
        unknown = int((g["outside"] & own[g.index].isna()).sum())
        if not n_out:
            verdict = f"within {tol:g} %"
        elif n_shift == n_out:
            verdict = f"shift between the runs (> {factor:g} × own spread)"
        elif n_shift == 0 and not unknown:
            verdict = "scatter (within the rounds' spread)"
        elif not unknown:
            verdict = f"mixed: {n_shift} shifted, {n_out - n_shift} scatter"
        else:
            verdict = f"outside: {n_shift} shifted, {unknown} without a comparable spread"
        worst_row = g.loc[g["dev_pct"].idxmax()]
        out.append(dict(zip(cols[:5], keys)) | {"rows": len(g), "outside": n_out, "shifted": n_shift,
                   "median shift %": float(g["shift_pct"].median()), "worst shift %": float(worst_row["shift_pct"]),
                   "in-run spread %": float(own[g.index].max()), "verdict": verdict})  # fmt: skip
    return pd.DataFrame(out, columns=cols)


HELD = {  # the classes held to --tol: strict (issue 10's bar as stated), or with --exempt-host-bound
    False: ("device time (all rows)", "wall time at r >= min_res"),
    True: ("device time (all rows)", "wall time at r >= min_res, device-bound in both runs"),
}


def report(a_path, b_path, min_res: int = 96, tol: float | None = None, host_margin: float = 5.0,
           exempt_host_bound: bool = False) -> tuple[str, bool]:  # fmt: skip
    """(markdown text, whether every held class is within tol)."""
    rows_a, rows_b = load_rows(a_path), load_rows(b_path)
    runs = {"A": run_summary(rows_a, load_runs(a_path)), "B": run_summary(rows_b, load_runs(b_path))}
    cmp = compare(rows_a, rows_b, min_res, host_margin)
    w = worst(cmp)
    lines = [f"# Reproducibility: {a_path} vs {b_path}", ""]
    for side, path in (("A", a_path), ("B", b_path)):
        r = runs[side]
        short = ", ".join(c[:7] for c in r["commits"])
        lines.append(f"- run {side} ({path}): {len(r['calls'])} calls ({', '.join(r['calls'])}) at commit {short} on "
                     f"{', '.join(r['gpus'])}; {r['rows']} rows, "
                     + (f"**{r['left']} still to do** (not a full run)" if r["left"] else "complete"))  # fmt: skip
    same = runs["A"]["commits"] == runs["B"]["commits"] and len(runs["A"]["commits"]) == 1
    complete = not runs["A"]["left"] and not runs["B"]["left"]
    unknown = runs["A"]["commits"] == runs["B"]["commits"] == ["unknown"]  # neither run recorded its commit
    one = "yes" if same else "NO (the bar is about two runs at one commit)"
    one = "unknown (no commit recorded)" if unknown else one
    lines += [f"- one commit: {one}; "
              f"both runs full: {'yes' if complete else 'NO'}", "",
              f"{len(cmp)} matched (row, metric) pairs; deviation = |B/A − 1|. A wall-time row is host-affected "
              f"when its wall time exceeds its device time by more than {host_margin:g} % in either run.",
              ""]  # fmt: skip
    within = tol is None or (same and complete)
    held = HELD[exempt_host_bound]
    for name, line in w.items():
        label = name.replace("min_res", str(min_res))
        verdict = ""
        if tol is not None and line is None and name in held:  # nothing matched: the bar cannot be said to hold
            within = False
            verdict = " — NOTHING TO HOLD (no matched rows: the bar is not shown to hold)"
        elif tol is not None and line is not None:
            ok = line["dev_pct"] <= tol
            if name in held:
                within &= ok
                verdict = f" — {'within' if ok else 'OUTSIDE'} {tol:g} %"
            elif name != "wall time (all rows)":
                verdict = f" — {'within' if ok else 'outside'} {tol:g} % ({_why_not_held(name, exempt_host_bound)})"
        lines.append(f"- worst deviation, {label}: {_describe(line)}{verdict}")
    if tol is not None:
        which = "the device-bound ones (--exempt-host-bound)" if exempt_host_bound else "all of them (issue 10's bar)"
        lines.append(
            f"\nHeld to {tol:g} %: every device-time row, and of the wall-time rows at r ≥ {min_res}, {which}."
        )
    if len(cmp):
        from bench.report import fmt_num, md_table

        host = _large_wall(cmp, host=True)
        if len(host):
            n_own = int((host["dev_pct"] <= host[["spread_a", "spread_b"]].max(axis=1)).sum())
            lines += ["", f"Host-affected wall-time rows at r ≥ {min_res} ({len(host)}): wall/device is each run's "
                      "wall time over its device time; spread is the row's own spread across its rounds (%). "
                      f"{n_own} of {len(host)} deviate by no more than their larger round spread, i.e. by no more "
                      "than one run already varies within itself.", ""]  # fmt: skip
            t = host.sort_values("dev_pct", ascending=False)
            cols = [c for c in (*KEY, *EXTRA_KEY) if c in t and c != "metric"]
            t = t[cols + ["A", "B", "dev_pct", "wall_dev_a", "wall_dev_b", "spread_a", "spread_b"]].copy()
            for c in ("A", "B", "dev_pct", "wall_dev_a", "wall_dev_b", "spread_a", "spread_b"):
                t[c] = t[c].map(fmt_num)
            lines.append(md_table(t))
        shifts = device_shifts(cmp, tol if tol is not None else 5.0)
        if len(shifts):
            bar = tol if tol is not None else 5.0
            s = shifts[shifts["outside"] > 0].copy()
            lines += ["", f"Device time per series and kind: {len(shifts) - len(s)} of {len(shifts)} have every row "
                      f"within {bar:g} %; the others below. A row outside {bar:g} % has *shifted* when its deviation "
                      "is more than 3 × the larger of its two replay spreads across rounds (both runs timed by a "
                      "replay): each run is steady and they differ (something fixed per process, e.g. an autotuned "
                      "kernel config, or the GPU); else it is scatter. Median and worst: signed B/A − 1.",
                      ""]  # fmt: skip
            for c in ("median shift %", "worst shift %", "in-run spread %"):
                s[c] = s[c].map(fmt_num)
            if len(s):
                lines.append(md_table(s))
        pace = host_pace(cmp)
        if len(pace):
            lines += ["", "How fast the hosts were: B/A of the host time (eager − kernel time) over the matched rows "
                      "that are host-bound in both runs (host time > 50 % of the wall time; median and quartiles), "
                      "per pair of calls. The same workloads on both sides, so this estimates the ratio of the hosts' "
                      "speeds; a host-affected row's wall time moves with it.", ""]  # fmt: skip
            for c in ("B/A", "q1", "q3"):
                pace[c] = pace[c].map(fmt_num)
            lines.append(md_table(pace))
        top = cmp.sort_values("dev_pct", ascending=False).head(10)
        extra = ("large_r", "shift_pct", "graph_spread_a", "graph_spread_b", "same_source", "wall_dev_a", "wall_dev_b",
                 "spread_a", "spread_b", "host_affected", "host_frac_a", "host_frac_b", "host_ms_a", "host_ms_b",
                 "run_id_a", "run_id_b")  # fmt: skip
        top = top.drop(columns=[c for c in top if c in extra])
        for c in ("A", "B", "dev_pct"):
            top[c] = top[c].map(fmt_num)
        lines += ["", "Largest deviations:", "", md_table(top)]
    return "\n".join(lines) + "\n", within


def _why_not_held(name: str, exempt_host_bound: bool) -> str:
    if not exempt_host_bound:
        return "part of the held class above"
    return "reported, not held: the host's speed sets these wall times" if "host-affected" in name else "reported"


def run(argv=None) -> None:
    p = ArgParser(prog="bench.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", help="results folder or raw/sweep_<tag>.json of the first run")
    p.add_argument("run_b", help="the same for the second run")
    p.add_argument("--min-res", type=int, default=96, help="wall-time rows from this r on are checked (default 96)")
    p.add_argument("--tol", type=float, default=None, help="%%: exit 1 when device time or r >= min-res is worse")
    p.add_argument(
        "--host-margin",
        type=float,
        default=5.0,
        help="%%: a wall time this much above the device time is host-affected (default 5)",
    )
    p.add_argument(
        "--exempt-host-bound",
        action="store_true",
        help="hold only the device-bound wall-time rows at r >= min-res to --tol (default: all of them)",
    )
    p.add_argument("--out", default=None, help="also write the comparison (markdown) here")
    args = p.parse_args(argv)
    if args.tol is not None and not args.tol >= 0:
        raise ConfigError(f"--tol must be >= 0, got {args.tol}")
    if not args.host_margin >= 0:
        raise ConfigError(f"--host-margin must be >= 0, got {args.host_margin}")
    text, within = report(args.run_a, args.run_b, args.min_res, args.tol, args.host_margin, args.exempt_host_bound)
    print(text, end="")
    if args.out:
        atomic_write_text(Path(args.out), text)
    if not within:
        raise SystemExit(1)


def main(argv=None) -> int:
    try:
        return cli_main(run, argv)
    except SystemExit as e:  # --tol exceeded (exit 1), or argparse's own exit 2
        return int(e.code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
