"""Results you can see: figures of what a trained network gets right and wrong, drawn into TensorBoard.

`ResultFigures` is a Lightning callback (configs/callbacks/default.yaml). It reads the task from the data:
  multiclass  confusion matrix (validation: every `val_every_n_epochs`; test: on the best checkpoint), a grid of
              test predictions, a grid of the most confidently wrong test examples, the first conv layer's filters
  binary      ROC curve and calibration (reliability) plot of the test split
  lm          nothing (models/samples.py logs text samples)
It never runs the network itself: a forward hook on `pl_module.net` catches the logits the recipe's own
validation/test step computes, and everything accumulates on the device (no host sync per step); the host reads
the accumulators once, at the epoch's end. Nothing happens during training steps, nor without a TensorBoard logger.
Under DDP each rank accumulates its own shard and the epoch's end gathers them (`gather_rows`, a summed confusion
matrix), so the figures cover the whole split, as the scalar metrics do; the example grids come from the gathered
most confident mistakes and from rank 0's first examples.

The drawings themselves are models/plots.py's, which notebooks/ use too.
"""
import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from data import class_names
from models.plots import (calibration_figure, confusion_matrix_figure, displayable, filters_figure,
                          prediction_grid_figure, roc_figure)
from models.records import logged_step


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def gather_rows(trainer: Trainer, rows: Tensor) -> Tensor:
    """Every DDP rank's `rows` (N_r, ...), of any lengths N_r, concatenated in rank order; with one process, `rows`.
    Every rank must call it (a collective); all_gather wants equal shapes, so each rank pads to the longest."""
    if trainer.world_size == 1:
        return rows
    sizes = trainer.strategy.all_gather(torch.tensor([len(rows)], device=rows.device)).reshape(-1).tolist()
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: len(rows)] = rows
    gathered = trainer.strategy.all_gather(padded)  # (ranks, max(sizes), ...)
    return torch.cat([gathered[rank, :n] for rank, n in enumerate(sizes)])


# -- the callback ---------------------------------------------------------------------------------------
class ResultFigures(Callback):
    def __init__(self, max_images: int = 32, val_every_n_epochs: int = 1) -> None:
        if max_images < 0 or val_every_n_epochs < 0:
            raise ValueError(f"max_images={max_images}, val_every_n_epochs={val_every_n_epochs}: use 0 (off) or more")
        self.max_images, self.val_every_n_epochs = max_images, val_every_n_epochs
        self._hook = self._logits = None
        self._acc: dict = {}     # this epoch's accumulators, on the device
        self.results: dict = {}  # the last drawn epoch's, on the CPU: confusion, samples, mistakes or probs, targets

    # What the recipe's own step computed: the hook keeps the network's output for on_*_batch_end.
    def _start(self, pl_module: LightningModule) -> None:
        self._logits, self._acc = None, {}
        self._hook = pl_module.net.register_forward_hook(lambda net, inputs, output: setattr(self, "_logits", output))

    def _stop(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = self._logits = None

    @staticmethod
    def _writer(trainer: Trainer):
        tensorboard = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        return tensorboard[0].experiment if tensorboard else None

    def _task(self, trainer: Trainer) -> str | None:
        return getattr(trainer.datamodule, "task", None) if self._writer(trainer) is not None else None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every N-th epoch counted as Lightning counts trainer.check_val_every_n_epoch (epochs N, 2N, ... from 1):
        # with both at 2 every validation draws, none did when epoch 0 was the first of each N.
        every = self.val_every_n_epochs
        if (not trainer.sanity_checking and every and (trainer.current_epoch + 1) % every == 0
                and self._task(trainer) == "multiclass"):
            self._start(pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._task(trainer) in ("multiclass", "binary"):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._logits is not None:
            self._update(trainer, batch, examples=False)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._logits is not None:
            self._update(trainer, batch, examples=True)

    def _update(self, trainer: Trainer, batch: tuple[Tensor, ...], examples: bool) -> None:
        logits, self._logits = self._logits.detach().float(), None
        *inputs, targets = batch
        acc = self._acc
        if trainer.datamodule.task == "binary":
            acc.setdefault("probs", []).append(logits.reshape(-1).sigmoid())  # (B,)
            acc.setdefault("targets", []).append(targets.reshape(-1))
            return
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (B, C), (B,)
        c = logits.shape[-1]
        preds = logits.argmax(-1)
        if "confusion" not in acc:
            acc["confusion"] = torch.zeros(c * c, dtype=torch.long, device=logits.device)
        acc["confusion"].index_add_(0, targets * c + preds, torch.ones_like(targets))  # row: true, column: predicted
        images = inputs[0] if inputs else None
        if not examples or not self.max_images or images is None or images.ndim != 4:  # galleries need (B, C, H, W)
            return
        probs = logits.softmax(-1)  # (B, C)
        # The first examples of the split, as they come.
        have = len(acc["samples"][0]) if "samples" in acc else 0
        if have < self.max_images:
            take = tuple(t[: self.max_images - have] for t in (images, targets, probs))
            acc["samples"] = take if not have else tuple(torch.cat(pair) for pair in zip(acc["samples"], take))
        # The most confident mistakes so far: a running top-k over (kept ones + this batch), on the device.
        confidence = torch.where(preds != targets, probs.amax(-1), -1.0)  # (B,), -1: right, never a mistake
        pool = (confidence, images, targets, probs)
        if "mistakes" in acc:
            pool = tuple(torch.cat(pair) for pair in zip(acc["mistakes"], pool))
        top = pool[0].topk(min(self.max_images, len(pool[0]))).indices
        acc["mistakes"] = tuple(t[top] for t in pool)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hook is not None:
            self._stop()
            self._draw(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hook is not None:
            self._stop()
            self._draw(trainer, pl_module, "test")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop()  # a run that failed mid-epoch must not leave the hook behind

    # -- drawing, once per epoch ----------------------------------------------------------------------
    def _draw(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        acc, writer, step = self._acc, self._writer(trainer), logged_step(trainer)  # beside the stage's scalars
        if not acc:  # no batches (limit_*_batches=0)
            return
        dm = trainer.datamodule
        if dm.task == "binary":
            probs, targets = (gather_rows(trainer, torch.cat(acc[key])).cpu().numpy() for key in ("probs", "targets"))
            self.results = {"probs": probs, "targets": targets}
            writer.add_figure(f"{stage}/roc", roc_figure(probs, targets, f"ROC, {stage} split"), step)
            writer.add_figure(f"{stage}/calibration",
                              calibration_figure(probs, targets, title=f"calibration, {stage} split"), step)
            return
        c = math.isqrt(len(acc["confusion"]))
        confusion = acc["confusion"]
        if trainer.world_size > 1:  # every rank's counts
            confusion = trainer.strategy.reduce(confusion, reduce_op="sum")
        confusion = confusion.view(c, c).cpu().numpy()
        classes = class_names(dm, c)
        self.results = {"confusion": confusion}
        figure = confusion_matrix_figure(confusion, classes, f"{stage} split")
        writer.add_figure(f"{stage}/confusion_matrix", figure, step)
        if stage != "test":
            return
        if "mistakes" in acc and trainer.world_size > 1:  # every rank's top k, then the top k of those
            pool = tuple(gather_rows(trainer, t) for t in acc["mistakes"])
            acc["mistakes"] = tuple(t[pool[0].topk(min(self.max_images, len(pool[0]))).indices] for t in pool)
        mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
        for key, title in (("samples", "first test examples"), ("mistakes", "most confident mistakes")):
            if key not in acc:
                continue
            images, targets, probs = (t.cpu() for t in acc[key][-3:])
            if key == "mistakes":  # fewer mistakes than max_images: the rest of the pool were right answers
                wrong = acc[key][0].cpu() >= 0
                images, targets, probs = images[wrong], targets[wrong], probs[wrong]
            self.results[key] = (images, targets, probs)
            if len(images):
                figure = prediction_grid_figure(displayable(images, mean, std).numpy(), targets.numpy(), probs.numpy(),
                                                classes, title=f"{title}: predicted (probability)")
                writer.add_figure(f"test/{'predictions' if key == 'samples' else 'confident_mistakes'}", figure, step)
        conv = first_conv(pl_module.net)
        if conv is not None:
            writer.add_figure("test/first_conv_filters", filters_figure(conv.weight), step)
