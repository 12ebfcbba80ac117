"""Host settings that make CPU training faster without changing any result."""
import ctypes
import os
import sys

import torch

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt() parameters (malloc.h)


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    A training step allocates and frees the same large buffers every step (the CNN's activations at batch 256
    are ~26 MB each). By default glibc serves big allocations with a fresh mmap() and unmaps them when freed, so
    every step page-faults its activations in again and the kernel zeroes each page: on this 2-core CPU that was
    about a third of the CNN's step (160 -> ~100-115 ms, half the page faults). With mmap off and a 1 GiB trim
    threshold, freed blocks stay in the heap and the next step reuses them (jemalloc or tcmalloc via LD_PRELOAD do
    the same; this needs nothing installed). The price is what the heap keeps and can no longer give back: nothing
    for the CNN (the same buffers are reused), ~0.5 GB for the DNN streaming Criteo with its tens-of-MB embedding
    gradients, where bounded memory matters more, so `data=criteo` turns this off.
    Returns whether it applied (not on macOS, Windows or a libc without mallopt, e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    no_mmap = mallopt(M_MMAP_MAX, 0)  # both settings, whatever the first answered; mallopt returns 1 on success
    kept = mallopt(M_TRIM_THRESHOLD, trim_threshold)
    return bool(no_mmap and kept)


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def set_matmul_precision(precision: str, accelerator: str) -> None:
    """`float32_matmul_precision` for a run that may use a CUDA GPU (trainer.accelerator auto, gpu or cuda): torch's
    default, highest, leaves the tensor cores out of float32 matrix products (and Lightning says so on every run)."""
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        torch.set_float32_matmul_precision(precision)


def cheap_cuda_check() -> bool:
    """On a machine without a CUDA GPU, let `torch.cuda.is_available()` ask the CUDA runtime (a cached answer)
    instead of NVML (a new attempt to load libnvidia-ml on every call).

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that looking for a GPU does not initialize CUDA in
    a process that later forks workers. torch.optim looks for one on every optimizer step (its CUDA-graph capture
    check), and with a CUDA build of torch on a machine without a GPU each look loaded NVML again and failed: ~0.1 ms
    a step on this 2-core CPU, whatever the batch. Without a GPU there is no CUDA to initialize, so nothing else
    changes; with one, the setting stays (and CUDA, once up, caches the answer anyway).
    Returns whether it changed the setting."""
    if os.environ.get(NVML_CHECK) != "1" or torch.cuda.is_available():
        return False
    del os.environ[NVML_CHECK]
    return True
