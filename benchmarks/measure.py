"""What the benchmarks measure besides time: the GPU's pending work, peak memory, Lightning's autocast, and where a
step's time goes (torch.profiler)."""
import resource

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory() -> dict:
    """The process's peak resident memory so far, and the GPU memory PyTorch has allocated at most (since the last
    torch.cuda.reset_peak_memory_stats), in MiB."""
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """What Lightning's `trainer.precision` does to the forward pass: bf16-mixed and 16-mixed autocast, with its
    cache of cast weights off as Lightning has it (torch.compile guards on that setting: another value would compile
    the network again)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)


def profiled_activities() -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def profile_summary(profiler: torch.profiler.profile, steps: int, seconds: float, top: int = 10) -> dict:
    """Where `steps` profiled steps spent their `seconds`, a step at a time: wall milliseconds (the profiler's own
    cost included); on a GPU, the milliseconds of its kernels, memory copies and fills (not the spans that
    record_function annotations such as `Optimizer.step` also show on the GPU's timeline) and the fraction of the
    wall time they fill: well under 1, the GPU waits on the host; and the host's `top` operators by their own time
    (torch ops; Python between them is in the wall time alone)."""
    events = profiler.events()
    on_gpu = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    wall_ms = seconds * 1e3 / steps
    gpu_ms = sum(e.time_range.elapsed_us() for e in on_gpu) / 1e3 / steps if torch.cuda.is_available() else None
    host = sorted((e for e in profiler.key_averages() if e.self_cpu_time_total > 0),
                  key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"steps": steps, "wall_ms_per_step": round(wall_ms, 3),
            "gpu_ms_per_step": None if gpu_ms is None else round(gpu_ms, 3),
            "gpu_busy": None if gpu_ms is None else round(gpu_ms / wall_ms, 3),
            "host_ms_per_step": [[e.key, round(e.self_cpu_time_total / 1e3 / steps, 3)] for e in host]}
