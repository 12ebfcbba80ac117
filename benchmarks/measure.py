"""What the benchmarks measure besides time: the GPU's pending work, peak memory, and Lightning's autocast."""
import resource

import torch


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
