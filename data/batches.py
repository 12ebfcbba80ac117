"""Batches as index slices of tensors that already sit in memory, on the CPU or the GPU.

Small datasets (MNIST-sized images, ad-click tables, a text corpus) fit in device memory whole, so the
fastest loader is no loader: shuffle indices on the device and slice. No per-sample Python, no worker
processes, no host->device copy per step (airbench's trick). Augmentation runs on the whole batch.

Under DDP every rank holds the whole split and serves its own shard of it (`num_replicas`, `rank`): Lightning
inserts a DistributedSampler only into a torch DataLoader, never into an iterable like this one.
"""
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from data import UserInputError


class TensorBatches:
    """Iterable of batches `transform(*[t[idx] for t in tensors], generator=g)`, reshuffled for every pass through
    the rows when `shuffle` (a pass is an epoch unless epochs are shortened, below). `g` is a generator on the data's
    device seeded by (seed, pass, batch, rank): random augmentation drawn from it is the same in a resumed run as in
    an uninterrupted one, whatever else used the RNG.

    `epoch` is the first epoch's number, counted on by each pass, or a function returning the number of the epoch
    in progress, read as each pass starts: a DataModule passes Lightning's own count (`loader_args`), which is
    right after a resume from any checkpoint, where Lightning may or may not call `load_state_dict`.

    `epoch_batches` (a number or a function, read as each epoch starts; shuffled training only): how many batches
    the trainer takes of an epoch, fewer than all when `trainer.limit_train_batches` ends its epochs early (the
    LSTM's 250). The next epoch then goes on through the same order, and a new order is drawn only when one is used
    up: every row is served once per len(self) batches, as with whole epochs. (A new order per epoch would serve
    some rows two or three times and never reach others: 11.5% of the Shakespeare corpus's characters were never a
    target in the LSTM's 9 epochs of 250 of its 1,120 batches, although those were two passes' worth; 3.2% now,
    left out by the windows' random shifts.)

    With `num_replicas` > 1 (DDP) this rank serves rows rank, rank + num_replicas, ... of the epoch's order,
    which every rank draws alike from the same seed: the shards are disjoint, and rank r's batch b holds every
    num_replicas-th row of the single-process batch b of num_replicas * batch_size rows. With `drop_last` (training)
    the shards are equal, the order's last n % num_replicas rows sitting the epoch out, so every rank takes the
    same number of steps (DistributedSampler(drop_last=True) does the same), and a short last batch is dropped
    unless it is the only one (a split smaller than one batch still trains); without it (evaluation) every row is
    served exactly once, and the shards differ by at most one row."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, epoch: int | Callable[[], int] = 0,
                 transform: Callable[..., tuple[Tensor, ...]] | None = None,
                 num_replicas: int = 1, rank: int = 0, epoch_batches: int | Callable[[], float] | None = None) -> None:
        assert tensors and all(len(t) == len(tensors[0]) for t in tensors), "tensors must share dim 0"
        assert 0 <= rank < num_replicas, f"rank {rank} of {num_replicas} replicas"
        if len(tensors[0]) < num_replicas:  # a rank with nothing would sit out the collectives
            split = "a training" if drop_last else "an evaluation"
            raise UserInputError(f"{split} split of {len(tensors[0])} items cannot give each of the {num_replicas} "
                                 "processes one: use fewer processes or a larger split")
        self.tensors, self.batch_size, self.shuffle, self.drop_last = tensors, batch_size, shuffle, drop_last
        self.seed, self.epoch, self.transform, self.epoch_batches = seed, epoch, transform, epoch_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.in_progress: int | None = None  # the number of the epoch served last (or now)
        self.yielded = 0                     # batches handed out so far in that epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches it had served): from load_state_dict

    def _shard(self) -> slice:
        """This rank's positions in the epoch's order of all n rows."""
        n, r = len(self.tensors[0]), self.num_replicas
        return slice(self.rank, n - n % r if self.drop_last else n, r)

    def __len__(self) -> int:
        rows = len(range(len(self.tensors[0]))[self._shard()])
        full, short = divmod(rows, self.batch_size)
        return full + (short > 0 and not (self.drop_last and full))

    def _epoch_length(self) -> int:
        """Batches of an epoch: all of them, or as many as the trainer takes of a shuffled one."""
        limit = self.epoch_batches() if callable(self.epoch_batches) else self.epoch_batches
        if not self.shuffle or limit is None or not math.isfinite(limit):  # inf: Lightning has not counted yet
            return len(self)
        return max(1, min(len(self), int(limit)))

    def _next_epoch(self) -> int:
        if callable(self.epoch):
            return self.epoch()
        epoch, self.epoch = self.epoch, self.epoch + 1
        return epoch

    def _order(self, number: int) -> tuple[int, Tensor | None]:
        """The seed of order `number` (the number of the pass through all rows) and this rank's positions in it;
        unshuffled: (the seed, None). It depends on (seed, number) alone, on any device, so a resumed run sees the
        same batches."""
        seed = (self.seed + 1_000_003 * number) % 2**63
        if not self.shuffle:
            return seed, None
        order = torch.randperm(len(self.tensors[0]), generator=torch.Generator().manual_seed(seed))
        return seed, order.to(self.tensors[0].device)[self._shard()]  # this rank's rows: a strided view of the order

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        device = self.tensors[0].device
        epoch = self.in_progress = self._next_epoch()
        length = self._epoch_length()
        # Unshuffled, this rank's rows of the tensors (with one process, all rows); shuffled, indexed by the order.
        tensors = self.tensors if self.shuffle else tuple(t[self._shard()] for t in self.tensors)
        # A resumed run goes on after the batches its checkpoint had served, if it resumes that very epoch.
        start = self._resume[1] if self._resume and self._resume[0] == epoch else 0
        self._resume = None
        self.yielded = start
        number = None
        for step in range(epoch * length + start, (epoch + 1) * length):  # counted over all epochs' batches
            (pass_number, b), self.yielded = divmod(step, len(self)), step - epoch * length + 1
            if pass_number != number:  # with whole epochs, pass `epoch`
                number, (pass_seed, order) = pass_number, self._order(pass_number)
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[rows] if order is not None else rows
            batch = tuple(t[idx] for t in tensors)
            if self.transform is None:
                yield batch
            else:
                # Each rank draws its own augmentation (rank 0 draws what a single process does).
                batch_seed = pass_seed + 7_919 * (b + 1) + 104_729 * self.rank
                generator = torch.Generator(device).manual_seed(batch_seed % 2**63)
                yield self.transform(*batch, generator=generator)

    # Lightning saves this in every checkpoint and restores it when it resumes mid-epoch: the run goes on with
    # the batch after the last one it trained on.
    def state_dict(self) -> dict:
        if self.in_progress is None:  # nothing served yet
            return {"epoch": 0 if callable(self.epoch) else self.epoch, "batches": 0}
        if self.yielded < self._epoch_length():  # mid-epoch
            return {"epoch": self.in_progress, "batches": self.yielded}
        return {"epoch": self.in_progress + 1, "batches": 0}  # after an epoch

    def load_state_dict(self, state: dict) -> None:
        self._resume = state["epoch"], state["batches"]
        if not callable(self.epoch):
            self.epoch = state["epoch"]


def loader_args(trainer) -> dict:
    """The TensorBatches arguments every DataModule passes: the run's seed, the epoch in progress as Lightning
    counts it when a pass starts, the batches it takes of a training epoch, and this process's place among the DDP
    ranks. Without a trainer: one process from epoch 0, whole epochs. (Read when the pass starts, not when the
    loader is built: a loader is built before Lightning has finished restoring a checkpoint's epoch count, and
    `current_epoch` is still the last finished epoch then.)"""
    if trainer is None:
        return {"seed": torch.initial_seed()}
    # The run's seed, as seed_everything recorded it: every DDP process shares it (the shards of one order), while
    # each process's generator is seeded apart for its own dropout masks (Recipe.on_fit_start)
    seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
    return {"seed": seed, "epoch": lambda: trainer.current_epoch,
            "epoch_batches": lambda: trainer.num_training_batches,
            "num_replicas": trainer.world_size, "rank": trainer.global_rank}


def data_device(trainer, on_device: bool) -> torch.device:
    """Where a DataModule holds its splits: the training device (the default, no copy per batch), or the CPU (no
    trainer yet, or `+data.on_device=false`)."""
    return trainer.strategy.root_device if on_device and trainer else torch.device("cpu")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """The shares of a table or text held out for validation and test: each some of it, and some left to train on."""
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise UserInputError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}: "
                             "each must be > 0 and together < 1")


def check_both_labels(where, column: str, labels: set, split: str | None = None, rows: int = 0) -> None:
    """The distinct 0/1 labels of a whole file (`where`, "data.path=F"), or of its `split` of `rows` rows, are both:
    a click model learns nothing from one class, and the AUROC of one class is undefined (0.0 and a warning, not an
    error)."""
    if len(labels) > 1:
        return
    if split is None:
        raise UserInputError(f"{where}, column {column!r}: every label is {int(min(labels))}; a click model learns "
                             "from both 0 and 1 rows")
    raise UserInputError(f"{where}: the {split} split's {one_label(rows)}: give more rows, or a larger "
                         "data.val_fraction/test_fraction")


def one_label(rows: int) -> str:
    """What a split of `rows` rows of one label is (completes "the val split's ...")."""
    return "only row has one label" if rows == 1 else f"{rows} rows all have one label"


def split_indices(n: int, val_size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random (train, val) split of range(n); `val_size` is a count or a fraction of n."""
    if isinstance(val_size, float) and not (0 < val_size < 1 or (val_size > 1 and val_size.is_integer())):
        raise UserInputError(f"data.val_size={val_size}: give a count of rows (a whole number) or a fraction between "
                             "0 and 1")  # 1.5 would have been read as 1 row, and 1.0 is no fraction
    n_val = int(round(val_size * n)) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise UserInputError(f"data.val_size={val_size} leaves no training or no validation rows out of {n}: "
                             "give a count between 1 and the rows, or a fraction between 0 and 1")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


class SplitLoaders:
    """The three dataloaders of a DataModule that holds `train`, `val`, `test` splits and serves one with
    `_batches(split, batch_size, train)`; mixed in before LightningDataModule."""

    def train_dataloader(self) -> TensorBatches:
        return self._batches(self.train, self.batch_size, train=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches(self.test, self.eval_batch_size, train=False)
