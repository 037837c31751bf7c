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


def load_rows(path: str | Path) -> pd.DataFrame:
    """The rows of a run: a raw/sweep_*.json file, or every raw/sweep_*.json of a results folder."""
    p = Path(path)
    files = [p] if p.is_file() else sorted((p / "raw").glob("sweep_*.json")) or sorted(p.glob("sweep_*.json"))
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


def compare(a: pd.DataFrame, b: pd.DataFrame, min_res: int = 96) -> pd.DataFrame:
    """One line per matched timed row and metric: A, B and the deviation |B/A − 1| in %."""
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
            out.append({**{k: row[k] for k in key}, "metric": metric, "A": va, "B": vb,
                        "dev_pct": 100 * abs(vb / va - 1), "large_r": int(row["res"]) >= min_res})  # fmt: skip
    return pd.DataFrame(out)


def worst(cmp: pd.DataFrame) -> dict[str, dict | None]:
    """The worst line of each class: device-time rows, wall-time rows at r ≥ min_res, all wall-time rows."""
    classes = {
        "device time (all rows)": cmp[cmp["metric"] == "device_ms"] if len(cmp) else cmp,
        "wall time at r >= min_res": cmp[(cmp["metric"] == "median_ms") & cmp["large_r"]] if len(cmp) else cmp,
        "wall time (all rows)": cmp[cmp["metric"] == "median_ms"] if len(cmp) else cmp,
    }
    return {name: (None if sub.empty else sub.loc[sub["dev_pct"].idxmax()].to_dict()) for name, sub in classes.items()}


def _describe(line: dict | None) -> str:
    if line is None:
        return "no matched rows"
    extra = f" {line['variant']}" if line.get("variant") else ""
    return (f"{line['dev_pct']:.2f} % ({line['model']}/{line['backend']}{extra}/{line['level']} r={line['res']} "
            f"B={line['batch']} {line['kind']}: {line['A']:.4g} vs {line['B']:.4g} ms)")  # fmt: skip


def report(a_path, b_path, min_res: int = 96, tol: float | None = None) -> tuple[str, bool]:
    """(markdown text, whether every checked class is within tol)."""
    cmp = compare(load_rows(a_path), load_rows(b_path), min_res)
    w = worst(cmp)
    lines = [f"# Reproducibility: {a_path} vs {b_path}", "",
             f"{len(cmp)} matched (row, metric) pairs; deviation = |B/A − 1|.", ""]  # fmt: skip
    within = True
    for name, line in w.items():
        label = name.replace("min_res", str(min_res))
        verdict = ""
        if tol is not None and name != "wall time (all rows)" and line is not None:
            ok = line["dev_pct"] <= tol
            within &= ok
            verdict = f" — {'within' if ok else 'OUTSIDE'} {tol:g} %"
        lines.append(f"- worst deviation, {label}: {_describe(line)}{verdict}")
    if len(cmp):
        from bench.report import fmt_num, md_table

        top = cmp.sort_values("dev_pct", ascending=False).head(10).drop(columns=["large_r"])
        for c in ("A", "B", "dev_pct"):
            top[c] = top[c].map(fmt_num)
        lines += ["", "Largest deviations:", "", md_table(top)]
    return "\n".join(lines) + "\n", within


def run(argv=None) -> None:
    p = ArgParser(prog="bench.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", help="results folder or raw/sweep_<tag>.json of the first run")
    p.add_argument("run_b", help="the same for the second run")
    p.add_argument("--min-res", type=int, default=96, help="wall-time rows from this r on are checked (default 96)")
    p.add_argument("--tol", type=float, default=None, help="%%: exit 1 when device time or r >= min-res is worse")
    p.add_argument("--out", default=None, help="also write the comparison (markdown) here")
    args = p.parse_args(argv)
    if args.tol is not None and not args.tol >= 0:
        raise ConfigError(f"--tol must be >= 0, got {args.tol}")
    text, within = report(args.run_a, args.run_b, args.min_res, args.tol)
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
