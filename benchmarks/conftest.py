"""pytest-benchmark runs record the GPU they ran on (results_to_csv.py reads it)."""
import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    if torch.cuda.is_available():
        machine_info["gpu"] = f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
