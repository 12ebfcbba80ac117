"""The one training recipe every redes network goes through: loss, metrics, optimizer, schedule, L1 and weight
decay (AdamW's decoupled decay; an L2 term in the gradient under SGD, Adam and RMSprop), label smoothing.

The network is a plain `nn.Module` returning logits; the task comes from the data:
  binary      one logit per row        -> sigmoid + binary cross-entropy   metrics: auroc, acc
  multiclass  (B, classes) logits      -> softmax + cross-entropy          metrics: acc
  lm          (B, T, vocab) logits     -> cross-entropy per character      metrics: acc, bpc, perplexity
Batches are tuples `(*inputs, targets)`; the network is called as `net(*inputs)`.
Metrics accumulate on the device (torchmetrics) and are read once per epoch: no host sync per step. Under DDP
each rank accumulates its own shard and `compute()` gathers all ranks' states, so every rank logs the same epoch
metrics over the whole split (and early stopping and checkpointing decide alike).
"""
import math
import time

import lightning as L
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryPrecisionRecallCurve, MulticlassAccuracy
from torchmetrics.utilities import dim_zero_cat

from data import UserInputError
from models.records import read_checkpoint, verify_checksums
from models.schedules import SCHEDULERS, check_resumed_length, make_scheduler

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
              "rmsprop": torch.optim.RMSprop}
TASKS = ("binary", "multiclass", "lm")
PER_STEP = ("train/loss_step", "train/grad_norm")  # logged every log_every_n_steps steps; everything else per epoch


def stopped_early(trainer: L.Trainer) -> bool:
    """Whether early stopping ended the epochs trained so far: it said stop (patience run out, a threshold met, in
    any epoch, the first too) in the last of them: the epoch just ended (current_epoch - 1), or, in a checkpoint
    written at a validation within an epoch (trainer.val_check_interval), the current one. With trainer.min_epochs
    it may have said so earlier and training went on: its reason stays set, its stopped_epoch is an earlier one."""
    stopper = trainer.early_stopping_callback
    return (stopper is not None and stopper.stopping_reason != EarlyStoppingReason.NOT_STOPPED
            and stopper.stopped_epoch in (trainer.current_epoch - 1, trainer.current_epoch))


def stopped_by(trainer: L.Trainer) -> str:
    """What ended the training: "early_stopping", "max_steps", "max_epochs", or "max_time" (Lightning's Timer: the
    run's time limit, which may cut a schedule before its end), else "a callback" (one that set should_stop)."""
    if stopped_early(trainer):
        return "early_stopping"
    if 0 < trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs and (
            trainer.fit_loop.epoch_loop.batch_progress.current.completed >= trainer.num_training_batches):
        return "max_epochs"  # (current_epoch counts an epoch that a stop cut short: not all its batches ran)
    if time_is_up(trainer):
        return "max_time"
    return "a callback"


def time_is_up(trainer: L.Trainer, within: float = 0.0) -> bool:
    """Whether trainer.max_time (Lightning's Timer) has run out, or will within `within` seconds: the Timer stops
    the run after the batch during which it ran out."""
    timers = [c.time_remaining() for c in trainer.callbacks if isinstance(c, Timer)]
    return any(remaining is not None and remaining <= within for remaining in timers)


def repeated_epoch_end(trainer) -> bool:
    """Lightning runs an epoch's end again on resuming from a checkpoint written there (on_train_epoch_end, where
    last.ckpt is saved after the epoch's validation) when trainer.max_steps is set: the LSTM's budget. The
    checkpoint already holds what that epoch end did (early stopping's count, the train metrics logged), and the
    validation metrics it read are not there to read again."""
    return getattr(trainer.fit_loop, "restarted_on_epoch_end", False)  # (a Lightning without restart stages: no)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops before any checkpoint takes the bad weights."""


def exact_auroc(scores: Tensor, targets: Tensor) -> Tensor:
    """The exact area under the ROC curve of scores in [0, 1] (NaN if any is NaN): the probability that a random
    positive scores above a random negative, ties counting one half (Mann-Whitney). Non-negative floats order as
    their bit patterns, and torch sorts integers with a radix sort: on CPU ~3x faster than torchmetrics' argsort of
    the floats (25 against 70 ms for 720k scores), the same value to float rounding (tested)."""
    bits = torch.int64 if scores.dtype == torch.float64 else torch.int32
    keys, order = torch.sort((scores.to(torch.promote_types(scores.dtype, torch.float32)) + 0.0).view(bits))  # -0 -> +0
    positive = targets[order].long()
    last = torch.ones_like(keys, dtype=torch.bool)  # the last of each run of equal scores
    torch.ne(keys[1:], keys[:-1], out=last[:-1])
    pos_through = positive.cumsum(0)[last]  # positives scoring at most each distinct score
    neg_through = torch.arange(1, len(keys) + 1, device=keys.device)[last] - pos_through
    pos_at = pos_through.diff(prepend=pos_through.new_zeros(1))  # positives at each distinct score
    neg_below = neg_through - neg_through.diff(prepend=neg_through.new_zeros(1))  # negatives strictly below it
    twice_u = (pos_at * (neg_below + neg_through)).sum()  # 2 x (negatives below + half those tied), over positives
    auroc = twice_u.float() / (2 * pos_through[-1] * neg_through[-1]).float()
    return torch.where(scores.isnan().any(), torch.nan, auroc)


class ExactAUROC(BinaryAUROC):
    """torchmetrics' exact BinaryAUROC (each prediction of the epoch kept on the device, gathered over the DDP
    ranks before compute), computed by `exact_auroc`: torchmetrics' own took 70 ms at each end of the DNN's
    87-batch epochs on CPU (its train AUROC over 712k rows), 0.8 ms a step. A split of one class is left to
    torchmetrics (0, with its warning)."""

    def compute(self) -> Tensor:
        scores, targets = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        positives = int(targets.sum())  # one host sync an epoch
        if positives in (0, len(targets)):
            return super().compute()
        return exact_auroc(scores, targets)


class ScoresAccuracy(BinaryPrecisionRecallCurve):
    """BinaryAccuracy's value (scores above 0.5 read as 1; tested) from the scores and targets an exact AUROC keeps:
    in one MetricCollection the two hold the same state, which torchmetrics' compute groups then update once a step
    for both, instead of also counting BinaryAccuracy's true and false positives and negatives (~0.1 ms a step)."""

    def compute(self) -> Tensor:
        scores, targets = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        return ((scores > 0.5) == targets.bool()).sum() / len(targets)


def task_metrics(task: str, num_classes: int | None) -> MetricCollection:
    # validate_args=False: the checks of every update (are the targets 0/1? in range?) read the device, a host
    # sync per step; the targets come from our own DataModules, checked once when the data is read.
    if task == "binary":
        return MetricCollection({"auroc": ExactAUROC(validate_args=False), "acc": ScoresAccuracy(validate_args=False)})
    return MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)})


class WeightedMean(Metric):
    """The mean of per-batch means, each weighted by its batch's number of items: the mean over every item of the
    epoch, whatever the batch sizes (a split's last batch is usually short). torchmetrics' MeanMetric is no use
    here: its NaN check is a host sync per update, and with the check disabled it drops the weights (torchmetrics
    issue #3434). A non-finite training loss is caught by the recipe's own guard (check_finite)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # float32 and int64, as every device has them (MPS has no float64)
        self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")                     # sum of item losses
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")  # items

    def update(self, mean: Tensor, items: int) -> None:  # `items` a Python int: no host-to-device copy per step
        # float32 even where trainer.precision=bf16-true made the state bfloat16 (module.to(dtype) converts it)
        self.total = self.total.float() + mean.float() * items
        self.count += items

    def compute(self) -> Tensor:
        return self.total / self.count


def make_optimizer(params, name: str, lr: float, options: dict) -> torch.optim.Optimizer:
    """`optimizer=<name>` with its `optimizer.*` options; a setting torch refuses is one line naming them all."""
    try:
        return OPTIMIZERS[name](params, lr=lr, **options)
    except (TypeError, ValueError, IndexError, RuntimeError) as err:  # e.g. nesterov with momentum 0
        settings = ", ".join(f"optimizer.{k}={v}" for k, v in options.items())
        raise UserInputError(f"optimizer={name} ({settings}): {err}") from err


def decayed_parameters(net: nn.Module) -> list[nn.Parameter]:
    # Weight matrices, conv kernels and embedding tables are regularized (decay and L1); biases and norm
    # scales/shifts are not.
    return [p for p in net.parameters() if p.ndim >= 2]


def is_compiled(net: nn.Module) -> bool:
    """Whether `net.compile()` (models/assemble.py, `model.compile=true`) was called: nn.Module.compile keeps the
    compiled forward in `_compiled_call_impl`."""
    return getattr(net, "_compiled_call_impl", None) is not None


def probabilities(logits: Tensor, task: str) -> Tensor:
    """What the logits say as probabilities: (B,) of the positive class for binary, (B, C) for classes."""
    return logits.reshape(-1).sigmoid() if task == "binary" else logits.softmax(-1)


def metric_mode(metric: str) -> str:
    """"min" for what should fall (val/loss, val/bpc, val/perplexity), "max" for what should rise (acc, auroc)."""
    return "min" if metric.split("/")[-1] in ("loss", "bpc", "perplexity") else "max"


def epoch_metric_names(task: str, stage: str) -> list[str]:
    """What `Recipe` logs once per epoch for a stage, e.g. val/loss, val/auroc, val/acc: what a monitor can watch."""
    names = ["loss", *task_metrics(task, num_classes=2).keys(), *(("bpc", "perplexity") if task == "lm" else ())]
    return [f"{stage}/{name}" for name in names]


class Recipe(L.LightningModule):
    def __init__(self, net: nn.Module, task: str, lr: float, optimizer: dict, scheduler: dict,
                 weight_decay: float = 0.0, l1: float = 0.0, label_smoothing: float = 0.0,
                 net_kwargs: dict | None = None,
                 channels_last: bool = False, config: dict | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if optimizer["name"] not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer['name']!r}; choose one of {sorted(OPTIMIZERS)}")
        if scheduler["name"] not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler['name']!r}; choose one of {', '.join(SCHEDULERS)}")
        # `config` (the run's resolved config) and `net_kwargs` (what the data told the network) let
        # `load_recipe` rebuild the network from a checkpoint alone.
        self.save_hyperparameters(ignore=["net"])
        net_kwargs = net_kwargs or {}
        num_classes = net_kwargs.get("num_classes") or net_kwargs.get("vocab_size")
        self.net = net
        # Keyed "train_", "val_", "test_": a ModuleDict key may not shadow nn.Module.train.
        self.losses = nn.ModuleDict({f"{s}_": WeightedMean() for s in ("train", "val", "test")})
        self.metrics = nn.ModuleDict({f"{s}_": task_metrics(task, num_classes) for s in ("train", "val", "test")})
        # Non-finite guard without a host sync per step: count steps and remember the first bad one on the
        # device; the host looks every log interval and before any checkpoint is written. Plain device tensors
        # (see _guard), not buffers: DDP would copy rank 0's buffers over every rank's before each step.
        self.steps_seen = self.first_bad_step = None
        self._resumed_schedule: dict | None = None  # the scheduler state of the checkpoint a run resumes from
        self.seconds_before = 0.0  # training time of the run before the checkpoint it resumed from
        self._fit_started = time.perf_counter()
        self._fitting = False  # between this module's on_fit_start and on_fit_end (see check_finite)
        self._own_rng_restored = False  # this DDP process's generators, from the checkpoint it resumes
        self._log_now = False  # whether this training step logs its per-step values (_logging_step)
        self._step_losses: list[Tensor] = []  # the losses of the optimizer step's accumulated batches so far
        self._batch_started: float | None = None  # when the last training batch began (_logging_step)

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the hook in progress on the module around every hook call (`_current_fx_name`, ~45 writes
        # a training step), and the recipe keeps per-step values (`_log_now`, `_batch_started`): a plain value for a
        # name that already holds one cannot be a parameter, buffer or submodule, so it skips nn.Module.__setattr__'s
        # registry checks (~2 us each on the CPU; on a GPU, whose steps can take ~3 ms, that host time is the step's).
        if name in self.__dict__ and not isinstance(value, (Tensor, nn.Module)):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.net(*inputs)

    def loss(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean loss, plus (predictions, targets) flattened the way the metrics want them."""
        # In float32 (a no-op for float32 logits; under bf16-mixed the cast autocast's cross_entropy makes anyway):
        # under bf16-true a bfloat16 loss keeps 8 bits, steps of 1/128 at 1.5 nats, coarser than the differences
        # between runs, and bfloat16 probabilities tie in the AUROC.
        logits = logits.float()
        if self.hparams.task == "binary":
            logits = logits.reshape(-1)  # (B,) one logit per row
            return F.binary_cross_entropy_with_logits(logits, targets.float()), logits.sigmoid(), targets
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # (B*T, classes), (B*T,)
        return F.cross_entropy(logits, targets), logits, targets

    def smoothed(self, loss: Tensor, logits: Tensor) -> Tensor:
        """The training loss with label smoothing ε (model.label_smoothing): the cross-entropy against targets that
        keep 1 - ε on the true class and spread ε evenly over all of them (ε/2 on each side of a binary one), i.e.
        (1 - ε) x `loss` + ε x the loss against the even spread. It stops the logits growing without bound to make
        a training example certain. Validation and test losses stay the plain ones."""
        eps = self.hparams.label_smoothing
        if not eps:
            return loss
        logits = logits.float()
        if self.hparams.task == "binary":  # against a target of 0.5: -(log p + log(1 - p)) / 2
            even = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 0.5))
        else:  # the mean over the classes of -log p, averaged over the items
            even = -F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1).mean()
        return (1 - eps) * loss + eps * even

    def _step(self, batch: tuple[Tensor, ...], stage: str) -> tuple[Tensor, Tensor]:
        """(the batch's mean loss, its logits), the stage's metrics updated."""
        *inputs, targets = batch
        logits = self.net(*inputs)
        loss, preds, flat_targets = self.loss(logits, targets)
        self.losses[f"{stage}_"].update(loss.detach(), flat_targets.numel())
        self.metrics[f"{stage}_"].update(preds.detach(), flat_targets)
        return loss, logits

    def _logging_step(self, batch_idx: int) -> tuple[bool, bool]:
        """(whether Lightning sends this step's on_step values to the loggers, whether every DDP process does so too:
        not one process alone, by its own clock). Lightning sends them when (optimizer steps done + 1) is a multiple
        of log_every_n_steps, and at the run's last step (asked to stop, Lightning sends that step too).
        Per-step values are logged only then: a self.log call costs ~1 ms of Python (a sixth of the DNN's CPU
        step), and at a step Lightning sends without new values it repeats the last ones, stale, under its number.
        trainer.max_time's Timer decides after a batch whether the time ran out during it: a batch that begins
        within twice the previous batch's duration of the limit logs its step."""
        n, steps = self.trainer.log_every_n_steps, self.trainer.global_step + 1  # with this batch's optimizer step
        now, before = time.perf_counter(), self._batch_started
        self._batch_started = now
        every_rank = n > 0 and (steps % n == 0 or self.ends_the_run(batch_idx, steps))
        return every_rank or n > 0 and time_is_up(
            self.trainer, within=2 * (now - before) if before is not None else 0.0), every_rank

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss, logits = self._step(batch, "train")
        self._step_losses.append(loss.detach())  # with trainer.accumulate_grad_batches, the step's batches so far
        self._log_now, every_rank = self._logging_step(batch_idx)  # (_log_now: also read by on_before_optimizer_step)
        if self._log_now:  # Lightning sends the value logged at the step's last batch: the mean its gradient follows
            loss_step = torch.stack(self._step_losses).mean()
            if every_rank and self.trainer.world_size > 1:  # DDP: its gradient, all processes' mean
                # (a collective only where every process calls it: not at a step one process's clock picked)
                loss_step = self.trainer.strategy.reduce(loss_step, reduce_op="mean")
            self.log("train/loss_step", loss_step, on_step=True, on_epoch=False)
        # Label smoothing and L1 (a constant pull to zero: sparsity; with gradient steps weights end near 0, not at it)
        # come after logging: train/loss is the data's loss, comparable across runs with and without them.
        loss = self.smoothed(loss, logits)
        if self.hparams.l1:
            loss = loss + self.hparams.l1 * sum(p.abs().sum() for p in decayed_parameters(self.net))
        self._record_non_finite(loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "test")

    # -- the non-finite loss guard --------------------------------------------------------------
    def _record_non_finite(self, loss: Tensor) -> None:
        """Remember the first training batch whose loss is not finite, on the device: no host sync."""
        steps_seen, first_bad_step = self._guard()
        bad = ~torch.isfinite(loss.detach()) & (first_bad_step < 0)
        first_bad_step.copy_(torch.where(bad, steps_seen, first_bad_step))  # in place: no Module.__setattr__
        steps_seen.add_(1)

    def _guard(self, fresh: bool = False) -> tuple[Tensor, Tensor]:
        """(training batches seen, the first with a non-finite loss) on the module's device, made when first
        needed: callbacks such as Lightning's learning-rate finder train inside their own on_fit_start, before
        this module's."""
        if fresh or self.first_bad_step is None or self.first_bad_step.device != self.device:
            self.steps_seen = torch.zeros((), dtype=torch.long, device=self.device)
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        return self.steps_seen, self.first_bad_step

    def check_finite(self) -> None:
        if not self._fitting:  # a callback's trial run before the fit (a learning-rate finder's, from its own
            return  # on_fit_start): where the loss blows up is what that trial looks for; the fit starts clean
        first_bad = self._guard()[1]
        if self.trainer.world_size > 1:  # all ranks stop at the same check, on the earliest bad step of any rank
            never = torch.iinfo(torch.long).max
            earliest = self.trainer.strategy.reduce(first_bad.where(first_bad >= 0, never), reduce_op="min")
            first_bad = earliest.where(earliest < never, -1)
        step = int(first_bad)  # the one host sync, every log interval
        if step >= 0:
            per_epoch = self.trainer.num_training_batches  # inf for a stream of unknown length: no epoch to name
            where = f" (epoch {step // int(per_epoch)}, batch {step % int(per_epoch)})" if per_epoch < math.inf else ""
            raise NonFiniteLossError(
                f"training loss became non-finite at training batch {step}{where}; "
                "the checkpoints written before it are intact: lower model.lr or set trainer.gradient_clip_val")

    def train_seconds(self) -> float:
        """Seconds of this fit so far, plus those of the run it resumed from: from on_fit_start, so reading and
        preparing the data (prepare_data, setup) and building the network are not counted; validation is."""
        return self.seconds_before + time.perf_counter() - self._fit_started

    # -- lifecycle hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # One validation example for the model summary's In sizes, Out sizes and FLOPs columns (the shape each layer
        # gives: a convolution's padding and stride, a pooling's halving) and TensorBoard's graph
        # (+logger.log_graph=true). Not for a compiled network: a forward of it would compile it once more, for that
        # example's shapes.
        datamodule = self.trainer.datamodule  # (None when fit was given loaders, as some tests do)
        if stage == "fit" and datamodule is not None and self.example_input_array is None and not is_compiled(self.net):
            if (batch := next(iter(datamodule.val_dataloader()), None)) is not None:
                # (inputs..., targets); in the precision's dtype, as Lightning converts each batch (bf16-true's:
                # its summary and graph forward the example as it is, into bf16 weights)
                # (a copy: a view of the batch would keep a table's whole device copy of the validation split)
                self.example_input_array = self.trainer.precision_plugin.convert_input(
                    tuple(t[:1].clone() for t in batch[:-1]))

    def on_fit_start(self) -> None:
        self._fit_started, self._fitting = time.perf_counter(), True
        self._guard(fresh=True)  # a fit starts clean, also after a callback's trial run (a learning-rate finder)
        if self.global_rank > 0 and not self._own_rng_restored:
            # Every DDP process was seeded alike (the same initial weights, which DDP broadcasts anyway): from here
            # each draws its own dropout masks, as one process drawing for the whole global batch would, not the
            # masks of rank 0's rows for its own. (Data order and augmentation have their own per-rank generators.)
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_fit_end(self) -> None:
        self._fitting = False

    def configure_model(self) -> None:
        # Before the strategy wraps the network: DDP's gradient buckets take the parameters' strides when it is built.
        # load_from_checkpoint calls it too, before loading the weights (which keep the layout they are copied into):
        # a checkpoint used outside the fit (eval.py, predict.py, load_recipe) runs in the layout it trained in.
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)  # NHWC: faster with cuDNN tensor cores and oneDNN on CPU

    def on_train_start(self) -> None:
        # The training batches run so far: 0, or a resumed checkpoint's count (the counter is not in checkpoints).
        self._guard()[0].fill_(self.trainer.fit_loop.epoch_loop.batch_progress.total.completed)
        if self.trainer.ckpt_path and self.hparams.scheduler["name"] == "none":
            self._reset_lr_and_momentum_to_config()
        if stopped_early(self.trainer):  # resumed after early stopping: no more epochs
            self.trainer.should_stop = True

    def _reset_lr_and_momentum_to_config(self) -> None:
        """A run resumed without a schedule trains at `model.lr` and the optimizer's configured momentum: the restored
        optimizer state holds where the checkpoint's schedule left them (one-cycle ends near lr 0 and cycles Adam's
        beta1), and no scheduler is left to change them."""
        fresh = make_optimizer([torch.zeros(1)], *self._optimizer_settings())  # the settings, resolved
        for group in self.optimizers().optimizer.param_groups:
            group.update({k: fresh.defaults[k] for k in ("lr", "betas", "momentum") if k in group})

    def on_before_optimizer_step(self, optimizer) -> None:
        # The global gradient norm before clipping, every log interval only: the norm costs a pass over the grads.
        self._step_losses.clear()  # the optimizer step's batches are done (their mean is logged)
        if self._log_now:
            norms = [torch.linalg.vector_norm(p.grad) for p in self.parameters() if p.grad is not None]
            if norms:
                self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(norms)), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.trainer.log_every_n_steps and batch_idx % self.trainer.log_every_n_steps == 0:
            self.check_finite()  # (with log_every_n_steps=0: at epoch ends and checkpoints only)
        if self._fitting and self.ends_the_run(batch_idx):  # (not in a callback's trial: a batch-size finder's
            # max_steps=3 would leave should_stop set, and the fit would end before its first step)
            # Asking to stop makes Lightning validate after this batch (it does so for max_time and early stopping,
            # not when max_steps ends a run mid-epoch, nor when the last epoch ends between two validations of a
            # val_check_interval that spans epochs), in an epoch that check_val_every_n_epoch lets validate.
            self.trainer.should_stop = True

    def ends_the_run(self, batch_idx: int, steps: int | None = None) -> bool:
        """This batch is the run's last: max_steps reached (after `steps` optimizer steps, by default those done),
        or the last epoch's last batch."""
        trainer = self.trainer
        if 0 < trainer.max_steps <= (trainer.global_step if steps is None else steps):
            return True
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 == trainer.max_epochs
        return last_epoch and batch_idx + 1 >= trainer.num_training_batches

    # -- epoch metrics --------------------------------------------------------------------------
    def _epoch_values(self, stage: str) -> dict[str, Tensor]:
        """The stage's metrics over everything since the last call, e.g. {"val/loss": ..., "val/acc": ...}."""
        loss = self.losses[f"{stage}_"].compute()
        values = {f"{stage}/loss": loss, **{f"{stage}/{k}": v for k, v in self.metrics[f"{stage}_"].compute().items()}}
        if self.hparams.task == "lm":  # loss is in nats per character
            values[f"{stage}/bpc"] = loss / math.log(2)
            values[f"{stage}/perplexity"] = loss.exp()
        self.losses[f"{stage}_"].reset()
        self.metrics[f"{stage}_"].reset()
        return values

    def _log_epoch(self, stage: str) -> None:
        # torchmetrics' compute() has already reduced these over the DDP ranks: sync_dist only averages equal
        # values (tells Lightning they are global); with one process it does nothing.
        self.log_dict(self._epoch_values(stage), prog_bar=stage != "train", sync_dist=True)

    @torch.no_grad()
    def score(self, batches) -> dict[str, float]:
        """The test/... metrics of `batches`, now, outside Trainer.test: benchmarks/time_to_accuracy.py scores the
        test split between training epochs. Call in eval mode."""
        for batch in batches:
            self._step(batch, "test")
        return {name: float(value) for name, value in self._epoch_values("test").items()}

    def on_train_epoch_end(self) -> None:
        if repeated_epoch_end(self.trainer):  # done before the checkpoint this run resumed from
            progress = self.trainer.fit_loop.epoch_progress  # Lightning counted the epoch processed again
            progress.total.processed, progress.current.processed = progress.total.started, progress.current.started
            return
        self.check_finite()
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.trainer.state.fn == "fit":  # every checkpoint of a fit, also those written after a validation
            self.check_finite()
        # Outside the fit (a learning-rate finder's trial checkpoint, from its on_fit_start before this module's) the
        # clock has not started: the time since this module was built is the data's set-up, not training.
        checkpoint["train_seconds"] = self.train_seconds() if self._fitting else self.seconds_before
        # Under DDP a count of test batches (trainer.limit_test_batches) is per process: eval.py scores as many.
        checkpoint["world_size"] = self.trainer.world_size
        # RNG states (augmentation, dropout): a resumed run draws what the uninterrupted run would have.
        checkpoint["rng"] = {"cpu": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        # Each process's own (on_fit_start), in rank order (every rank saves). Not before this module's on_fit_start
        # (a learning-rate finder's trial checkpoint): the processes are still seeded alike, and restoring that trial
        # would keep them so (on_fit_start skips the reseed of a process whose own state was restored).
        if self.trainer.world_size > 1 and self._fitting:
            checkpoint["rng"]["per_rank"] = {device: self._gathered(state) for device, state in self._rng_states()}

    def _rng_states(self) -> list[tuple[str, torch.Tensor]]:
        """This process's generators: the CPU's, and its GPU's (a DDP process has one)."""
        device = self.trainer.strategy.root_device
        return [("cpu", torch.get_rng_state())] + ([("cuda", torch.cuda.get_rng_state(device))]
                                                    if device.type == "cuda" else [])

    def _gathered(self, state: torch.Tensor) -> torch.Tensor:
        root = self.trainer.strategy.root_device  # (NCCL gathers GPU tensors only)
        return self.trainer.strategy.all_gather(state.to(root)).cpu()  # (world_size, state bytes)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this before configure_optimizers, which checks the new run's schedule against the saved one.
        self._resumed_schedule = (checkpoint.get("lr_schedulers") or [None])[0]
        if self._trainer is not None and self.trainer.state.fn == "fit":  # a resume (not trainer.test's load)
            self.seconds_before = checkpoint.get("train_seconds", 0.0)
            if "rng" in checkpoint:
                torch.set_rng_state(checkpoint["rng"]["cpu"])
                for device, state in enumerate(checkpoint["rng"]["cuda"][:torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(state, device)  # the GPUs this machine has, if it has fewer
                per_rank = checkpoint["rng"].get("per_rank", {})
                if len(per_rank.get("cpu", [])) == self.trainer.world_size:  # a DDP run resumed on as many processes
                    self._own_rng_restored = True
                    torch.set_rng_state(per_rank["cpu"][self.global_rank].clone())
                    if "cuda" in per_rank and (device := self.trainer.strategy.root_device).type == "cuda":
                        torch.cuda.set_rng_state(per_rank["cuda"][self.global_rank].clone(), device)

    # -- optimization ---------------------------------------------------------------------------
    def _optimizer_settings(self) -> tuple[str, float, dict]:
        options = {k: v for k, v in self.hparams.optimizer.items() if k != "name"}
        return self.hparams.optimizer["name"], self.hparams.lr, options

    def configure_optimizers(self):
        decayed = decayed_parameters(self.net)
        ids = {id(p) for p in decayed}
        groups = [{"params": decayed, "weight_decay": self.hparams.weight_decay},
                  {"params": [p for p in self.net.parameters() if id(p) not in ids], "weight_decay": 0.0}]
        optimizer = make_optimizer(groups, *self._optimizer_settings())
        if self.hparams.scheduler["name"] == "none":
            return optimizer
        scheduler = make_scheduler(optimizer, self.hparams.scheduler, self.hparams.lr, self.trainer)
        check_resumed_length(self._resumed_schedule, scheduler, self.hparams.scheduler["name"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_recipe(ckpt_path: str, map_location: str = "cpu") -> Recipe:
    """A trained Recipe from its checkpoint alone; `weights_only=True`: loading never runs code from the file. (The
    hyperparameters come from the file memory-mapped: only Lightning's load reads its tensors.)"""
    hparams = read_checkpoint(ckpt_path)["hyper_parameters"]
    try:  # another project's Lightning checkpoint may keep a `config` of its own, without redes' model.net
        net_config, net_kwargs = hparams["config"]["model"]["net"], dict(hparams["net_kwargs"])
        target = net_config["_target_"]
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{ckpt_path} is not a checkpoint written by train.py (its config names no model.net, "
                             "or no net_kwargs)") from None
    try:
        net = instantiate(net_config)(**net_kwargs)
    except InstantiationException as err:  # a class of the user's that this copy of the code cannot import
        cause = err
        while cause.__cause__ is not None:  # Hydra's wrappers, down to the import's own error
            cause = cause.__cause__
        cause = " ".join(f"{type(cause).__name__}: {cause}".split())
        raise UserInputError(f"{ckpt_path} holds a network of class {target}, which cannot be built here ({cause}); "
                             "run this where the code that trained it can be imported") from None
    verify_checksums(ckpt_path)  # the weights' bytes (Lightning reads them without checking them)
    return Recipe.load_from_checkpoint(ckpt_path, map_location=map_location, net=net, weights_only=True)
