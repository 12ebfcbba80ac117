"""Reliability: kill -9 and resume, reproducible runs, the non-finite guard, atomic and safe checkpoints,
and one-line errors for bad input that damage nothing written before."""
import datetime
import errno
import io
import json
import os
import re
import subprocess
import sys
import time
import types
import typing
from pathlib import Path

import hydra.core.utils
import lightning as L
import pytest
import yaml
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

import train as train_module
from data import UserInputError, check_folder, class_names
from models.checkpointing import (AtomicCheckpointIO, RunCheckpoint, check_checkpoint_fits, resolve_ckpt_path,
                                 validates_next)
from models.recipe import NonFiniteLossError, Recipe
from models.records import read_metrics, read_overrides, write_json
from models.runs import instantiate_data, load_checkpoint
from models.checks import check_config, check_model_reads_data, check_settings
from models.signatures import admits, check_trainer_args
from models.cli import (check_overrides, check_syntax, claimed_run_dir, config_kept_on_failure, flags_first,
                        hydra_overrides, resume_arguments, sweep_variants, trainer_arguments)
from tests.conftest import damaged_copy, make_config
from tests.cli_process import TrainPy, run_cli
from tests.test_train import FAST, mnist_config

ROOT = Path(__file__).resolve().parents[1]

COMPARED = ("test/acc", "test/loss", "val/acc_best", "epochs", "steps")


def cli_args(mnist_dir, out):
    # 4 epochs x 15 steps; last.ckpt every 4 steps; no early stop, so the run length is fixed.
    return ["model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", *FAST, "trainer.max_epochs=4",
            "callbacks.early_stopping=null", "callbacks.step_checkpoint.every_n_train_steps=4", f"hydra.run.dir={out}"]


def assert_same_final_weights(run, other):
    """The last.ckpt weights of two runs agree: the runs trained on the same batches in the same order."""
    ours, theirs = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (run, other))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.allclose(value.float(), theirs[name].float(), atol=1e-6), name


def saved_step(path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # not there yet
        return -1


def test_resume_after_three_kill_9_matches_an_uninterrupted_run(mnist_dir, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_cli(*cli_args(mnist_dir, whole)).returncode == 0
    expected = json.loads((whole / "metrics.json").read_text())

    # The first two starts: one command that starts the run and continues it, as a cluster restarts a job
    # (torchrun --max-restarts, SLURM --requeue); then resume=.
    last, args, kills = broken / "checkpoints" / "last.ckpt", [*cli_args(mnist_dir, broken), "ckpt_path=last"], []
    for cycle in range(3):
        before = saved_step(last)
        proc = TrainPy(*args)
        deadline = time.time() + 300  # a slow, shared machine
        while saved_step(last) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if saved_step(last) <= before:
            proc.kill()
            pytest.fail(f"cycle {cycle}: no new last.ckpt within 300 s (exit code {proc.poll()})")
        proc.kill()  # SIGKILL, mid-epoch, right after a fresh last.ckpt
        kills.append(saved_step(last))
        if cycle == 1:
            args = [f"resume={broken}"]  # the run's own overrides, its directory, ckpt_path=last
    assert kills == sorted(set(kills)) and kills[-1] < expected["steps"], kills  # each cycle got further
    result = run_cli(f"resume={broken}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exists and is not empty" not in result.stderr  # Lightning's warning: the folder is the run's own
    resumed = json.loads((broken / "metrics.json").read_text())
    assert {k: resumed[k] for k in COMPARED} == pytest.approx({k: expected[k] for k in COMPARED}, abs=1e-6)
    assert_same_final_weights(broken, whole)


@pytest.mark.parametrize("budget", [
    ["trainer.max_epochs={}"],  # an epoch budget: Lightning restores no loader state from an epoch-end checkpoint
    ["trainer.max_epochs=-1", "trainer.max_steps={}", "trainer.limit_train_batches=5"],  # a step budget that
    # stops each epoch early: the loader's state says mid-epoch. With early stopping too (the LSTM's defaults):
    # Lightning runs such a checkpoint's epoch end again, and early stopping found no val/acc there (a traceback)
    ["trainer.max_epochs=-1", "trainer.max_steps={}", "trainer.limit_train_batches=5",
     "callbacks.early_stopping.patience=100"],
    ["trainer.max_epochs=4", "trainer.max_steps={}", "trainer.limit_train_batches=5",  # and an epoch budget: it
     "callbacks.early_stopping.patience=100"],  # counted the epoch twice and stopped an epoch short
])
def test_resume_from_an_epoch_end_checkpoint_matches_an_uninterrupted_run(budget, mnist_dir, tmp_path):
    steps = len(budget) > 1
    whole, short = (3, 2) if not steps else (15, 10)   # 3 epochs, and the first 2 of them
    # last.ckpt at epoch ends only; no schedule (a schedule's length is the run's, which this resume extends)
    stopping = [] if any("early_stopping" in a for a in budget) else ["callbacks.early_stopping=null"]
    fixed = [*stopping, "callbacks.step_checkpoint=null", "scheduler=none"]

    def run(out, length, *more):
        args = [a.format(length) for a in budget]
        return train_module.train(mnist_config(mnist_dir, out, *fixed, *args, *more))

    expected = run(tmp_path / "whole", whole)
    first = run(tmp_path / "broken", short)
    resumed = run(tmp_path / "broken", whole, "ckpt_path=last")
    assert {k: resumed[k] for k in COMPARED} == pytest.approx({k: expected[k] for k in COMPARED}, abs=1e-6)
    assert resumed["train_seconds"] > first["train_seconds"]  # both segments' training time
    assert_same_final_weights(tmp_path / "broken", tmp_path / "whole")


class KillAt(L.Callback):
    """Ends the process's training as training batch `batch` of epoch `epoch` starts, like a kill -9 there: the
    checkpoints written before stay as they are. (Hydra imports this as tests.test_reliability, pytest as
    test_reliability: the test matches the message, not the class.)"""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise RuntimeError("killed by KillAt")


def test_a_run_resumed_under_gradient_accumulation_saves_no_step_checkpoint_within_a_step(mnist_dir, tmp_path):
    # 15 batches an epoch, 3 a step: 5 steps, and last.ckpt every 5 steps. Resumed from the epoch-end checkpoint
    # (step 5), Lightning, which had saved nothing in that process yet, saved last.ckpt after the first batch, whose
    # gradient waits for the step's other two batches and is in no checkpoint; killed then, the run resumed from
    # there and took step 6 without that batch (final weights off by ~1e-3).
    fixed = ["callbacks.early_stopping=null", "scheduler=none", "+trainer.accumulate_grad_batches=3",
             "callbacks.step_checkpoint.every_n_train_steps=5"]

    def run(out, epochs, *more):
        return train_module.train(mnist_config(mnist_dir, out, *fixed, f"trainer.max_epochs={epochs}", *more))

    expected = run(tmp_path / "whole", 2)
    run(tmp_path / "broken", 1)
    kill = ["+callbacks.kill._target_=tests.test_reliability.KillAt", "+callbacks.kill.epoch=1",
            "+callbacks.kill.batch=2"]  # before the batch that ends step 6
    with pytest.raises(RuntimeError, match="killed by KillAt"):
        run(tmp_path / "broken", 2, "ckpt_path=last", *kill)
    saved = torch.load(tmp_path / "broken" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 15  # epoch 0's end
    resumed = run(tmp_path / "broken", 2, "ckpt_path=last")
    assert {k: resumed[k] for k in COMPARED} == pytest.approx({k: expected[k] for k in COMPARED}, abs=1e-6)
    assert_same_final_weights(tmp_path / "broken", tmp_path / "whole")


class SaveProbe(L.Callback):
    """Appends a line "global_step validations_finished" to `path` at every checkpoint save. (Hydra imports this
    as tests.test_reliability, pytest as test_reliability: two classes, so a file rather than a class attribute.)"""

    def __init__(self, path: str) -> None:
        self.path, self.validations = path, 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations += not trainer.sanity_checking

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {self.validations}\n")


def probed_saves(mnist_dir, out, *overrides) -> list[tuple[int, int]]:
    log = out / "saves.txt"
    train_module.train(mnist_config(mnist_dir, out, "callbacks.early_stopping=null", *overrides,
                                    "+callbacks.probe._target_=tests.test_reliability.SaveProbe",
                                    f"+callbacks.probe.path={log}"))
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


def test_a_step_checkpoint_a_validation_follows_is_written_after_it(mnist_dir, tmp_path):
    # Validating every 5 steps, a step checkpoint every 5 steps of its own file: each waits for its validation,
    # then is written (the last at step 15, after the epoch's last validation).
    train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1", "callbacks.early_stopping=null",
                                    "+trainer.val_check_interval=5", "callbacks.step_checkpoint.every_n_train_steps=5",
                                    "callbacks.step_checkpoint.filename=step", "callbacks.epoch_checkpoint=null"))
    assert torch.load(tmp_path / "checkpoints" / "step.ckpt", weights_only=True)["global_step"] == 15


def test_no_step_checkpoint_is_written_before_the_validation_that_follows_it(mnist_dir, tmp_path):
    # 15 steps an epoch and last.ckpt every 15 steps: Lightning would save at each epoch's last step, before that
    # epoch's validation, and a run killed during the validation would resume after it, never validating epoch 1.
    saves = probed_saves(mnist_dir, tmp_path / "a", "trainer.max_epochs=2",
                         "callbacks.step_checkpoint.every_n_train_steps=15")
    assert {step for step, _ in saves} == {15, 30}
    assert all(validations == step // 15 for step, validations in saves), saves
    # Steps that no validation follows are saved as before.
    saves = probed_saves(mnist_dir, tmp_path / "b", "trainer.max_epochs=1",
                         "callbacks.step_checkpoint.every_n_train_steps=4")
    assert [step for step, validations in saves if validations == 0] == [4, 8, 12]
    # A validation every 5 steps across epochs, and the one the recipe asks for at the run's end (step 30): every
    # third step is saved, each after the validations due by then.
    saves = probed_saves(mnist_dir, tmp_path / "c", "trainer.max_epochs=2", "+trainer.val_check_interval=5",
                         "+trainer.check_val_every_n_epoch=null", "callbacks.step_checkpoint.every_n_train_steps=3")
    assert set(range(3, 31, 3)) <= {step for step, _ in saves}
    assert all(validations >= step // 5 for step, validations in saves), saves
    # A run cut by max_steps in an epoch that does not validate keeps its last step (and then says it never validated).
    with pytest.raises(UserInputError, match="the run ended without validating"):
        probed_saves(mnist_dir, tmp_path / "d", "trainer.max_steps=12", "+trainer.check_val_every_n_epoch=2",
                     "callbacks.step_checkpoint.every_n_train_steps=3")
    saved = (tmp_path / "d" / "saves.txt").read_text().split()[::2]
    assert saved == ["3", "6", "9", "12"]


def test_without_lightnings_internals_step_checkpoints_are_saved_as_lightning_saves_them():
    # validates_next asks Lightning's private should-validate test (2.6); were it renamed, step checkpoints are
    # written when Lightning writes them (a warning says what is lost), not a crash at the first save.
    epoch_loop = types.SimpleNamespace()  # no _should_check_val_fx
    trainer = types.SimpleNamespace(fit_loop=types.SimpleNamespace(epoch_loop=epoch_loop, _data_fetcher=None))
    with pytest.warns(UserWarning, match="no _should_check_val_fx"):
        assert validates_next(trainer, pl_module=None, batch_idx=0) is False


def test_resuming_with_another_run_length_than_the_schedule_is_one_clear_error(mnist_dir, tmp_path):
    fixed = ["callbacks.early_stopping=null", "callbacks.step_checkpoint=null", "scheduler=onecycle"]
    train_module.train(mnist_config(mnist_dir, tmp_path, *fixed, "trainer.max_epochs=2"))
    with pytest.raises(UserInputError, match="the checkpoint's onecycle schedule is 30 steps long, this run's 45"):
        train_module.train(mnist_config(mnist_dir, tmp_path, *fixed, "trainer.max_epochs=3", "ckpt_path=last"))
    # The way the message offers: no schedule, at model.lr and the optimizer's betas (one-cycle left ~0 and 0.95).
    ended = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"]
    assert ended[0]["lr"] < 1e-4 and ended[0]["betas"][0] > 0.94
    train_module.train(mnist_config(mnist_dir, tmp_path, *fixed, "trainer.max_epochs=3", "ckpt_path=last",
                                    "scheduler=none", "model.lr=0.002"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [(g["lr"], g["betas"]) for g in groups] == [(0.002, (0.9, 0.999))] * 2


def test_same_seed_same_metrics(mnist_dir, tmp_path):
    first = train_module.train(mnist_config(mnist_dir, tmp_path / "a", "trainer.max_epochs=2"))
    second = train_module.train(mnist_config(mnist_dir, tmp_path / "b", "trainer.max_epochs=2"))
    other = train_module.train(mnist_config(mnist_dir, tmp_path / "c", "trainer.max_epochs=2", "seed=1"))
    assert {k: first[k] for k in COMPARED} == {k: second[k] for k in COMPARED}
    assert first["test/loss"] != other["test/loss"]


@pytest.mark.parametrize("saving", [
    ["callbacks.step_checkpoint.every_n_train_steps=5"],                       # last.ckpt every 5 training steps
    ["callbacks.step_checkpoint=null", "+trainer.val_check_interval=5"],       # checkpoints after each validation
])
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(saving, mnist_dir, tmp_path, monkeypatch):
    loss = Recipe.loss

    def poisoned(self, logits, targets):
        value, preds, flat = loss(self, logits, targets)
        return (value * float("nan") if self.trainer.global_step >= 7 else value), preds, flat

    monkeypatch.setattr(Recipe, "loss", poisoned)
    cfg = mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=3", *saving)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at training batch 7 \(epoch 0, batch 7\)"):
        train_module.train(cfg)
    for name in ("last.ckpt", "best.ckpt") if "+trainer.val_check_interval=5" in saving else ("last.ckpt",):
        good = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert good["global_step"] == 5 and all(torch.isfinite(t).all() for t in good["state_dict"].values())


def test_the_non_finite_guard_is_no_buffer_ddp_would_overwrite():
    # DDP copies rank 0's buffers over every rank's before each step: a bad step seen on rank 1 would be erased.
    recipe = Recipe(torch.nn.Linear(2, 1), task="binary", lr=0.1, optimizer={"name": "sgd"}, scheduler={"name": "none"})
    assert dict(recipe.named_buffers()) == {}


def test_a_moved_run_directory_keeps_its_best_checkpoint_record_on_resume(tmp_path):
    old, new, other = (tmp_path / name / "checkpoints" for name in ("old", "new", "other"))
    saved = RunCheckpoint(dirpath=old, filename="best", monitor="val/acc", mode="max")
    saved.best_model_score, saved.best_model_path = torch.tensor(0.9), str(old / "best.ckpt")
    saved.best_k_models = {str(old / "best.ckpt"): torch.tensor(0.9)}
    saved.last_model_path = ""
    new.mkdir(parents=True)
    (new / "best.ckpt").write_bytes(b"the moved best checkpoint")
    moved = RunCheckpoint(dirpath=new, filename="best", monitor="val/acc", mode="max")
    moved.load_state_dict(saved.state_dict())
    assert moved.best_model_score == 0.9 and moved.best_model_path == str(new / "best.ckpt")  # a worse epoch can't win
    assert list(moved.best_k_models) == [str(new / "best.ckpt")] and moved.last_model_path == ""
    # Another run's checkpoint resumed in a new directory: no best.ckpt here, so this run keeps its own record.
    elsewhere = RunCheckpoint(dirpath=other, filename="best", monitor="val/acc", mode="max")
    elsewhere.load_state_dict(saved.state_dict())
    assert elsewhere.best_model_score is None
    # Saved under Lightning's own key: runs checkpointed by plain ModelCheckpoint resume with it, and back.
    assert moved.state_key == ModelCheckpoint(dirpath=new, filename="best", monitor="val/acc", mode="max").state_key


def test_a_step_save_waiting_for_a_validation_that_never_came_is_made_when_training_ends(tmp_path, monkeypatch):
    # A step checkpoint deferred until the validation after its batch: if training ends first, it is saved then,
    # once, with Lightning's own decision for that batch.
    saves = []
    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, batch_idx: saves.append(batch_idx))
    checkpoint = RunCheckpoint(dirpath=tmp_path, every_n_train_steps=5)
    checkpoint._pending = 4
    checkpoint.on_train_end(types.SimpleNamespace(), None)
    checkpoint.on_train_end(types.SimpleNamespace(), None)
    assert saves == [4] and checkpoint._pending is None


def test_a_non_finite_loss_after_a_resume_names_the_runs_own_step(mnist_dir, tmp_path, monkeypatch):
    fixed = ["callbacks.step_checkpoint=null", "callbacks.early_stopping=null", "scheduler=none"]
    train_module.train(mnist_config(mnist_dir, tmp_path, *fixed, "trainer.max_epochs=1"))  # 15 steps
    loss = Recipe.loss

    def poisoned(self, logits, targets):
        value, preds, flat = loss(self, logits, targets)
        return (value * float("nan") if self.trainer.global_step >= 20 else value), preds, flat

    monkeypatch.setattr(Recipe, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at training batch 20 \(epoch 1, batch 5\)"):
        train_module.train(mnist_config(mnist_dir, tmp_path, *fixed, "trainer.max_epochs=2", "ckpt_path=last"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)

    write_bytes = Path.write_bytes

    def dies_mid_write(path, data):
        write_bytes(path, data[:14])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", dies_mid_write)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written file left beside it
    # A link (Lightning's save_last="link": last.ckpt -> best.ckpt) is replaced, not written through.
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "best.ckpt")
    path.unlink()
    path.symlink_to("best.ckpt")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert not path.is_symlink() and torch.load(path, weights_only=True) == {"step": 3}
    assert torch.load(tmp_path / "best.ckpt", weights_only=True) == {"step": 1}


def test_a_full_disk_mid_run_is_one_line_and_the_run_goes_on_from_its_last_checkpoint(mnist_dir, tmp_path, monkeypatch):
    # Given a path, torch.save met a full disk with RuntimeError "unexpected pos" (a traceback that names no disk);
    # checkpoints are serialized first and written as bytes, so the full disk is an OSError, reported in one line.
    write_bytes = Path.write_bytes

    def full_in_epoch_2(path, data):
        if path.name.endswith(".ckpt.tmp") and torch.load(io.BytesIO(data), weights_only=True)["global_step"] > 15:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_in_epoch_2)
    full = rf"^{tmp_path}: cannot write to it \(No space left on device\); make room, then go on with: python train.py "
    with pytest.raises(UserInputError, match=full + rf"resume={tmp_path}$"):
        train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=2"))  # 15 steps an epoch
    monkeypatch.undo()
    assert saved_step(tmp_path / "checkpoints" / "last.ckpt") == 15  # epoch 1's, whole
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    resumed = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=2", "ckpt_path=last"))
    assert resumed["epochs"] == 2 and resumed["steps"] == 30


class Payload:  # a pickled object: loading it would run code
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_weights_only_and_foreign_ones_are_refused(mnist_dir, tmp_path):
    train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1"))
    for name in ("best.ckpt", "last.ckpt"):
        torch.load(tmp_path / "checkpoints" / name, weights_only=True)  # raises if anything but tensors/containers
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": Payload()}, evil)
    with pytest.raises(UserInputError,
                       match="not a readable checkpoint .it holds objects other than tensors") as refused:
        resolve_ckpt_path(str(evil), tmp_path, "models.cnn.ConvNet")
    assert "\n" not in str(refused.value)  # one line, without torch's advice to load it unsafely
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserInputError, match="noise.ckpt is not a readable checkpoint") as refused:
        resolve_ckpt_path(str(tmp_path / "noise.ckpt"), tmp_path, "models.cnn.ConvNet")
    assert "could run code" not in str(refused.value) and "weights_only" not in str(refused.value)  # corrupt
    best = (tmp_path / "checkpoints" / "best.ckpt").read_bytes()
    (tmp_path / "half.ckpt").write_bytes(best[: len(best) // 2])  # a copy cut short
    with pytest.raises(UserInputError, match="half.ckpt is not a readable checkpoint .a truncated or corrupt zip"):
        resolve_ckpt_path(str(tmp_path / "half.ckpt"), tmp_path, "models.cnn.ConvNet")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(UserInputError, match="empty.ckpt is not a readable checkpoint .an empty file"):
        resolve_ckpt_path(str(tmp_path / "empty.ckpt"), tmp_path, "models.cnn.ConvNet")
    torch.save({"hyper_parameters": {"config": {"lr": 0.1}}}, tmp_path / "other.ckpt")  # another project's
    with pytest.raises(UserInputError, match="other.ckpt is not a checkpoint written by train.py"):
        resolve_ckpt_path(str(tmp_path / "other.ckpt"), tmp_path, "models.cnn.ConvNet")
    with pytest.raises(UserInputError, match="holds a models.cnn.ConvNet, not the models.dnn"):
        resolve_ckpt_path(str(tmp_path / "checkpoints" / "best.ckpt"), tmp_path, "models.dnn.ClickMLP")
    # The weights alone (ModelCheckpoint's save_weights_only): scored and predicted with, but no run to continue.
    full = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save({k: v for k, v in full.items() if k not in ("optimizer_states", "lr_schedulers")}, tmp_path / "w.ckpt")
    with pytest.raises(UserInputError, match=r"w.ckpt holds the network's weights only .* such as the run's "
                                             r"checkpoints/last.ckpt"):
        resolve_ckpt_path(str(tmp_path / "w.ckpt"), tmp_path, "models.cnn.ConvNet")
    torch.save({k: v for k, v in full.items() if k != "loops"}, tmp_path / "no_loops.ckpt")  # no progress to go on
    with pytest.raises(UserInputError, match=r"no_loops.ckpt holds the network's weights only"):
        resolve_ckpt_path(str(tmp_path / "no_loops.ckpt"), tmp_path, "models.cnn.ConvNet")
    # ckpt_path=last: this run directory's last.ckpt, not its best.ckpt.
    assert resolve_ckpt_path("last", tmp_path, "models.cnn.ConvNet") == str(tmp_path / "checkpoints" / "last.ckpt")
    torch.save({k: v for k, v in full.items() if k != "state_dict"}, tmp_path / "no_weights.ckpt")
    with pytest.raises(UserInputError, match=r"no_weights.ckpt is not a checkpoint written by train.py \(no network "
                                             r"weights"):
        load_checkpoint(tmp_path / "no_weights.ckpt")  # what eval.py, predict.py and generate.py read first
    # The same network sized by other data: one line once the data is read (not a size-mismatch traceback).
    best = str(tmp_path / "checkpoints" / "best.ckpt")
    sized = torch.load(best, weights_only=True)["hyper_parameters"]["net_kwargs"]  # in_channels, image_size, ...
    check_checkpoint_fits(best, "best.ckpt", {**sized, "image_size": tuple(sized["image_size"])})  # it fits
    with pytest.raises(UserInputError, match=r"trained on other data \(in_channels 1 there, 3 here\)"):
        check_checkpoint_fits(best, "best.ckpt", {**sized, "in_channels": 3})
    part = damaged_copy(Path(best), tmp_path / "damaged.ckpt")  # a resume trained on from the damaged weights
    with pytest.raises(UserInputError, match=rf"ckpt_path=damaged.ckpt: .*damaged.ckpt is not a readable checkpoint "
                                             rf"\({part} is damaged: its bytes fail the CRC-32 check"):
        check_checkpoint_fits(str(tmp_path / "damaged.ckpt"), "damaged.ckpt", sized)
    torch.save({"hyper_parameters": {"config": {}, "net_kwargs": {"vocab": list("abcdef")}}, "state_dict": {}},
               tmp_path / "lm.ckpt")
    with pytest.raises(UserInputError, match=r"other data \(vocab with other entries\)"):  # same size: silent otherwise
        check_checkpoint_fits(str(tmp_path / "lm.ckpt"), "lm.ckpt", {"vocab": list("abcdeg")})
    # Other network settings or another optimizer: one line, not Lightning's size-mismatch page or a KeyError.
    resume = [f"ckpt_path={best}", "trainer.max_epochs=2"]
    with pytest.raises(UserInputError, match=re.escape("other weights than this run's (model.net.hidden_size=256 "
                                                       "there, 64 here); resume with the model settings")):
        train_module.train(mnist_config(mnist_dir, tmp_path / "wider", *resume, "model.net.hidden_size=64"))
    with pytest.raises(UserInputError, match="trained with optimizer=adamw, whose state it restores, and this run "
                                             "builds optimizer=sgd: resume with optimizer=adamw"):
        train_module.train(mnist_config(mnist_dir, tmp_path / "sgd", *resume, "optimizer=sgd", "scheduler=none"))
    with pytest.raises(UserInputError, match="trained with scheduler=onecycle, whose state it restores, and this run "
                                             r"builds scheduler=cosine: resume with scheduler=onecycle \(or"):
        train_module.train(mnist_config(mnist_dir, tmp_path / "cosine", *resume, "scheduler=cosine"))
    with pytest.raises(UserInputError, match=re.escape("would keep what it was trained with (model.weight_decay="
                                                       "0.0005 there, 0.1 here): resume with those values")):
        train_module.train(mnist_config(mnist_dir, tmp_path / "decay", *resume, "model.weight_decay=0.1"))


def test_a_resume_refuses_settings_the_restored_optimizer_state_would_override(tmp_path):
    # Lightning restores the optimizer's param groups (weight decay, eps, betas) and the schedule's state (its rates):
    # a resume given other values trained with the old ones, silently. Without a schedule, model.lr, betas and
    # momentum are the config's (on_train_start sets them); model.l1 and seed are read from the config anyway.
    from models.checkpointing import overridden_settings

    trained = OmegaConf.to_container(make_config("model=dnn", output_dir=tmp_path), resolve=True)

    def changed(*overrides, restored=True):
        return overridden_settings(trained, make_config("model=dnn", *overrides, output_dir=tmp_path), restored)

    assert changed() == changed("model.l1=0.1", "seed=3") == "" and "scheduler" in trained
    assert changed("model.weight_decay=0.5") == "model.weight_decay=0.01 there, 0.5 here"
    assert changed("+optimizer.eps=1e-6") == "optimizer.eps torch's default there, 1e-06 here"
    assert changed("model.lr=0.5", "scheduler.final_ratio=0.5") == (f"model.lr={trained['model']['lr']} there, 0.5 "
                                                                    "here, scheduler.final_ratio=0.01 there, 0.5 here")
    assert changed("model.lr=0.5", "scheduler=none", "optimizer.betas=[0.8,0.99]", restored=False) == ""
    assert changed("optimizer.betas=[0.8,0.99]") == "optimizer.betas=[0.9, 0.999] there, [0.8, 0.99] here"
    assert overridden_settings({"model": {}}, make_config("model=dnn", output_dir=tmp_path), True) == ""  # older


MEMORY_AFTER_LOAD = """
import os, sys
import torch
import hydra.core.utils
from models.runs import load_checkpoint
def rss():  # resident bytes now (Linux)
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
for path in sys.argv[1:]:
    before = rss()
    checkpoint = load_checkpoint(path)
    print((rss() - before) // 2**20)  # MiB the loaded checkpoint holds in memory
    del checkpoint
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from Linux's /proc")
def test_reading_a_checkpoints_settings_does_not_read_its_tensors(tmp_path):
    # A resume reads the checkpoint's config twice before Lightning loads it (which network, which data): with
    # gigabytes of embeddings and Adam state, whole reads would cost that memory and time each.
    state = {"hyper_parameters": {"config": {"model": {}}}, "state_dict": {"w": torch.zeros(25_000_000)}}  # 100 MB
    torch.save(state, tmp_path / "zip.ckpt")
    torch.save(state, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)  # torch < 1.6's format
    names = ("zip.ckpt", "legacy.ckpt")
    printed = subprocess.run([sys.executable, "-c", MEMORY_AFTER_LOAD, *(str(tmp_path / n) for n in names)],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    added = dict(zip(names, map(int, printed.split())))
    assert added["zip.ckpt"] < 20 and added["legacy.ckpt"] > 75, added  # mapped, vs. read whole (still readable)


@pytest.mark.parametrize("overrides, message", [
    (["model=dnn", "data=csv", "data.path=x.csv", "data.label_column=y", "data.numeric_columns=[age,age]"],
     r"column\(s\) \['age'\] are named twice"),
    (["model=dnn", "data=csv", "data.path=x.csv", "data.label_column=y", "data.numeric_columns=[age]",
      "data.val_fraction=0.9", "data.test_fraction=0.5"], "data.val_fraction=0.9, data.test_fraction=0.5: each must"),
    (["model=lstm", "data=tinyshakespeare", "data.path=x.txt", "data.val_fraction=0.9", "data.test_fraction=0.5"],
     "data.val_fraction=0.9, data.test_fraction=0.5"),
    (["model=dnn", "data.test_fraction=1.5"], r"^data.test_fraction=1.5: give a number > 0 and < 1$"),  # was
    (["model=dnn", "data.val_fraction=0"], r"^data.val_fraction=0: give a number > 0 and < 1$"),  # "more rows"
    (["model=dnn", "+data.label_column=age"], r"got multiple values for argument 'label_column': drop that setting "
                                              r"\(data.clicks.ClicksDataModule sets it itself\)$"),  # Hydra's page
    (["model=lstm", "data.test_plays=[hamlett]"], "data.test_plays: unknown play 'hamlett'; choose from"),
    (["model=lstm", "data.val_plays=[macbeth,macbeth]"], "data.val_plays: 'macbeth' is named twice; name each"),
    (["model=cnn", "data.train_size=0"], "data.train_size=0: give a number of training images >= 1"),
    (["model=lstm", "data=fashion_mnist_rows", "data.train_size=0"], "data.train_size=0: give a number of training"),
    (["model=cnn", "data.augment.translate=-2"], "data.augment.translate=-2: give whole pixels >= 0"),  # was torch's
    (["model=cnn", "data.augment.degrees=abc"], "data.augment.degrees='abc': give degrees between 0 and 180"),
    (["model=cnn", "+data.augment.scale=1.2"], "data.augment.scale is not an augmentation setting; choose from"),
])
def test_a_datamodule_refusing_its_settings_is_one_error_not_hydras_wrapper(overrides, message):
    with pytest.raises(UserInputError, match=message):
        instantiate_data(make_config(*overrides).data)


@pytest.mark.parametrize("args, message", [
    (["model=cnnn"], "error: In 'train': Could not find 'model/cnnn' Available options in 'model':"),
    (["data=imagenet"], "error: In 'model/cnn': Could not find 'data/imagenet'"),
    # A misspelt key: Hydra's advice, "To append to your config use +model.lrr=0.1", led to a second refusal.
    (["model.lrr=0.1"], "error: model.lrr is not a setting train.py reads; did you mean model.lr?"),
    (["-m", "model=dnn,cnnn"], "error: In 'train': Could not find 'model/cnnn'"),  # any swept value, before job 0
    (["-m", "model=dnn", "model.lrr=0.1,0.2"], "error: model.lrr is not a setting train.py reads; did you mean"),
    (["-m", "model=dnn", "model.lr=0.1,abc"], "error: model.lr='abc': give a number > 0"),
    (["trainer.max_epoch=3"], "error: trainer.max_epoch is not a lightning Trainer argument; did you mean max_epochs"),
    (["+trainer.max_epoch=3"], "error: trainer.max_epoch is not a lightning Trainer argument; did you mean max_epochs"),
    (["trainer.check_val_every_n_epoch=30"],
     "error: trainer.check_val_every_n_epoch=30 with trainer.max_epochs=18 never"),
    (["model=dnn", "data=csv", "data.path=x.csv"], "error: data.label_column is required here: add data.label_column="),
    (["model=dnn", "data=csv", "data.path=x.csv", "data.label_column=y"],  # a DataModule's own check, when built
     "error: data.numeric_columns, data.categorical_columns and data.timestamp_columns are all empty"),
    (["+data.foo=1"], "error: data.foo is not an argument of ImageDataModule; drop it (~data.foo drops one that "
                     "a config sets), or pick the choice"),
    (["data.val_size=abc"], "error: data.val_size='abc' has the wrong type: ImageDataModule takes int | float"),
    (["model=dnn", "callbacks.early_stopping.monitor=val/foo"],
     "error: callbacks.early_stopping.monitor=val/foo is not a metric this binary run logs; choose one of val/loss"),
    (["callbacks.early_stopping.mode=maxx"], "error: callbacks.early_stopping: `mode` can be min, max, got maxx"),
    (["model=dnn", "monitor.metric=val/loss"],  # clicks.yaml's mode is max, for val/auroc: the worst epoch would win
     "error: monitor.metric=val/loss is better when lower, but monitor.mode=max would keep its worst epoch: add "
     "monitor.mode=min"),
    (["callbacks.early_stopping.monitor=val/loss"],
     "error: callbacks.early_stopping.monitor=val/loss is better when lower, but callbacks.early_stopping.mode=max"),
    (["+callbacks.extra._target_=lightning.pytorch.callbacks.ModelCheckpoint", "+callbacks.extra.monitor=val/acc"],
     "error: callbacks.extra.monitor=val/acc is better when higher, but callbacks.extra.mode=min"),  # the default
    (["~monitor"], "error: monitor is required: monitor.metric and monitor.mode pick the best checkpoint"),
    (["~monitor.mode"], "error: monitor is required: monitor.metric and monitor.mode pick the best checkpoint"),
    # Tracebacks (omegaconf's "Key 'lr' is not in struct", 'NoneType' object has no attribute '_target_'):
    (["~model.lr"], "error: model.lr is missing (deleted with ~ or set to null): the recipe reads it"),
    (["model.net=null"], "error: model.net._target_ is missing (deleted with ~ or set to null)"),
    (["~optimizer"], "error: optimizer.name is missing"),
    (["trainer.max_epochs=abc"], "error: trainer.max_epochs='abc' has the wrong type: Trainer takes Optional[int]"),
    (["ckpt_path=/no/such.ckpt"], "error: ckpt_path=/no/such.ckpt: no checkpoint at /no/such.ckpt"),
    (["data=mnist", "paths.data_dir=/no/such/dir", "data.download=false"],
     "error: mnist not found in /no/such/dir/MNIST/raw/"),
    (["model=dnn", "data.rows=3000", "model.net.hidden_size=0"], "error: model.net: hidden_size=0: give a whole"),
    (["model=dnn", "data.rows=3000", "model.net.activation=gelu"],
     "error: model.net: activation='gelu'; choose one of"),
    (["model=dnn", "data.rows=3000", "optimizer=sgd", "optimizer.momentum=0"],
     "error: optimizer=sgd (optimizer.momentum=0, optimizer.nesterov=True): Nesterov momentum requires a momentum"),
    pytest.param(["model=dnn", "data.rows=3000", "trainer=gpu"], "error: trainer: No supported gpu backend found!",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    result = run_cli(*args, f"hydra.run.dir={tmp_path}/run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith(message), result.stderr[-1500:]
    assert not any(line.startswith("Traceback") for line in lines)


BAD_FILES = {  # name -> (file content, command line, the start of the error line)
    "csv value": ("age,city,y\n30,a,0\nforty,b,1\n", ["model=dnn", "data=csv", "data.label_column=y",
                  "data.numeric_columns=[age]", "data.categorical_columns=[city]"],
                  "error: data.path={path}, column 'age', row 2 (line 3): 'forty' is not a finite number"),
    "criteo fields": ("\t".join(["1"] * 39) + "\n", ["model=dnn", "data=criteo"],
                      "error: data.path={path}, row 1 (line 1) has 39"),
    "one-character corpus": ("x", ["model=lstm", "data=text"], "error: data.path={path} holds 1 character:"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_data_files_are_one_line_from_the_command_line(case, tmp_path):
    content, args, message = BAD_FILES[case]
    path = tmp_path / "input.txt"
    path.write_text(content)
    result = run_cli(*args, f"data.path={path}", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith(message.format(path=path)), result.stderr[-1500:]
    assert not any(line.startswith("Traceback") for line in lines)


def test_a_finished_run_is_never_overwritten(mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*cli_args(mnist_dir, out)[:-1], "trainer.max_epochs=1", f"hydra.run.dir={out}").returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_cli("model=cnn", f"hydra.run.dir={out}")
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    with pytest.raises(UserInputError, match="that run finished .* nothing to continue"):  # it would only re-test
        resume_arguments([f"resume={out}"])
    with pytest.raises(UserInputError, match="that run finished .* nothing to continue"):  # restated: no change
        resume_arguments([f"resume={out}", "model=cnn", "trainer.max_epochs=1"])
    assert resume_arguments([f"resume={out}", "trainer.max_epochs=4"])[-4] == "trainer.max_epochs=4"  # it had 1 last
    result = run_cli(f"resume={out}", "model.lr=abc")  # a bad value is refused before Hydra saves the config
    assert result.returncode == 2 and "model.lr='abc': give a number > 0" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (out / "metrics.json").unlink()  # as if killed: only checkpoints, and a fresh run would overwrite them
    result = run_cli("model=cnn", f"hydra.run.dir={out}")
    assert result.returncode == 2 and "holds an unfinished run (checkpoints/last.ckpt)" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == {p: b for p, b in before.items()
                                                                          if p.name != "metrics.json"}
    # A resume refused when it starts (another schedule length) leaves the run's saved config as it was.
    result = run_cli(*cli_args(mnist_dir, out)[:-1], "trainer.max_epochs=2", f"hydra.run.dir={out}", "ckpt_path=last")
    assert result.returncode == 2 and "schedule is" in result.stderr, result.stderr[-1500:]
    assert {p: p.read_bytes() for p in (out / ".hydra").iterdir()} == {p: b for p, b in before.items()
                                                                       if p.parent.name == ".hydra"}


@pytest.mark.parametrize("setting, message", [
    ("model.lr=abc", "model.lr='abc': give a number > 0"),
    ("model.weight_decay=-1", "model.weight_decay=-1: give a number >= 0"),
    ("data.batch_size=0.5", "data.batch_size=0.5: give a whole number >= 1"),
    ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0: the best checkpoint and early stopping need"),
    ("+trainer.check_val_every_n_epoch=5", "trainer.check_val_every_n_epoch=5 with trainer.max_epochs=2 never"),
    # Lightning would keep patience='abc' and fail at the first epoch without improvement.
    ("callbacks.early_stopping.patience=abc", "callbacks.early_stopping.patience='abc': give a whole number >= 0"),
    ("+callbacks.early_stopping.pacience=3",
     "callbacks.early_stopping.pacience is not an argument of EarlyStopping; did you mean patience?"),
    ("callbacks.learning_rate_monitor.logging_interval=batch", "LearningRateMonitor takes Optional[Literal['step',"),
    ("logger.version=[1]", "logger.version=[1] has the wrong type: TensorBoardLogger takes Union[int, str, NoneType]"),
    # Each of these trained, or failed deep inside torch, numpy or Lightning (found by sweeping bad values).
    ("data.val_size=abc", "data.val_size='abc' has the wrong type: ImageDataModule takes int | float"),
    ("model.net.widths=[32.5]", "model.net.widths=[32.5] has the wrong type: ConvNet takes tuple[int, ...]"),
    ("model.net.batch_norm=abc", "model.net.batch_norm='abc' has the wrong type: ConvNet takes bool"),  # was true
    ("model.net.dropout=1.0", "model.net.dropout=1.0: give a number >= 0 and < 1"),
    ("model.label_smoothing=1", "model.label_smoothing=1: give a number >= 0 and < 1"),  # no trace of the targets
    ("model.weight_decay=null", "model.weight_decay=None: give a number >= 0"),
    ("model.compile=abc", "model.compile='abc': give true or false, or a torch.compile mode (default, reduce-overhead, "
     "max-autotune, max-autotune-no-cudagraphs)"),
    ("model.channels_last=abc", "model.channels_last='abc': give true or false"),  # 'abc' counted as true
    ("seed=-1", "seed=-1: give a whole number >= 0 and <= 4294967295"),
    ("float32_matmul_precision=tf32", "float32_matmul_precision='tf32': give one of highest, high, medium"),
    # trained with seed 0, the log said nothing; such a run resumes with seed=0 (the saved seed=null comes first)
    ("seed=null", "seed=null: give a whole number, seed=N (a run is repeated from its seed; a run saved with seed=null "
                  "was seeded with 0: add seed=0 to resume it)"),
    # wrote best.ckpt and last.ckpt over another run's (exit 0); null put them under tensorboard/
    ("callbacks.model_checkpoint.dirpath=/tmp/victim/checkpoints",
     "callbacks.model_checkpoint.dirpath=/tmp/victim/checkpoints: a run's checkpoints are its run directory's"),
    ("callbacks.epoch_checkpoint.dirpath=null", "callbacks.epoch_checkpoint.dirpath=None: a run's checkpoints"),
    ("trainer.limit_val_batches=0.0", "trainer.limit_val_batches=0: the best checkpoint and early stopping need"),
    ("ckpt_path=[]", "ckpt_path=[]: give a checkpoint file, or `last`"),
    ("ckpt_path=", "ckpt_path='': give a checkpoint file, or `last`"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1: give a number >= 0"),  # was clipping off
    ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: give a whole number >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0: give a whole number >= 1"),
    ("+trainer.val_check_interval=0", "trainer.val_check_interval=0: give a whole number > 0"),  # was a modulo by 0
    ("+trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5: give a number > 0 and <= 1"),
    ("optimizer.name=adamx", "optimizer.name='adamx': choose one of sgd, adam, adamw, rmsprop"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9]: give two numbers, [beta1, beta2]"),
    # the parameter groups' own weight decay (model.weight_decay's, and 0) won: trained with 5e-4, silently
    ("+optimizer.weight_decay=0.1", "optimizer.weight_decay=0.1 is not used: the recipe decays weight matrices, "
                                    "kernels and embeddings (not biases or norms) by model.weight_decay; give "
                                    "model.weight_decay=0.1 instead"),
    ("optimizer=rmsprop optimizer.alpha=1.5", "optimizer.alpha=1.5: give a number >= 0 and < 1"),
    ("model=lstm model.net.forget_bias=abc",  # a network built by a function: "a setting of the wrong kind (can't
     "model.net.forget_bias='abc' has the wrong type: models.lstm.build takes float | None"),  # assign a str ...)"
    ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum=1.5: give a number >= 0 and < 1"),  # was accepted
    ("optimizer=sgd optimizer.nesterov=abc", "optimizer.nesterov='abc' has the wrong type: SGD takes bool"),
    ("scheduler.name=foo", "scheduler.name='foo': choose one of none, step, cosine, onecycle"),
    ("scheduler=onecycle scheduler.pct_start=1.5", "scheduler.pct_start=1.5: give a number > 0 and < 1"),
    ("scheduler=onecycle scheduler.max_momentum=0.5", "scheduler.base_momentum=0.85: give a number >= 0 and <= 0.5"),
    ("scheduler=step scheduler.every_epochs=0", "scheduler.every_epochs=0: give a whole number >= 1"),
    ("scheduler=cosine scheduler.final_ratio=-1", "scheduler.final_ratio=-1: give a number >= 0 and <= 1"),
    # The name alone changed: onecycle's settings kept, cosine's missing (omegaconf's traceback: not in struct).
    ("scheduler.name=cosine", "scheduler=cosine reads scheduler.final_ratio, which is missing: choose the schedule "
                              "with scheduler=cosine (configs/scheduler/cosine.yaml sets its settings; "
                              "scheduler.name=cosine changes only the name), or give scheduler.final_ratio=..."),
    ("scheduler=step ~scheduler.gamma", "scheduler=step reads scheduler.gamma, which is missing"),
    # A key no schedule reads, added with the + Hydra advises: trained as if it were not there.
    ("scheduler=cosine +scheduler.warmup=5", "scheduler.warmup is not a setting of scheduler=cosine, which reads "
                                             "scheduler.final_ratio; no schedule reads it: drop it"),
    ("scheduler=none +scheduler.gamma=0.5", "scheduler.gamma is not a setting of scheduler=none, which reads no "
                                            "settings (a constant model.lr); it is scheduler=step's: choose that "
                                            "schedule with scheduler=step"),
    ("+scheduler.pct_star=0.3", "scheduler.pct_star is not a setting of scheduler=onecycle, which reads "
                                "scheduler.pct_start, scheduler.cycle_momentum, scheduler.base_momentum, "
                                "scheduler.max_momentum; did you mean scheduler.pct_start?"),
    # torch's "AdamW() got multiple values for keyword argument 'lr'", which did not say where the rate is set
    ("+optimizer.lr=0.1", "optimizer.lr=0.1: the learning rate is model.lr (the schedule's start or peak), which the "
                          "recipe gives the optimizer; give model.lr=0.1 instead"),
    # The Trainer is given the run's own logger and callbacks in their place: TensorBoard was written all the same.
    ("+trainer.logger=false", "trainer.logger=False is not used: the run's logger is the logger config's "
                              "(configs/logger/): drop it; ~logger runs without one"),
    ("+trainer.callbacks=[]", "trainer.callbacks is not used: the run's callbacks are the callbacks config's"),
    # Put Fashion-MNIST, or Criteo's cache, in the working directory (as paths.data_dir= did)
    ("data.data_dir=", "data.data_dir= is empty: the data would go in the current folder; give a folder, or leave "
                       "it out for the configs' paths.data_dir"),
    ("model=dnn data=criteo data.path=x.txt data.cache_dir=", "data.cache_dir= is empty: the data would go in the "
                                                              "current folder"),
    ("callbacks.early_stopping.patience=-3", "callbacks.early_stopping.patience=-3: give a whole number >= 0"),
    ("callbacks.model_summary.max_depth=-5", "callbacks.model_summary.max_depth=-5: give a whole number >= -1"),
    ("model=dnn data.hash_buckets=0", "data.hash_buckets=0: give a whole number >= 1"),
    ("data.split_seed=-1", "data.split_seed=-1: give a whole number >= 0 and <= 9223372036854775807"),  # accepted
    ("model=dnn data.seed=-1", "data.seed=-1: give a whole number >= 0"),  # was numpy's error
    ("trainer.limit_test_batches=0", "trainer.limit_test_batches=0: the run ends by scoring the test split"),
    ("trainer.limit_test_batches=1.5", "trainer.limit_test_batches=1.5: give a number of batches"),  # was "check
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches=-1: give a number of batches"),  # trainer.accelerator"
    ("+logger.foo=1", "logger.foo is not an argument of TensorBoardLogger"),  # was SummaryWriter's, at the 1st log
    ("+logger.log_dir=x", "logger.log_dir is not an argument of TensorBoardLogger"),  # it sets log_dir itself
    ("model=lstm callbacks.text_samples.temperature=-1", "callbacks.text_samples.temperature=-1: give a number >= 0"),
    # inf passed, trained an epoch, then failed in the first validation's sample, before any checkpoint
    ("model=lstm callbacks.text_samples.temperature=inf", "text_samples.temperature=inf: give a finite number"),
    ("model.lr=inf", "model.lr=inf: give a finite number > 0"),
    # Each of these was ignored (the first two: Hydra's own advice for a key it does not know), or failed in Lightning
    # with a hint at the hardware, after the run directory was written.
    ("+model.lrr=0.1", "model.lrr is not a setting train.py reads; did you mean model.lr?"),
    ("+lr=0.1", "lr is not a setting train.py reads; did you mean model.lr?"),
    ("+monitor.patience=3", "monitor.patience is not a setting train.py reads; monitor has metric, mode"),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5: give a whole number >= 1, or -1 for no limit"),
    ("trainer.max_time=abc", "trainer.max_time='abc': give days:hours:minutes:seconds (00:00:09:30 is 9.5 minutes)"),
    ("trainer.max_time={minutes:abc}", r"trainer.max_time={'minutes': 'abc'}: give days:hours:minutes:seconds"),
    # "the run ended without validating (trainer.val_check_interval=None, ...)", and no checkpoint
    ("trainer.max_time=00:00:00:00", "trainer.max_time='00:00:00:00' leaves no time to train: give a positive time"),
    ("trainer.max_time={minutes:0}", r"trainer.max_time={'minutes': 0} leaves no time to train"),
    ("+trainer.gradient_clip_algorithm=foo", "trainer.gradient_clip_algorithm='foo': choose norm"),
    ("+trainer.fast_dev_run=true", "trainer.fast_dev_run=True turns checkpoints off, and a run ends by testing its "
                                   "best checkpoint: for a run of a couple of batches use debug=fast"),
    ("+trainer.enable_checkpointing=false", "trainer.enable_checkpointing=false: a run ends by testing its best"),
    # trained to the end, then failed with "the run ended without validating (trainer.val_check_interval=None, ...)"
    ("callbacks.model_checkpoint=null", "callbacks.model_checkpoint=null: a run ends by testing its best checkpoint"),
    ("~callbacks.model_checkpoint", "callbacks.model_checkpoint=null: a run ends by testing its best checkpoint"),
    # Lightning callbacks that change what the schedule was built from, after it was built: a schedule of the wrong
    # length (one-cycle failed past its end) or that never reached the found rate; a finder restarted a resumed run.
    ("+callbacks.bsf._target_=lightning.pytorch.callbacks.BatchSizeFinder", "callbacks.bsf: BatchSizeFinder changes "
     "data.batch_size after the scheduler=onecycle schedule was sized by it"),
    ("+callbacks.gas._target_=lightning.pytorch.callbacks.GradientAccumulationScheduler "
     "+callbacks.gas.scheduling={0:4} scheduler=cosine",
     "GradientAccumulationScheduler changes trainer.accumulate_grad_batches after the scheduler=cosine schedule"),
    ("+callbacks.lrf._target_=lightning.pytorch.callbacks.LearningRateFinder +callbacks.lrf.update_attr=true",
     "LearningRateFinder with update_attr=true sets model.lr after the scheduler=onecycle schedule was built"),
    ("+callbacks.lrf._target_=lightning.pytorch.callbacks.LearningRateFinder scheduler=none ckpt_path=last",
     "callbacks.lrf: LearningRateFinder restores its own trial's checkpoint over the one a run resumes from"),
    # Each was a traceback (AttributeError: 'int' object has no attribute 'get'; 'dict' object has no attribute 'log')
    ("+callbacks.foo=1", "callbacks.foo=1 is not a callback: a callback is a section naming its class in _target_ "
                         "(as in configs/callbacks/), or callbacks.foo=null for none"),
    ("+callbacks.foo={patience:3}", "callbacks.foo has no _target_: a callback is a section naming its class"),
    # a traceback (data_dir: "expected str, bytes or os.PathLike object, not NoneType"), or folders named None/
    ("paths.data_dir=null", "paths.data_dir is missing (deleted with ~ or set to null)"),
    ("paths.root_dir=null", "paths.root_dir is missing (deleted with ~ or set to null)"),
    ("paths.log_dir=null", "paths.log_dir is missing (deleted with ~ or set to null)"),
    # paths.root_dir= put the data in /datasets, paths.data_dir= in the working directory
    ("paths.root_dir=", "paths.root_dir= is empty: give a folder, or leave it out for the configs' "
                        "${oc.env:REDES_ROOT,.}"),
    ("paths.data_dir=", "paths.data_dir= is empty: give a folder"),
    ("model.net=foo", "model.net=foo replaces the section the recipe reads model.net._target_ from: set its keys "
                      "instead (model.net._target_=...)"),  # was "model.net._target_ is missing (deleted with ~ ..."
    # Lightning's 1000 epochs for null: the schedule spread over them, the run early-stopped while it warmed up
    ("trainer.max_epochs=null", "scheduler=onecycle needs the run's length, and trainer.max_epochs=None with "
                                "trainer.max_steps=-1 sets none: give trainer.max_epochs=N or trainer.max_steps=N"),
    ("scheduler=cosine trainer.max_epochs=-1", "scheduler=cosine needs the run's length"),  # was after the data
    ("logger._target_=null", "logger has no _target_: a logger is a section naming its class in _target_ (as in "
                             "configs/logger/), or ~logger for none"),
])
def test_settings_that_cannot_work_are_refused_before_anything_is_built(setting, message):
    with pytest.raises(UserInputError, match=re.escape(message)):  # all of train.py's checks, in its order
        check_config(make_config("model=cnn", "trainer.max_epochs=2", *setting.split()))


@pytest.mark.parametrize("setting", ["model.weight_decay=0", "scheduler=cosine scheduler.final_ratio=1",
                                     "scheduler=none", "scheduler=step", "scheduler=onecycle",  # their own settings
                                     "+trainer.check_val_every_n_epoch=2", "trainer.limit_val_batches=1.0",
                                     "model.net.dropout=0", "callbacks.early_stopping=false"])  # false: off, as null
def test_settings_at_the_edge_of_their_range_are_accepted(setting):
    # Pins the closed ends of the ranges check_settings refuses past (>= 0, <= 1, validating in the last epoch).
    check_settings(make_config("model=cnn", "trainer.max_epochs=2", *setting.split()))


@pytest.mark.parametrize("setting, message", [
    ("data.batch_size=true", "data.batch_size=True: give a whole number >= 1"),  # a bool is no number
    ("model.lr=0", "model.lr=0: give a number > 0"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0: give a number of batches"),  # trains nothing
    ("optimizer.betas=[0.9,0.99,0.9]", "optimizer.betas=[0.9, 0.99, 0.9]: give two numbers"),
])
def test_settings_just_past_their_range_are_refused(setting, message):
    # Pins the open ends and the kinds check_number refuses, naming the setting.
    with pytest.raises(UserInputError, match=re.escape(message)):
        check_settings(make_config("model=cnn", "trainer.max_epochs=2", *setting.split()))


def test_model_pruning_of_channels_last_kernels_is_refused_in_one_line():
    # torch's pruning reads each weight as one flat view, which a channels-last conv kernel has not: the CNN's
    # default (model.channels_last=true) trained an epoch, then ended in a RuntimeError traceback at its end.
    conv = torch.nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)  # (one channel: still contiguous)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        torch.nn.utils.prune.l1_unstructured(conv, "weight", amount=0.5)
    prune = ("+callbacks.prune._target_=lightning.pytorch.callbacks.ModelPruning",
             "+callbacks.prune.pruning_fn=l1_unstructured")
    with pytest.raises(UserInputError, match=re.escape(
            "callbacks.prune: ModelPruning cannot prune the conv kernels that model.channels_last=true lays out "
            "channels-last (torch's pruning reads each weight as one flat view, which such a kernel has not): add "
            "model.channels_last=false")):
        check_config(make_config("model=cnn", "trainer.max_epochs=2", *prune))
    check_config(make_config("model=cnn", "trainer.max_epochs=2", *prune, "model.channels_last=false"))
    check_config(make_config("model=dnn", "trainer.max_epochs=2", *prune))  # no conv kernels: its layout is plain


def test_a_batch_of_one_row_is_refused_only_where_batch_norm_needs_two():
    # The DNN's BatchNorm1d normalizes each feature over a batch's rows: torch raised mid-run, after the data was read.
    with pytest.raises(UserInputError, match=re.escape("data.batch_size=1 with model.net.batch_norm=true: batch norm "
                                                       "needs at least 2 rows a batch; give data.batch_size=2 or")):
        check_settings(make_config("model=dnn", "data.batch_size=1"))
    check_settings(make_config("model=dnn", "data.batch_size=1", "model.net.batch_norm=false"))  # plain SGD, a row
    check_settings(make_config("model=cnn", "data.batch_size=1"))  # BatchNorm2d: over a feature map's pixels too


def test_admits_none_only_where_the_hint_allows_it_and_takes_anything_for_any_or_a_hint_it_cannot_judge():
    # Pinned: None, a bool for a float, a string for a dict are refused; typing.Any and a Callable take anything.
    assert admits(None, int | None) and not admits(None, int) and not admits(None, bool)
    assert admits("abc", typing.Any) and admits(None, typing.Any) and admits(print, typing.Callable[[int], int])
    assert admits(0.5, float) and admits(2, float) and not admits(True, float)
    assert admits({"a": 1}, dict) and not admits("abc", dict) and not admits([1], dict)


def test_an_interpolated_trainer_argument_is_left_to_hydra():
    # Pinned: as in every other section, a value still written ${...} is not type-checked (it resolves later).
    check_trainer_args(OmegaConf.create({"max_epochs": "${oc.env:EPOCHS,3}", "max_steps": "${trainer.max_epochs}"}))


def test_an_extra_key_that_another_setting_interpolates_is_kept():
    # A user's own folder or shared number, read through ${...} by the settings train.py does read.
    cfg = make_config("model=cnn", "+paths.mine=/tmp/mine", "data.data_dir=${paths.mine}/images", "+batch=64",
                      "data.batch_size=${batch}")
    check_settings(cfg)
    assert cfg.data.data_dir == "/tmp/mine/images" and cfg.data.batch_size == 64


def test_a_validation_interval_longer_than_an_epoch_is_one_line(mnist_dir, tmp_path):
    # Lightning checks it against the epoch's batches, known only once the data is read: its page of traceback.
    with pytest.raises(UserInputError, match=re.escape("trainer.val_check_interval=50 is more than the 5 training "
                                                       "batches of an epoch: give at most that, a fraction")):
        train_module.train(mnist_config(mnist_dir, tmp_path, "+trainer.val_check_interval=50",
                                        "trainer.limit_train_batches=5"))


def test_tuning_callbacks_run_where_nothing_was_built_from_what_they_change():
    # Without a schedule (or a finder only reporting its suggestion), and not resuming: nothing to refuse.
    for setting in ("+callbacks.bsf._target_=lightning.pytorch.callbacks.BatchSizeFinder scheduler=none",
                    "+callbacks.lrf._target_=lightning.pytorch.callbacks.LearningRateFinder"):
        check_settings(make_config("model=cnn", "trainer.max_epochs=2", *setting.split()))


def test_any_trainer_argument_is_set_without_a_plus():
    # Not in configs/trainer/: Hydra alone would want +trainer.NAME=; nested keys (a strategy's) stay Hydra's.
    passed = ["model=cnn", "trainer.strategy.static_graph=true", "+trainer.fast_dev_run=1",
              "trainer._target_=my.Trainer"]
    assert trainer_arguments(["trainer.check_val_every_n_epoch=3", *passed]) == ["++trainer.check_val_every_n_epoch=3",
                                                                                 *passed]


@pytest.mark.parametrize("rank, run_dir", [(None, "{}"), ("1", "{}"), (None, '"{}"')])  # quoted: found as well
def test_only_the_process_that_wrote_the_config_puts_it_back(rank, run_dir, tmp_path, monkeypatch):
    # DDP's other ranks start after rank 0 wrote the new config: putting back what they found would undo rank 0's.
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    if rank:
        monkeypatch.setenv("LOCAL_RANK", rank)
    (tmp_path / ".hydra").mkdir()
    config = tmp_path / ".hydra" / "config.yaml"
    config.write_text("before")
    with pytest.raises(SystemExit), config_kept_on_failure([f"hydra.run.dir={run_dir.format(tmp_path)}"]):
        config.write_text("the refused command's")  # as Hydra writes it, then the command fails
        (tmp_path / ".hydra" / "new.yaml").write_text("written by the refused command")
        raise SystemExit(2)
    assert config.read_text() == ("before" if rank is None else "the refused command's")
    assert (tmp_path / ".hydra" / "new.yaml").exists() == (rank is not None)


@pytest.mark.parametrize("model, data, message", [
    ("cnn", "text", "models.cnn.ConvNet reads images, and data.text.TextFileDataModule is text: "
                    "for text choose model=lstm"),
    ("dnn", "fashion_mnist", "reads tables, and data.images.ImageDataModule is images: for images choose model=cnn or "
                             "model=lstm"),
    ("lstm", "advertising", "reads text or images, and data.tabular.CSVDataModule is tables: "
                            "for tables choose model=dnn"),
])
def test_a_model_and_data_that_do_not_fit_are_refused_before_the_data_is_read(model, data, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        check_model_reads_data(make_config(f"model={model}", f"data={data}"))
    check_model_reads_data(make_config(f"model={model}"))  # each model's own data fits


def test_the_command_line_names_a_model_and_data_that_do_not_fit_before_what_the_data_lacks():
    # data=text has no data.path: the mismatch is the first thing to change, so it is said first.
    for words in (["model=cnn", "data=text"], ["data=text"], ["experiment=cnn_gpu", "data=text"]):  # typed, or not
        with pytest.raises(UserInputError, match="^model=cnn reads images, and data=text is text: for text choose"):
            check_overrides(words)
    with pytest.raises(UserInputError, match="^model=cnn reads images, and data=tinyshakespeare is text"):
        check_overrides(["data=tinyshakespeare"])  # a data config whose _target_ comes from its defaults


def test_an_unset_environment_variable_is_one_line():
    # A traceback of 35 frames (InterpolationResolutionError, from the checks that resolve the config).
    with pytest.raises(UserInputError, match="^model.lr: .*Environment variable 'REDES_UNSET' not found"):
        check_overrides(["model.lr=${oc.env:REDES_UNSET}"])
    check_overrides(["paths.data_dir=${hydra:runtime.cwd}/datasets"])  # Hydra's resolver: "HydraConfig was not set"


@pytest.mark.parametrize("args, message", [
    (["model=dnn", "data.batchsize=3", "model.net.hiden_size=3"],  # the first one named; the model's own keys
     "data.batchsize is not a setting train.py reads; did you mean data.batch_size?"),
    (["model=cnn", "model.net.widht=3"],
     "model.net.widht is not a setting train.py reads; did you mean model.net.widths?"),
    (["sed=1"], "sed is not a setting train.py reads; did you mean seed?"),
    (["model.zzz=1"], "Could not override 'model.zzz'. To append to your config use +model.zzz=1"),  # nothing near
])
def test_a_misspelt_key_is_named_with_the_setting_it_was_meant_for(args, message):
    with pytest.raises(UserInputError) as refused:
        check_overrides(args)
    assert str(refused.value).startswith(message)


def test_a_number_from_an_environment_variable_is_refused_with_the_resolver_that_reads_it(monkeypatch):
    # ${oc.env:NAME} gives text: "trainer.max_epochs='2': give a whole number" did not say how to read it as one.
    monkeypatch.setenv("REDES_EPOCHS", "2")
    with pytest.raises(UserInputError) as refused:
        check_overrides(["model=dnn", "trainer.max_epochs=${oc.env:REDES_EPOCHS}"])
    assert str(refused.value) == ("trainer.max_epochs='2': give a whole number >= 1, or -1 for no limit ('2' is text: "
                                  "unquote it, or read ${oc.env:NAME} as a number with "
                                  "'trainer.max_epochs=\"${oc.decode:${oc.env:NAME}}\"')")
    advised = 'trainer.max_epochs="${oc.decode:${oc.env:REDES_EPOCHS}}"'  # the advice, as the shell passes it
    check_syntax([advised])
    check_overrides(["model=dnn", advised])
    with pytest.raises(UserInputError, match=r"^model.lr='abc': give a number > 0$"):  # text, not a number: no advice
        check_overrides(["model=dnn", "model.lr=abc"])


@pytest.mark.parametrize("override, message", [
    # Hydra's "Config group override must be a string or a list. Got NoneType" named neither the group nor a fix.
    ("logger=null", "logger=null: logger is a config group: choose one of its configs (tensorboard); ~logger runs "
                    "without one"),
    ("callbacks=null", "callbacks=null: callbacks is a config group: choose one of its configs (default); "
                       "callbacks.NAME=null drops one"),
    ("model=null", "model=null: model is a config group: choose one of its configs (cnn, dnn, lstm) (see"),
    # Hydra merged both configs (a scheduler error), or none ("monitor is required")
    ("model=[cnn,dnn]", "model=[cnn,dnn]: model takes one of its configs (cnn, dnn, lstm), not a list; to run "
                        "several, sweep them: -m model=A,B"),
    ("data=[]", "data=[]: data takes one of its configs (advertising, cifar10, "),
    ("optimizer=5", "optimizer=5: optimizer is a config group: choose one of its configs (adam, adamw, rmsprop, sgd)"),
])
def test_a_config_group_set_to_null_or_a_list_names_its_configs(override, message):
    with pytest.raises(UserInputError, match="^" + re.escape(message)):
        check_overrides([override])
    with pytest.raises(UserInputError, match="^" + re.escape(message)):  # the culprit, not a quoted choice before it
        check_overrides(["model='cnn'", "~logger", override])


def test_a_misspelt_target_is_one_line_and_so_is_a_module_that_fails_to_import(tmp_path, monkeypatch):
    message = r"^model.net._target_=models.cnn.ConvNett: no such class; see configs/model/"
    with pytest.raises(UserInputError, match=message):
        check_settings(make_config("model.net._target_=models.cnn.ConvNett"))
    (tmp_path / "my_callbacks.py").write_text("class Broken:\n    def f(:\n")  # a user's module, with its error
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserInputError, match=r"^callbacks.mine._target_=my_callbacks.Broken: cannot import it "
                                             r"\(SyntaxError: .*my_callbacks.py, line 2\)\)$"):
        check_settings(make_config("+callbacks.mine._target_=my_callbacks.Broken"))


def test_a_run_directory_that_is_a_file_is_refused_before_hydra_makes_it(tmp_path):
    (tmp_path / "notes.txt").write_text("kept")
    for key, folder in (("hydra.run.dir", tmp_path / "notes.txt"), ("hydra.sweep.dir", tmp_path / "notes.txt" / "x")):
        with pytest.raises(UserInputError, match=f"{key}={folder}: {tmp_path / 'notes.txt'} is a file, not a folder"):
            resume_arguments([f"{key}={folder}"])
    with pytest.raises(UserInputError, match=f"paths.data_dir={tmp_path / 'notes.txt'}: .* is a file, not a folder"):
        check_settings(make_config(f"paths.data_dir={tmp_path / 'notes.txt'}"))  # before the run directory is made
    assert (tmp_path / "notes.txt").read_text() == "kept"
    if Path("/proc/self").is_dir():  # Linux: nobody, root included, makes folders in /proc
        with pytest.raises(UserInputError, match="hydra.run.dir=/proc/run: cannot make folders in /proc"):
            resume_arguments(["hydra.run.dir=/proc/run"])


def test_check_folder_returns_where_the_folder_would_be_made_and_classes_are_named_from_0(tmp_path):
    # Pins data.check_folder (the deepest part that exists: cli.py tries making a folder there) and class_names.
    assert check_folder("hydra.run.dir", tmp_path / "new" / "run") == tmp_path
    assert check_folder("hydra.run.dir", tmp_path) == tmp_path
    assert class_names(object(), 3) == ["0", "1", "2"]
    assert class_names(types.SimpleNamespace(classes=[7, "cat"]), 2) == ["7", "cat"]


def test_a_run_directory_that_is_empty_or_quoted(tmp_path):
    # Empty: Hydra would have written the run into the working directory, the repository root.
    with pytest.raises(UserInputError, match="^hydra.run.dir= is empty: give a folder"):
        resume_arguments(["hydra.run.dir="])
    for key, null in (("hydra.run.dir", "null"), ("hydra.sweep.dir", "NULL")):  # Hydra's "field is not Optional"
        with pytest.raises(UserInputError, match=f"^{key}={null}: give a folder, or leave it out"):  # (a traceback)
            resume_arguments([f"{key}={null}"])
    resume_arguments([f'hydra.run.dir="{tmp_path}/null"', 'hydra.sweep.dir="null"'])  # quoted: a folder's name
    # Quoted for Hydra's grammar (a non-ASCII letter needs it): the folder is the one inside the quotes, so a
    # finished run there is protected as an unquoted one is.
    (tmp_path / "rün").mkdir()
    write_json(tmp_path / "rün" / "metrics.json", {})
    with pytest.raises(UserInputError, match="already holds a finished run"):
        resume_arguments([f'hydra.run.dir="{tmp_path / "rün"}"'])


def test_only_a_model_checkpoint_must_write_into_the_run_directory():
    # OnExceptionCheckpoint needs a dirpath of its own and writes neither best.ckpt nor last.ckpt.
    check_settings(make_config("+callbacks.oe._target_=lightning.pytorch.callbacks.OnExceptionCheckpoint",
                               "+callbacks.oe.dirpath=/tmp/elsewhere"))


def test_a_quoted_home_folder_is_the_home_folder_and_output_dir_is_not_a_run_directory(tmp_path, monkeypatch):
    # As the unquoted-'~' error advises: Hydra made a folder named '~' in the working directory.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resume_arguments(['hydra.run.dir="~/runs/a"']) == [f'hydra.run.dir="{tmp_path}/runs/a"']
    # paths.output_dir moved the checkpoints and metrics.json (over a finished run's, exit 0), not the run directory.
    with pytest.raises(UserInputError, match=r"^paths.output_dir is the run directory Hydra makes: give "
                                             r"hydra.run.dir=DIR instead"):
        resume_arguments([f"paths.output_dir={tmp_path}"])
    (tmp_path / "notes.txt").write_text("kept")  # a log folder that cannot be made: was a NotADirectoryError
    with pytest.raises(UserInputError, match=rf"^paths.log_dir={tmp_path}/notes.txt: cannot make .*notes.txt/dnn "
                                             r"\(Not a directory\); choose a folder you can write to"):
        claimed_run_dir(["model=dnn", f"paths.log_dir={tmp_path / 'notes.txt'}"])


def test_a_run_under_a_folder_named_outside_ascii_trains_and_is_resumed(tmp_path):
    # The run directory train.py adds (stamped under paths.log_dir, or resume's) went to Hydra unquoted: a folder
    # under /home/josé/ was a page of Hydra's lexer error, and its run could never be resumed.
    log_dir = tmp_path / "josé"
    trained = run_cli("model=dnn", "data.rows=3000", "debug=fast", f'paths.log_dir="{log_dir}"')
    assert trained.returncode == 0, trained.stderr[-2000:]
    run, = log_dir.glob("dnn/*")
    assert (run / "metrics.json").is_file()
    resumed = run_cli(f'resume="{run}"', "model.net.hidden_size=7")  # refused: the checkpoint's network is another
    assert resumed.returncode == 2 and "Lexer" not in resumed.stderr, resumed.stderr[-2000:]
    assert resumed.stderr.strip().splitlines()[-1].startswith("error: ") and "hidden_size" in resumed.stderr


@pytest.mark.parametrize("arg, message", [
    ("hydra.run.dir=/tmp/rün", "hydra.run.dir=/tmp/rün: Hydra cannot read the unquoted 'ü'; quote the value, as in "
                               "'hydra.run.dir=\"/tmp/rün\"'"),  # Hydra alone printed a page for hydra.* keys
    ("data.path=data/été.csv", "data.path=data/été.csv: Hydra cannot read the unquoted 'é'"),
    ("model.lr=[", "model.lr=[: no viable alternative at input '['"),  # no quoting advice: a bracket left open
    # An `=` in a run's folder (`runs/lr=0.1`): Hydra's "mismatched input '='" did not say that quotes fix it.
    ("hydra.run.dir=runs/lr=0.1", "hydra.run.dir=runs/lr=0.1: mismatched input '=' expecting <EOF>; quote the value, "
                                  "as in 'hydra.run.dir=\"runs/lr=0.1\"'"),
])
def test_an_override_hydra_cannot_parse_is_one_line_that_says_how_to_quote_it(arg, message):
    with pytest.raises(UserInputError) as refused:
        check_syntax(["model=dnn", arg])
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_hydras_flags_and_their_values_are_not_read_as_overrides():
    # `python train.py model=cnn --cfg job` ended in "error: job: Error parsing override 'job'": the flag's value
    # was checked as an override.
    for argv in (["model=cnn", "--cfg", "job"], ["--info", "config", "model=dnn"], ["-cn", "train", "model=dnn"],
                 ["-m", "-c", "hydra", "seed=1,2"]):
        check_syntax(argv)
    assert hydra_overrides(["--cfg", "job", "-p", "model", "model=cnn", "seed=1"]) == ["model=cnn", "seed=1"]
    # What Hydra refuses, it says itself: a flag's unknown value, overrides on both sides of a flag.
    assert hydra_overrides(["--cfg", "jobs", "model=cnn"]) == hydra_overrides(["a=1", "--cfg", "job", "b=2"]) == []
    shown = run_cli("model=cnn", "data.batch_size=64", "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    assert "batch_size: 64" in shown.stdout and "error" not in shown.stderr


def test_a_flag_hydra_does_not_have_is_one_line_naming_the_setting_meant():
    # `--max_epochs=5` (another program's habit) printed argparse's usage page, then "train.py: error: unrecognized
    # arguments: --max_epochs=5".
    for argv, message in [
        (["--max_epochs=5", "model=cnn"], "--max_epochs=5: train.py takes settings as key=value, without dashes: "
                                          "trainer.max_epochs=5 (python train.py --help lists its flags)"),
        (["model=dnn", "--hidden_size", "64"], "--hidden_size: train.py takes settings as key=value, without dashes: "
                                               "model.net.hidden_size=64"),
        (["--batch-size", "64"], "--batch-size: train.py takes settings as key=value, without dashes: "
                                 "data.batch_size=64"),
        (["--model", "dnn"], "--model: train.py takes settings as key=value, without dashes: model=dnn"),
        (["--epochs=3"], "--epochs=3 is not a flag of train.py (python train.py --help lists them); settings are "
                         "key=value, without dashes (python train.py --cfg job lists them)"),
    ]:
        with pytest.raises(UserInputError, match=f"^{re.escape(message)}"):
            check_syntax(argv)
    refused = run_cli("model=cnn", "--max_epochs=5")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: --max_epochs=5: train.py takes settings as key=value, without dashes: trainer.max_epochs=5 (python "
        "train.py --help lists its flags)"]


def test_hydras_own_settings_of_the_wrong_type_or_name_are_one_line():
    # Hydra's "Error merging override ..." page, exit 1; n_trials=0 ran the study and ended in Optuna's traceback
    # ("Record does not exist"); n_trials without hparams_search: a traceback ("Could not override").
    for argv, message in [
        (["-m", "hparams_search=dnn_optuna", "hydra.sweeper.n_trials=abc"],
         "hydra.sweeper.n_trials=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        (["-m", "hparams_search=dnn_optuna", "hydra.sweeper.n_trials=0"],
         "hydra.sweeper.n_trials=0: give a whole number of trials >= 1"),
        (["model=dnn", "hydra.sweeper.n_trials=3"],
         "hydra.sweeper.n_trials is not a setting of Hydra here (`python train.py --cfg hydra` lists them); an Optuna "
         "study's come with hparams_search=dnn_optuna"),
        (["model=dnn", "hydra.job.chdir=maybe"], "hydra.job.chdir=maybe: Value 'maybe' is not a valid bool"),
    ]:
        with pytest.raises(UserInputError, match=f"^{re.escape(message)}"):
            check_overrides(argv)
    check_overrides(["-m", "hparams_search=dnn_optuna", "hydra.sweeper.n_trials=3"])
    check_overrides(["model=dnn", "hydra.job.chdir=false", "hydra.verbose=true"])


def test_a_sweep_with_its_flag_last_runs(tmp_path):
    # `seed=1,2 -m` (Hydra takes flags after the overrides) failed: the sweep folder claimed for it was added after
    # the flag, where Hydra's parser no longer reads overrides ("unrecognized arguments: hydra.sweep.dir=...").
    assert flags_first(["model=dnn", "seed=1,2", "-m"]) == ["-m", "model=dnn", "seed=1,2"]
    assert flags_first(["model=cnn", "--cfg", "job"]) == ["--cfg", "job", "model=cnn"]
    # `--info` last read the first override as its topic ("invalid choice: 'model=cnn'"); hydra.mode=MULTIRUN,
    # Hydra's other spelling of -m, skipped the sweep checks (a sweep over an earlier one's jobs) and was refused.
    assert flags_first(["model=cnn", "--info"]) == ["--info", "all", "model=cnn"]
    assert flags_first(["--info", "defaults", "model=cnn"]) == ["--info", "defaults", "model=cnn"]
    assert flags_first(["model=cnn", "seed=1,2", "hydra.mode=MULTIRUN"]) == ["--multirun", "model=cnn", "seed=1,2"]
    with pytest.raises(UserInputError, match="^-m and --cfg: Hydra takes one of --multirun, --cfg, --info"):
        flags_first(["-m", "model=cnn,dnn", "--cfg", "job"])  # was Hydra's ValueError, a traceback
    assert flags_first(["--cfg", "job", "hydra.mode=MULTIRUN"]) == ["--cfg", "job", "hydra.mode=MULTIRUN"]  # Hydra's
    # `--hydra-help model=cnn` was a traceback: Hydra's help composes its own config, where `model` has no match.
    assert flags_first(["--hydra-help", "model=cnn", "hydra/launcher=basic"]) == ["--hydra-help",
                                                                               "hydra/launcher=basic"]
    swept = run_cli("model=dnn", "data.rows=20000", "debug=fast", "seed=1,2", f"paths.log_dir={tmp_path}", "-m")
    assert swept.returncode == 0, swept.stderr
    summary = next(tmp_path.glob("multirun/*/summary.csv")).read_text().splitlines()
    assert len(summary) == 3 and all(",False," in row for row in summary[1:])  # header + 2 jobs, none failed


def test_a_quoted_value_passes_the_syntax_check():
    check_syntax(["-m", 'hydra.run.dir="/tmp/rün"', 'data.path="data/été.csv"', "trainer.max_epochs=1", "seed=1,2"])


@pytest.fixture
def frozen_clock(monkeypatch):
    """Hydra's ${now:...} stamps every run to the same second, as for two runs started together."""
    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1)

    monkeypatch.setattr(hydra.core.utils, "datetime", Clock)  # what Hydra's `now` resolver reads


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, frozen_clock):
    log_dir = tmp_path / "outputs"
    command = ["model=dnn", f"paths.log_dir={log_dir}"]
    stamped = log_dir / "dnn" / "2026-01-01_00-00-00"
    claimed = [claimed_run_dir(command)[-1] for _ in range(3)]
    # quoted for Hydra's grammar: a folder under /home/josé/ was a page of Hydra's lexer error
    assert claimed == [f'hydra.run.dir="{stamped}"', f'hydra.run.dir="{stamped}_1"', f'hydra.run.dir="{stamped}_2"']
    assert all(folder.is_dir() for folder in (stamped, log_dir / "dnn" / "2026-01-01_00-00-00_1"))
    sweep = claimed_run_dir(["-m", *command, "seed=1,2"])[-1]  # a sweep's folder, as two sweeps started together
    assert sweep == f'hydra.sweep.dir="{log_dir / "multirun" / "2026-01-01_00-00-00"}"'
    for untouched in ([*command, f"hydra.run.dir={stamped}"], ["--cfg", "job", *command],
                      ["-m", *command, "hparams_search=dnn_optuna"]):  # the study's folder is fixed: its own
        assert claimed_run_dir(untouched) == untouched


def test_a_network_setting_meant_for_another_model_is_one_line(mnist_dir, tmp_path):
    # What data=fashion_mnist_rows does to model=cnn: it sizes the LSTM with num_layers.
    refused = re.escape("model.net.num_layers is not an argument of ConvNet; drop it (~model.net.num_layers drops one "
                        "that a config sets), or pick")
    with pytest.raises(UserInputError, match=refused):
        train_module.train(mnist_config(mnist_dir, tmp_path, "+model.net.num_layers=1"))
    with pytest.raises(UserInputError, match=re.escape("model.net.widths=5 has the wrong type: ConvNet takes tuple")):
        train_module.train(mnist_config(mnist_dir, tmp_path, "model.net.widths=5"))  # not "for another model"


def test_resuming_a_run_that_stopped_early_says_its_best_weights_are_kept(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=cnn\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"stopped_early": True}))
    with pytest.raises(UserInputError, match="stopped early .* nothing to continue; its best weights are in"):
        resume_arguments([f"resume={tmp_path}"])  # the same patience would stop it again at once
    assert resume_arguments([f"resume={tmp_path}", "trainer.max_epochs=9"])[-2] == "ckpt_path=last"
    # Cut by a budget: the advice that continues it (a larger max_epochs did nothing after max_time or max_steps).
    (tmp_path / "metrics.json").write_text(json.dumps({"stopped_early": False, "stopped_by": "max_time"}))
    with pytest.raises(UserInputError, match=r"used up its trainer.max_time \(metrics.json\); to train it longer "
                                             r"add a larger trainer.max_time=DD:HH:MM:SS$"):
        resume_arguments([f"resume={tmp_path}"])
    (tmp_path / "metrics.json").write_text(json.dumps({"stopped_early": False, "stopped_by": "max_steps"}))
    with pytest.raises(UserInputError, match=r"add a larger trainer.max_steps=N and scheduler=none"):
        resume_arguments([f"resume={tmp_path}"])
    assert resume_arguments(["--cfg", "job", f"resume={tmp_path}", "seed=1"])[:4] == ["--cfg", "job", "model=cnn",
                                                                                   "seed=1"]  # flags before overrides
    with pytest.raises(UserInputError, match=f"^resume={tmp_path} continues one run: drop -m$"):
        resume_arguments(["-m", f"resume={tmp_path}"])  # was argparse's page, and an empty sweep folder
    # A run directory's own files, damaged (a hand edit, a disk filled up): one line naming the file.
    (tmp_path / "metrics.json").write_text('{"test/acc": 0.9')
    with pytest.raises(UserInputError, match=r"metrics.json is not the JSON train.py writes \(Expecting"):
        resume_arguments([f"resume={tmp_path}"])
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- debug: [fast\n")
    with pytest.raises(UserInputError, match=r"overrides.yaml is not the list of overrides Hydra writes; continue "
                                             r"it by hand: python train.py <its settings> hydra.run.dir="):
        resume_arguments([f"resume={tmp_path}"])  # (giving its settings beside resume= would not get past the file)
    (tmp_path / ".hydra" / "overrides.yaml").unlink()
    with pytest.raises(UserInputError, match=r"no .*overrides.yaml, where resume reads the run's settings; continue"):
        resume_arguments([f"resume={tmp_path}"])
    # A misspelt run, which "continue it by hand: ... hydra.run.dir=RUN ckpt_path=last" would start anew there.
    (tmp_path / "2026-12-04_10-00-00").mkdir()
    with pytest.raises(UserInputError, match=re.escape(f"resume={tmp_path}/2026-12-04_10-00-01: no such folder; did "
                                                       f"you mean resume={tmp_path}/2026-12-04_10-00-00?")):
        resume_arguments([f"resume={tmp_path}/2026-12-04_10-00-01"])
    with pytest.raises(UserInputError, match=re.escape(f"resume={tmp_path}/no/run: no such folder; give the "
                                                       "directory of the run to continue, as in resume=outputs/")):
        resume_arguments([f"resume={tmp_path}/no/run"])
    assert not (tmp_path / "no").exists()


def test_a_run_that_stopped_before_its_first_checkpoint_is_resumed_from_the_start(tmp_path):
    # A sweep's job that failed on a bad setting (or a run killed in its first epoch): resume=RUN said
    # "ckpt_path=last: no checkpoint at RUN/checkpoints/last.ckpt", a setting the user never gave.
    (tmp_path / "rows.csv").write_text("x,y\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(400)))
    run = tmp_path / "run"
    settings = ["model=dnn", "data=csv", "data.label_column=y", "data.numeric_columns=[x]", "data.batch_size=32",
                "trainer.max_epochs=1", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                "callbacks.result_figures=null"]
    failed = run_cli(*settings, f"data.path={tmp_path}/missing.csv", f"hydra.run.dir={run}")
    assert failed.returncode == 2 and "missing.csv: no such file" in failed.stderr
    resumed = run_cli(f"resume={run}", f"data.path={tmp_path}/rows.csv")  # the setting, fixed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"warning: resume={run}: no {run}/checkpoints/last.ckpt, the run stopped before it saved one; it starts " \
           "again from its first step there" in resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    # A finished run whose last.ckpt is gone is not trained over: Lightning's error names the missing checkpoint.
    (run / "checkpoints" / "last.ckpt").unlink()
    assert resume_arguments([f"resume={run}", "trainer.max_epochs=2"])[-2] == "ckpt_path=last"


def test_metrics_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    write_json(tmp_path / "metrics.json", {"test/acc": 0.5})

    def killed(*args):  # the process dies between writing the new record and renaming it into place
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "metrics.json", {"test/acc": 0.9})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test/acc": 0.5}  # the earlier record, whole
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_a_sweep_is_checked_once_per_value():
    # Each swept value once, the other settings at their first, second values before third ones; Optuna's ranges
    # and globs of config options keep the config's value.
    assert sweep_variants(["model=cnn,dnn", "seed=1", "model.lr=0.1,0.2,0.3", "model.l1=interval(0,1)",
                           "data=glob(mnist,fashion*)", "~callbacks.progress_bar"]) == [
        ["model=cnn", "seed=1", "model.lr=0.1", "~callbacks.progress_bar"],
        ["model=dnn", "seed=1", "model.lr=0.1", "~callbacks.progress_bar"],
        ["model=cnn", "seed=1", "model.lr=0.2", "~callbacks.progress_bar"],
        ["model=cnn", "seed=1", "model.lr=0.3", "~callbacks.progress_bar"]]
    with pytest.raises(UserInputError, match="model.lr='abc'"):  # not crowded out by 30 seeds
        check_overrides(["-m", "model=dnn", "seed=range(0,30)", "model.lr=0.1,abc"])


def test_resume_keeps_the_runs_overrides_but_not_its_old_directory_or_checkpoint(tmp_path):
    # resume=RUN: the saved overrides, then the typed ones, then RUN itself and ckpt_path=last (never the saved ones).
    run = tmp_path / "rün"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=cnn\n- hydra.run.dir=/moved/away\n- ckpt_path=x.ckpt\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_arguments([f'resume="{run}"', "trainer.max_epochs=9"]) == [
        "model=cnn", "trainer.max_epochs=9", f'hydra.run.dir="{run}"', "ckpt_path=last",  # quoted: Hydra reads ü so
        "hydra.mode=RUN"]  # an Optuna trial's overrides hold hparams_search=..., which would start a new study
    with pytest.raises(UserInputError, match=f"is a file: resume takes the run's directory, resume={run}$"):
        resume_arguments([f"resume={run}/checkpoints/last.ckpt"])  # advised hydra.run.dir=RUN/checkpoints/last.ckpt
    with pytest.raises(UserInputError, match="^resume= is empty: give the run directory"):  # was "resume=."
        resume_arguments(["resume="])
    # Given along: these were overridden by the run's own (another folder never made), or failed in Hydra.
    for given in (f"hydra.run.dir={tmp_path}/other", "ckpt_path=other.ckpt"):
        with pytest.raises(UserInputError, match=f"continues that run in its own directory from its last checkpoint: "
                                                 f"drop {given}$"):
            resume_arguments([f"resume={run}", given])
    for restated in ("ckpt_path=last", f"hydra.run.dir={run}"):  # what resume= adds anyway
        assert resume_arguments([f"resume={run}", restated]) == resume_arguments([f"resume={run}"]), restated
    assert "experiment=null" in resume_arguments([f"resume={run}", "experiment=null"])  # as the run had: no preset
    with pytest.raises(UserInputError, match=r"model=dnn would change what the run trains on or with"):
        resume_arguments([f"resume={run}", "model=dnn"])
    assert resume_arguments([f"resume={run}", "model=cnn"])[:2] == ["model=cnn", "model=cnn"]  # the same: allowed
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": "cnn",
                                                                                                 "data": "mnist"}}}}))
    with pytest.raises(UserInputError, match=r"data=fashion_mnist would change"):  # a choice the run's model made
        resume_arguments([f"resume={run}", "data=fashion_mnist"])


def test_ckpt_path_last_starts_a_new_run_where_there_is_none_yet(tmp_path, capsys):
    # As Lightning's ckpt_path="last": the same command starts a run, and continues it once it has a last.ckpt.
    argv = ["model=cnn", f"hydra.run.dir={tmp_path}/run", "ckpt_path=last"]
    assert resume_arguments(argv) == argv[:2]
    assert capsys.readouterr().err == (f"warning: ckpt_path=last: no {tmp_path}/run/checkpoints/last.ckpt yet; "
                                       "a new run starts there\n")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_arguments(argv) == argv
    # A finished run whose checkpoints were deleted is not trained over: train.py says no checkpoint is there.
    (tmp_path / "run" / "checkpoints" / "last.ckpt").unlink()
    write_json(tmp_path / "run" / "metrics.json", {})
    assert resume_arguments(argv) == argv
    assert resume_arguments(["model=cnn", "ckpt_path=last"])[-1] == "ckpt_path=last"  # no folder named: an error


def test_a_run_directory_with_ckpt_path_is_continued_not_refused(tmp_path):
    # ckpt_path= says "continue this run": neither a finished run's metrics.json nor its last.ckpt refuses it.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = [f"hydra.run.dir={tmp_path}", "ckpt_path=last"]
    assert resume_arguments(argv) == argv
    write_json(tmp_path / "metrics.json", {})
    assert resume_arguments(argv) == argv
    assert resume_arguments(own := [f"hydra.run.dir={tmp_path}", f"ckpt_path={tmp_path}/checkpoints/last.ckpt"]) == own
    # Another run's checkpoint would train over this one, and its test read this run's old best.ckpt.
    with pytest.raises(UserInputError, match=r"already holds a finished run \(metrics.json\) \(ckpt_path=/other/"
                                             r"last.ckpt is not its checkpoint: train from that in a new directory\)"):
        resume_arguments([f"hydra.run.dir={tmp_path}", "ckpt_path=/other/last.ckpt"])
    with pytest.raises(UserInputError, match="already holds a finished run"):  # ++: the same key to Hydra
        resume_arguments([f"++hydra.run.dir={tmp_path}"])


def test_a_second_grid_sweep_into_a_sweep_directory_that_holds_runs_is_refused(tmp_path):
    # Its jobs are folders 0, 1, ...: they were overwritten, and summary.csv listed only the new ones.
    argv = ["-m", "model.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path}"]
    assert resume_arguments(argv) == argv  # empty
    (tmp_path / "0" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserInputError, match=f"hydra.sweep.dir={tmp_path} holds an earlier sweep's runs "
                                             f"\\({tmp_path / '0'}\\): this sweep's jobs would overwrite them"):
        resume_arguments(argv)
    assert resume_arguments(argv[1:]) == argv[1:]  # one run, not a sweep: hydra.sweep.dir is not used
    optuna = ["-m", "hparams_search=dnn_optuna", f"hydra.sweep.dir={tmp_path}"]  # its jobs' folders are stamped
    assert resume_arguments(optuna) == optuna
    # Jobs in folders hydra.sweep.subdir names, deeper ones too: they were overwritten without a word.
    subdir = ["-m", "model.lr=0.1", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}"]
    with pytest.raises(UserInputError, match="holds an earlier sweep's runs"):
        resume_arguments(subdir)
    (tmp_path / "0" / "checkpoints").rmdir()
    (tmp_path / "lr=0.1" / "seed=1").mkdir(parents=True)
    (tmp_path / "lr=0.1" / "seed=1" / "metrics.json").write_text("{}")
    with pytest.raises(UserInputError, match=f"holds an earlier sweep's runs \\({tmp_path / 'lr=0.1' / 'seed=1'}\\)"):
        resume_arguments(subdir)
    stamped = subdir[:-1] + ["hydra.sweep.subdir=${now:%H-%M-%S}_${hydra.job.num}"]  # each job a folder of its own
    assert resume_arguments(stamped) == stamped


def test_a_second_grid_sweep_into_a_sweep_directory_that_holds_failed_jobs_is_refused(tmp_path):
    # An earlier sweep's jobs that failed before a checkpoint (.hydra/ alone): a sweep of fewer jobs there listed
    # them in its summary as its own failed jobs, and exited 0 all the same.
    argv = ["-m", "model.lr=0.1", f"hydra.sweep.dir={tmp_path}"]
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    with pytest.raises(UserInputError, match=f"hydra.sweep.dir={tmp_path} holds an earlier sweep's jobs that failed "
                                             f"\\({tmp_path / '1'}\\): this sweep's summary would list them as its "
                                             "own; delete them or choose another directory"):
        resume_arguments(argv)
    optuna = ["-m", "hparams_search=dnn_optuna", f"hydra.sweep.dir={tmp_path}"]  # a study's folder lists all its trials
    assert resume_arguments(optuna) == optuna


@pytest.mark.parametrize("setting, message", [
    # Each ran: without .hydra/config.yaml (resume= then failed), or reading relative paths from the run directory.
    ("hydra.output_subdir=null", "hydra.output_subdir=null: a run keeps its config in .hydra/"),
    ("hydra.output_subdir=cfg", "hydra.output_subdir=cfg: a run keeps its config in .hydra/"),
    ("hydra.job.chdir=true", "hydra.job.chdir=true: a relative path you give (data.path=, paths.data_dir=) would be "
                             "read from the run directory"),
])
def test_hydra_settings_a_run_relies_on_are_kept(setting, message, monkeypatch):
    with pytest.raises(UserInputError, match="^" + re.escape(message)):
        resume_arguments([setting])
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning or torchrun started: rank 0 writes .hydra/
    assert resume_arguments([setting]) == [setting]
    for off in ("hydra.job.chdir=false", "hydra.job.chdir=no", "hydra.job.chdir=null"):  # false to OmegaConf
        assert resume_arguments([off]) == [off]


@pytest.mark.parametrize("case", ["checkpoint written", "output_subdir=null", "exit without a code"])
def test_the_config_is_put_back_only_when_the_command_failed_before_any_checkpoint(case, tmp_path):
    # A failure after a checkpoint was written, a rank told not to write .hydra/, a clean exit: the new config stays.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    config = tmp_path / ".hydra" / "config.yaml"
    config.write_text("before")
    argv = [f"hydra.run.dir={tmp_path}"] + (["hydra.output_subdir=null"] if case == "output_subdir=null" else [])
    with pytest.raises(SystemExit), config_kept_on_failure(argv):
        config.write_text("new")
        if case == "checkpoint written":
            (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
        raise SystemExit() if case == "exit without a code" else SystemExit(2)
    assert config.read_text() == "new"


def test_a_finished_runs_damaged_records_are_one_line(tmp_path):
    # metrics.json that is JSON but not a mapping, overrides.yaml that is YAML but not a list: one line naming them.
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "metrics.json").write_text("[0.9]")
    with pytest.raises(UserInputError, match=r"metrics.json is not the JSON train.py writes \(no mapping"):
        read_metrics(tmp_path)
    (tmp_path / ".hydra" / "overrides.yaml").write_text("model: cnn\n")
    with pytest.raises(UserInputError, match=r"overrides.yaml is not the list of overrides Hydra writes \(a list"):
        read_overrides(tmp_path)
    assert read_overrides(tmp_path / "elsewhere") == []  # no saved overrides: none


def test_a_run_with_a_best_checkpoint_but_no_last_one_is_not_started_over(tmp_path):
    # Its last checkpoints turned off (~callbacks.epoch_checkpoint ~callbacks.step_checkpoint), killed before its
    # test: resume=RUN started it again from step 0 over its trained best.ckpt, "the run stopped before it saved one".
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=dnn", "~callbacks.epoch_checkpoint"]))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    assert resume_arguments([f"resume={tmp_path}"])[-2] == "ckpt_path=last"
    (tmp_path / "checkpoints" / "best.ckpt").unlink()  # nothing saved yet: it starts again
    assert "ckpt_path=last" not in resume_arguments([f"resume={tmp_path}"])


def test_a_key_deleted_on_the_command_line_is_not_its_own_misspelling():
    # `~data.rows data.rows=5` said "data.rows is not a setting train.py reads; did you mean data.rows?"
    with pytest.raises(UserInputError) as refused:
        check_overrides(["model=dnn", "data=clicks", "~data.rows", "data.rows=5"])
    assert "did you mean data.rows?" not in str(refused.value)
    assert str(refused.value).startswith("Could not override 'data.rows'.")
