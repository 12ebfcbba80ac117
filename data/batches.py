"""Batches as index slices of tensors that already sit in memory, on the CPU or the GPU.

Small datasets (MNIST-sized images, ad-click tables, a text corpus) fit in device memory whole, so the
fastest loader is no loader: shuffle indices on the device and slice. No per-sample Python, no worker
processes, no host->device copy per step (airbench's trick). Augmentation runs on the whole batch.
"""
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class TensorBatches:
    """Iterable of batches `transform(*[t[idx] for t in tensors], generator=g)`, reshuffled every epoch when
    `shuffle`. `g` is a generator on the data's device seeded by (seed, epoch, batch): random augmentation
    drawn from it is the same in a resumed run as in an uninterrupted one, whatever else used the RNG."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, epoch: int = 0, transform: Callable[..., tuple[Tensor, ...]] | None = None) -> None:
        assert tensors and all(len(t) == len(tensors[0]) for t in tensors), "tensors must share dim 0"
        self.tensors, self.batch_size, self.shuffle, self.drop_last = tensors, batch_size, shuffle, drop_last
        self.seed, self.epoch, self.transform = seed, epoch, transform
        self.yielded = 0      # batches handed out so far in the epoch in progress
        self._skip = 0        # batches to skip at the next __iter__ (a resumed run)

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n, device = len(self.tensors[0]), self.tensors[0].device
        # Each epoch's order depends on (seed, epoch) alone, on any device, so a resumed run sees the same batches.
        epoch_seed = (self.seed + 1_000_003 * self.epoch) % 2**63
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed)).to(device) if self.shuffle else None
        self.epoch += 1
        start, self._skip = self._skip, 0
        for b in range(start, len(self)):
            self.yielded = b + 1
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[rows] if order is not None else rows
            batch = tuple(t[idx] for t in self.tensors)
            if self.transform is None:
                yield batch
            else:
                generator = torch.Generator(device).manual_seed((epoch_seed + 7_919 * (b + 1)) % 2**63)
                yield self.transform(*batch, generator=generator)
        self.yielded = 0

    # Lightning saves this in every checkpoint and restores it on resume: a run killed mid-epoch goes on
    # with the batch after the last one it trained on.
    def state_dict(self) -> dict:
        if 0 < self.yielded < len(self):  # mid-epoch (self.epoch already counts the epoch in progress)
            return {"epoch": self.epoch - 1, "batches": self.yielded}
        return {"epoch": self.epoch, "batches": 0}  # between epochs, or at an epoch's last batch

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = state["epoch"], state["batches"]


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random (train, val) split of range(n); `val_size` is a count or a fraction of n."""
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise ValueError(f"val_size={val_size} leaves no training or no validation rows out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]
