"""The Makefile: one recipe per target (a merge once left two `bench` targets; make only warns, and runs the last)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_target_has_one_recipe():
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "--no-print-directory", "lint", "PY=python3"],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode == 127:
        pytest.skip("make not installed")
    assert "overriding recipe" not in r.stderr and "ignoring old recipe" not in r.stderr, r.stderr


def test_bench_runs_the_sweep_and_kernel_bench_the_kernel_benchmark():
    def dry(target):
        return subprocess.run(["make", "-n", "-C", str(ROOT), "--no-print-directory", target, "PY=python3"],
                              capture_output=True, text=True).stdout  # fmt: skip

    assert "-m bench.sweep" in dry("bench") and "-m bench.attention_kernel" in dry("kernel-bench")
