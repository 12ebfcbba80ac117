"""Batches as index slices of tensors that already sit in memory, on the CPU or the GPU.

Small datasets (MNIST-sized images, ad-click tables, a text corpus) fit in device memory whole, so the
fastest loader is no loader: shuffle indices on the device and slice. No per-sample Python, no worker
processes, no host->device copy per step (airbench's trick). Augmentation runs on the whole batch.
"""
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Iterable of batches `transform(*[t[idx] for t in tensors])`, reshuffled every epoch when `shuffle`."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, epoch: int = 0, transform: Callable[..., tuple[Tensor, ...]] | None = None) -> None:
        assert tensors and all(len(t) == len(tensors[0]) for t in tensors), "tensors must share dim 0"
        self.tensors, self.batch_size, self.shuffle, self.drop_last = tensors, batch_size, shuffle, drop_last
        self.seed, self.epoch, self.transform = seed, epoch, transform

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n, device = len(self.tensors[0]), self.tensors[0].device
        # Each epoch's order depends on (seed, epoch) alone, on any device, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed((self.seed + 1_000_003 * self.epoch) % 2**63)
        order = torch.randperm(n, generator=generator).to(device) if self.shuffle else None
        self.epoch += 1
        for b in range(len(self)):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[rows] if order is not None else rows
            batch = tuple(t[idx] for t in self.tensors)
            yield self.transform(*batch) if self.transform else batch


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random (train, val) split of range(n); `val_size` is a count or a fraction of n."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise ValueError(f"val_size={val_size} leaves no training or no validation rows out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]
