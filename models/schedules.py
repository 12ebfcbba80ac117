"""Learning-rate schedules (`scheduler=none|step|cosine|onecycle`), stepped once per optimizer step: their lengths
are counted in optimizer steps from the Trainer's settings and the training loader."""
import math

import lightning as L
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

from data import UserInputError

SCHEDULE_LENGTH = {"step": "step_size", "cosine": "T_max", "onecycle": "total_steps"}  # the attribute, in steps
SCHEDULERS = ("none", *SCHEDULE_LENGTH)
# The settings each schedule reads (configs/scheduler/NAME.yaml sets them); any other key would be ignored.
SCHEDULE_SETTINGS = {"none": (), "step": ("every_epochs", "gamma"), "cosine": ("final_ratio",),
                     "onecycle": ("pct_start", "cycle_momentum", "base_momentum", "max_momentum")}


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimizer steps in one epoch: the loader's batches (capped by limit_train_batches), one step per
    accumulate_grad_batches of them, and one more for a remainder (Lightning steps at an epoch's last batch)."""
    # Not trainer.estimated_stepping_batches: it builds the train loader before a resumed run's checkpoint
    # is restored, and Lightning then never gives that loader its saved position (mid-epoch resume breaks).
    batches = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def total_steps(trainer: L.Trainer, name: str) -> int:
    """The run's optimizer steps: max_steps, or max_epochs epochs, whichever ends it first."""
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    by_epochs = steps_per_epoch(trainer) * max_epochs if max_epochs and max_epochs > 0 else None
    if max_steps and max_steps > 0:
        return min(max_steps, by_epochs) if by_epochs else max_steps
    if by_epochs is None:
        raise UserInputError(f"scheduler={name} needs the run's length: set trainer.max_epochs or trainer.max_steps, "
                             "or use scheduler=none")
    return by_epochs


def one_cycle(optimizer: torch.optim.Optimizer, schedule: dict, lr: float, total: int) -> OneCycleLR:
    """Warm up to `lr` for pct_start of the run's `total` steps, then anneal to ~0; momentum (or Adam's beta1)
    cycles the other way, for an optimizer that has some. The warm-up is at least two steps (from lr / 25 at
    step 0 to lr at step 1): a shorter one would start the run already annealing. A run of one or two steps has
    no room for a cycle and trains at `lr` (a one-step cycle's only step is its last, at lr / 250000)."""
    has_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
    if total <= 2:  # OneCycleLR with no warm-up (pct_start 0) and its start, peak and end all at lr: constant
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.0, div_factor=1.0,
                          final_div_factor=1.0, cycle_momentum=False)
    # OneCycleLR's warm-up ends at step pct_start * total - 1: below 1 it starts annealing at once, and at exactly
    # 0 it divides by the warm-up's length, 0 (debug=fast trainer.max_epochs=2: 4 steps)
    pct_start = max(schedule["pct_start"], 2 / total)
    return OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=pct_start,
                      cycle_momentum=schedule.get("cycle_momentum", True) and has_momentum,
                      base_momentum=schedule.get("base_momentum", 0.85),
                      max_momentum=schedule.get("max_momentum", 0.95))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: dict, lr: float,
                   trainer: L.Trainer) -> LRScheduler:
    """`schedule` (the run's `scheduler` config, not `none`) for `optimizer`, whose base learning rate is `lr`."""
    name = schedule["name"]
    if name == "step":  # multiply the LR by gamma every `every_epochs` epochs
        return StepLR(optimizer, step_size=schedule["every_epochs"] * steps_per_epoch(trainer), gamma=schedule["gamma"])
    if name == "cosine":  # from lr down to lr * final_ratio over the whole run
        return CosineAnnealingLR(optimizer, T_max=total_steps(trainer, name), eta_min=lr * schedule["final_ratio"])
    return one_cycle(optimizer, schedule, lr, total_steps(trainer, name))


def check_resumed_length(saved: dict | None, scheduler: LRScheduler, name: str) -> None:
    """A resumed run continues the checkpoint's schedule (`saved`, its state), whose length was the first run's: a
    run of another length would leave it (OneCycleLR raises past its end) or stretch nothing. A saved state without
    the length is another scheduler's (StochasticWeightAveraging puts its SWALR in the schedule's place): not
    checked."""
    key = SCHEDULE_LENGTH[name]
    if saved is not None and key in saved and saved[key] != getattr(scheduler, key):
        raise UserInputError(
            f"ckpt_path: the checkpoint's {name} schedule is {saved.get(key)} steps long, this run's "
            f"{getattr(scheduler, key)}: resume with the trainer.max_epochs, trainer.max_steps and data.batch_size "
            "the run started with (or scheduler=none to go on at a constant model.lr)")


def cut_short(trainer: L.Trainer) -> str | None:
    """One line saying that the run ended (trainer.max_time) before its cosine or one-cycle schedule did, so its
    learning rate never came down and its metrics are those of a run cut short; None when it did end."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        length = getattr(scheduler, {OneCycleLR: "total_steps", CosineAnnealingLR: "T_max"}.get(type(scheduler), ""), 0)
        if scheduler.last_epoch < length:
            end = scheduler.optimizer.param_groups[0].get("min_lr", getattr(scheduler, "eta_min", 0.0))  # one-cycle's
            return (f"trainer.max_time ended the run after {scheduler.last_epoch} of the {length} steps its learning-"
                    f"rate schedule spans: the rate was {scheduler.get_last_lr()[0]:.2g}, not the {end:.2g} it ends "
                    "at, which costs accuracy; give more time (trainer.max_time) or fewer steps (trainer.max_steps)")
    return None


class LearningRateMonitor(L.pytorch.callbacks.LearningRateMonitor):
    """Lightning's, logging once per optimizer step: under trainer.accumulate_grad_batches it logged at every batch
    of a step, the same value at the same step two or more times. (At the step's last batch: its learning rate.)"""

    def on_train_batch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if not trainer.fit_loop.epoch_loop._should_accumulate():
            super().on_train_batch_start(trainer, *args, **kwargs)
