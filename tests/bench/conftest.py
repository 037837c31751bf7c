"""Shared bench-test setup: one intra-op thread for the tiny-model tests; GPU and software details in the
machine info of every saved pytest-benchmark run."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast and immune to oversubscribed CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_benchmark_update_machine_info(config, machine_info):
    from bench.env import git_commit, gpu_info, software_versions

    machine_info["gpu"] = gpu_info() or None
    machine_info["software"] = software_versions()
    machine_info["git_commit"] = git_commit()
