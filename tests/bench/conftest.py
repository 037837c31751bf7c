"""pytest-benchmark: GPU and software details in the machine info of every saved benchmark."""


def pytest_benchmark_update_machine_info(config, machine_info):
    from bench.env import git_commit, gpu_info, software_versions

    machine_info["gpu"] = gpu_info() or None
    machine_info["software"] = software_versions()
    machine_info["git_commit"] = git_commit()
