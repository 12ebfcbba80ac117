"""Checkpoints that survive crashes, and resuming from them.

- `AtomicCheckpointIO` writes `x.ckpt.tmp` beside the target, then renames it over `x.ckpt` (`os.replace` is
  atomic on one filesystem): a crash mid-write leaves the previous checkpoint whole (and an error, no `.tmp`).
- `RunCheckpoint` keeps its record of the best epoch when a run directory was moved or copied before a resume,
  and saves a step that a validation follows only after that validation, so a resume never skips one.
- `EarlyStopping` keeps the patience a resumed run is given (Lightning's takes the checkpoint's): a run that
  stopped early trains on when resumed with a larger `callbacks.early_stopping.patience`.
- `resolve_ckpt_path` turns the `ckpt_path` setting into a checkpoint to resume from, refusing one that
  does not exist or was trained by another network; `check_checkpoint_fits`, once the data is read, one trained
  on other data, with other network settings or by another optimizer.
Checkpoints hold only tensors and plain Python containers, so every load uses `weights_only=True`.
"""
import io
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.checks import flatten
from models.recipe import repeated_epoch_end
from models.records import verify_checksums
from models.runs import data_differences, load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not records.written_whole: that writes a symlink's target, and Lightning's save_last="link" makes last.ckpt
        # a link to best.ckpt (the newest state would go into best.ckpt). A fixed name: a kill -9 mid-write leaves
        # one stale file, which the next save overwrites, not one per process.
        tmp = path.with_name(path.name + ".tmp")
        try:
            # Serialized in memory first (as Lightning's own _atomic_save does), then written: a full disk is then an
            # OSError that says so, which train.py reports in one line (torch.save's own writer stops at the short
            # write with RuntimeError "unexpected pos").
            serialized = io.BytesIO()
            torch.save(checkpoint, serialized)
            tmp.write_bytes(serialized.getbuffer())
            os.replace(tmp, path)
        finally:  # a failed write (disk full, Ctrl-C) leaves no half file behind
            tmp.unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with three changes for resuming.
    - After a resume from a run directory that was moved or copied, Lightning forgets the best score (its saved
      folder differs from this one), and the next epoch, however bad, overwrites best.ckpt. Here the saved paths
      are re-rooted in this run's checkpoint folder when the best checkpoint is there (a resume from another run's
      checkpoint starts its own record, as Lightning's does).
    - A step save is made only at a batch that ends an optimizer step, never within trainer.accumulate_grad_batches.
    - The every-N-steps save of a step that a validation follows (an epoch's last, a val_check_interval's, the
      run's last) waits until that validation is done: saved before it, a resume would start after it, and that
      validation (best checkpoint, early stopping) would never happen. Waiting only moves the save, never drops it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending: int | None = None  # the batch_idx of a step save that waits for a validation
        self.resuming = False  # set by make_trainer for a resumed run

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            if self.resuming:  # the folder holds what the run resumes from (train.py refuses a fresh run there)
                warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():
            # No optimizer step at this batch (trainer.accumulate_grad_batches): its gradient, which no checkpoint
            # holds, waits for the step's other batches. Lightning would save here at the first batch of a run resumed
            # at a multiple of every_n_train_steps (it has saved nothing yet), and a resume from that checkpoint
            # would take its step without this batch.
            return
        every = self._every_n_train_steps  # a step Lightning saves at, and a validation follows: wait for it
        if every and trainer.global_step % every == 0 and validates_next(trainer, pl_module, batch_idx):
            self._pending = batch_idx
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_pending(self, trainer, pl_module) -> None:
        if self._pending is not None:  # Lightning's own decision (every N steps, not twice), now
            batch_idx, self._pending = self._pending, None
            super().on_train_batch_end(trainer, pl_module, None, None, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_pending(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
        if repeated_epoch_end(trainer):  # last.ckpt holds this very state
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._save_pending(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:  # a validation that did not come after all
        super().on_train_end(trainer, pl_module)
        self._save_pending(trainer, pl_module)

    def _generate_state_key(self, **kwargs) -> str:
        # Saved under ModelCheckpoint's own key: checkpoints written by either class resume with either.
        return f"ModelCheckpoint{kwargs!r}"

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:
            def here(path):
                return str(Path(self.dirpath) / os.path.relpath(path, saved)) if path else path

            if Path(here(state_dict.get("best_model_path")) or "").is_file():
                state_dict = {**state_dict, "dirpath": self.dirpath,
                              **{key: here(state_dict.get(key)) for key in
                                 ("best_model_path", "kth_best_model_path", "last_model_path")},
                              "best_k_models": {here(p): v for p, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


class EarlyStopping(callbacks.EarlyStopping):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not repeated_epoch_end(trainer):  # (checked then, its state restored; the validation metrics are gone)
            super().on_train_epoch_end(trainer, pl_module)

    def load_state_dict(self, state_dict: dict) -> None:
        patience = self.patience  # this run's setting: Lightning would restore the checkpoint's, silently
        super().load_state_dict(state_dict)
        self.patience = patience
        if self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED and self.wait_count < patience:
            # Stopped for want of patience, and given more: the epochs without improvement so far still count.
            self.stopping_reason, self.stopping_reason_message, self.stopped_epoch = (
                EarlyStoppingReason.NOT_STOPPED, None, 0)


def validates_next(trainer, pl_module, batch_idx: int) -> bool:
    """Whether a validation runs right after this training batch: Lightning's own test (check_val_every_n_epoch,
    val_check_interval, validation off), or the recipe's end of the run (it asks Lightning to stop, and so to
    validate, after the callbacks' turn). A time-based val_check_interval: no, as DDP ranks could disagree."""
    if getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    loop = trainer.fit_loop.epoch_loop
    try:  # Lightning's internals (2.6): another version may name them otherwise
        if loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return True
        ends_the_run = getattr(pl_module, "ends_the_run", None)
        return bool(ends_the_run and ends_the_run(batch_idx) and loop._should_check_val_epoch()
                    and trainer.fit_loop._can_stop_early)
    except AttributeError as err:  # save when Lightning would, and say so once
        rank_zero_warn(f"this Lightning has no {err.name}: step checkpoints are saved as Lightning saves them, "
                       "and a resume from one written just before a validation skips that validation")
        return False


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path, net_target: str) -> str | None:
    """None (a fresh run), or the checkpoint to resume: `last` means this run directory's last.ckpt."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserInputError(f"ckpt_path={ckpt_path}: no checkpoint at {path}; "
                             "give an existing .ckpt, or `last` together with the run's hydra.run.dir")
    try:
        checkpoint = load_checkpoint(path)
        trained = checkpoint["hyper_parameters"]["config"]["model"]["net"]["_target_"]
    except UserInputError as err:
        raise UserInputError(f"ckpt_path={ckpt_path}: {err}") from err
    except (KeyError, TypeError) as err:  # another project's Lightning checkpoint, with a `config` of its own
        raise UserInputError(f"ckpt_path={ckpt_path}: {path} is not a checkpoint written by train.py (its config "
                             f"names no model.net)") from err
    if not {"optimizer_states", "loops"} <= checkpoint.keys():  # Lightning would fail with a KeyError
        raise UserInputError(f"ckpt_path={ckpt_path}: {path} holds the network's weights only (saved with "
                             "save_weights_only), not the optimizer, schedule and progress a run continues from; "
                             "give a full checkpoint, such as the run's checkpoints/last.ckpt")
    if trained != net_target:
        raise UserInputError(f"ckpt_path={ckpt_path}: {path} holds a {trained}, not the {net_target} this run builds; "
                             "pick the model=... it was trained with")
    return str(path)


def check_checkpoint_fits(path: str, ckpt_path: str, net_kwargs: dict, recipe: L.LightningModule | None = None,
                          cfg: DictConfig | None = None) -> None:
    """What a resumed run builds against what the checkpoint holds, each a traceback or silently wrong otherwise:
    the data the network was sized by (`net_kwargs`: 3 colour channels for 1, another vocabulary, or, for an
    alphabet of the same size, every character read as another); the network's weights (`recipe`, built from
    `cfg`: model.net.hidden_size=64 for 128); the optimizer and schedule whose state it restores (adamw's moments
    are no sgd's, a one-cycle schedule's state no cosine's)."""
    checkpoint = load_checkpoint(Path(path))  # memory-mapped: shapes and settings, no tensor read
    try:  # its bytes (torch.load reads damaged ones without a word: a run would go on from noise or NaN)
        verify_checksums(path)
    except UserInputError as err:
        raise UserInputError(f"ckpt_path={ckpt_path}: {err}") from None
    saved = checkpoint["hyper_parameters"].get("net_kwargs", {})
    if differences := data_differences(saved, net_kwargs):
        raise UserInputError(f"ckpt_path={ckpt_path}: the checkpoint was trained on other data ({differences}); "
                             "resume it with the data it was trained on")
    if recipe is None or cfg is None:
        return
    trained = checkpoint["hyper_parameters"]["config"]
    shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint.get("state_dict", {}).items()}
    if shapes != {name: tuple(tensor.shape) for name, tensor in recipe.state_dict().items()}:
        there = flatten(trained.get("model", {}), "model.")
        here = flatten(OmegaConf.to_container(cfg.model, resolve=True), "model.")
        settings = ", ".join(f"{key}={there.get(key)!r} there, {here.get(key)!r} here"
                             for key in sorted(set(there) | set(here)) if there.get(key) != here.get(key))
        raise UserInputError(f"ckpt_path={ckpt_path}: the checkpoint's network has other weights than this run's "
                             f"({settings or 'another network'}); resume with the model settings it was trained with")
    name = trained.get("optimizer", {}).get("name")
    if name is not None and name != cfg.optimizer.name:
        raise UserInputError(f"ckpt_path={ckpt_path}: the checkpoint was trained with optimizer={name}, whose state "
                             f"it restores, and this run builds optimizer={cfg.optimizer.name}: resume with "
                             f"optimizer={name}")
    schedule = trained.get("scheduler", {}).get("name")
    if schedule not in (None, "none") and cfg.scheduler.name not in ("none", schedule):  # its state: another's
        raise UserInputError(f"ckpt_path={ckpt_path}: the checkpoint was trained with scheduler={schedule}, whose "
                             f"state it restores, and this run builds scheduler={cfg.scheduler.name}: resume with "
                             f"scheduler={schedule} (or scheduler=none to go on at a constant model.lr)")
    if changed := overridden_settings(trained, cfg, restored_schedule=schedule not in (None, "none") and
                                      cfg.scheduler.name == schedule):
        raise UserInputError(f"ckpt_path={ckpt_path}: the checkpoint's optimizer and schedule state, which a resume "
                             f"restores, would keep what it was trained with ({changed}): resume with those values"
                             + (" (or scheduler=none to go on at a new constant model.lr)" if "model.lr=" in changed
                                else ""))


def overridden_settings(trained: dict, cfg: DictConfig, restored_schedule: bool) -> str:
    """The settings a resumed run gives that the restored optimizer (or schedule) state would silently override:
    model.weight_decay and optimizer.* options, which Lightning restores with the optimizer's param groups (but the
    momentum and betas a run without a schedule takes from its config, as model.lr); under the same schedule, whose
    state holds its rates, also model.lr and scheduler.*."""
    there, here = flatten(trained, ""), flatten(OmegaConf.to_container(cfg, resolve=True), "")
    keys = ["model.weight_decay", *(f"optimizer.{k}" for k in cfg.optimizer if k != "name")]
    keys += [f"optimizer.{k}" for k in trained.get("optimizer", {}) if k != "name" and f"optimizer.{k}" not in keys]
    if cfg.scheduler.name == "none":  # on_train_start sets them from the config
        keys = [k for k in keys if k not in ("optimizer.betas", "optimizer.momentum")]
    if restored_schedule:
        keys += ["model.lr", *(f"scheduler.{k}" for k in cfg.scheduler if k != "name")]
    # Not what an older checkpoint's config lacks, but an optimizer option it did not set: the state holds torch's
    # default, which +optimizer.eps=... given now would not change.
    known = [k for k in keys if k.split(".")[0] in trained and (k in there or k.startswith("optimizer."))]
    return ", ".join(f"{k}={there[k]!r} there, {here.get(k)!r} here" if k in there else
                     f"{k} torch's default there, {here.get(k)!r} here" for k in known if there.get(k) != here.get(k))
