"""Host settings that make CPU training faster without changing any result."""
import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt() parameters (malloc.h)


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    A training step allocates and frees the same large buffers every step (the CNN's activations at batch 256
    are ~26 MB each). By default glibc serves big allocations with a fresh mmap() and unmaps them when freed, so
    every step page-faults its activations in again and the kernel zeroes each page: on this 2-core CPU that was
    a quarter of the CNN's step (160 -> 120 ms, half the page faults). With mmap off and a 1 GiB trim threshold,
    freed blocks stay in the heap and the next step reuses them (jemalloc or tcmalloc via LD_PRELOAD do the
    same; this needs nothing installed). The price is what the heap keeps and can no longer give back: nothing
    for the CNN (the same buffers are reused), ~0.5 GB for the DNN streaming Criteo with its tens-of-MB embedding
    gradients, where bounded memory matters more, so `data=criteo` turns this off.
    Returns whether it applied (not on macOS, Windows or a libc without mallopt, e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) & bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
