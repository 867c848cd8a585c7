"""Where runs train: CPUs and GPUs this process may use, the device a config resolves
to, its peak FLOP/s for MFU, mixed precision, and which errors leave a CUDA context
unusable. The bottom of the house: imports the config and nothing else of the
package. torch is imported by the functions that need it, so that the data workers
(tokenizers, synthetic generators) that only ask for `available_cpus` start without it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from chinchilla.config import Config
from chinchilla.errors import UserError

# bf16 dense peak FLOP/s per device (vendor datasheets, without sparsity).
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,  # fp16 tensor cores; V100 has no bf16
}


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (taskset, Slurm, containers) and a
    cgroup v2 quota, not the machine's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def visible_gpus(n_gpus: int) -> list[str]:
    """Physical ids (or UUIDs) of the GPUs this process sees, in order: the existing
    CUDA_VISIBLE_DEVICES mask when set, else 0 .. n_gpus - 1."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and mask.strip():
        ids = [d.strip() for d in mask.split(",") if d.strip()]
        return ids[:n_gpus] if n_gpus else ids
    return [str(i) for i in range(n_gpus)]


def resolve_device(cfg: Config) -> str:
    """cuda or cpu. `device.type: cuda` where torch cannot reach a GPU (a CPU-only torch
    build, no driver, no visible device) is refused with one line saying why."""
    import torch

    if cfg.device.type == "cuda":
        check_cuda(torch)
        return "cuda"
    if cfg.device.type == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def check_cuda(torch) -> None:
    """A `UserError` unless this torch can train on a GPU."""
    if not torch.backends.cuda.is_built():
        raise UserError(
            f"device.type is cuda but this torch ({torch.__version__}) is a CPU-only build; "
            "install a CUDA build (https://pytorch.org/get-started/locally/) or set "
            "device.type: cpu (or auto)"
        )
    if not torch.cuda.is_available():
        raise UserError(
            "device.type is cuda but torch sees no GPU (no driver, or CUDA_VISIBLE_DEVICES "
            "hides every device); check nvidia-smi, or set device.type: cpu (or auto)"
        )


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure_cpu_peak(n: int = 512, repeats: int = 10) -> float:
    """FLOP/s of a float32 n x n matmul in this process: the CPU's practical peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_flops(cfg: Config, device: str) -> float | None:
    """Peak FLOP/s for MFU: configured, else the GPU table, else a measured CPU matmul."""
    import torch

    if cfg.device.peak_flops is not None:
        return cfg.device.peak_flops
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value
        return None
    return measure_cpu_peak()


def autocast(device: str):
    """bf16 autocast on CUDA; plain fp32 on CPU."""
    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 on CPU


def sticky_device_error(error: str | None) -> bool:
    """Errors after which a CUDA context is unusable in that process."""
    return bool(error) and any(
        s in error for s in ("CUDA error", "AcceleratorError", "device-side assert", "NCCL")
    )
