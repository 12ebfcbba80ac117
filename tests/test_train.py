"""The shared recipe end to end: train(cfg) on small generated data, early stopping, the CLI."""
import ctypes
import importlib
import json
import os
import platform
import re
import sys
import shutil
import time
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import train as train_module
from data import UserInputError
from data.batches import split_indices
from data.images import ImageDataModule
from models import runs
from models.cnn import ConvNet
from models.recipe import Recipe, WeightedMean, load_recipe, stopped_early
from tests.cli_process import run_cli
from tests.conftest import make_config, pattern_images, write_idx

eval_script = importlib.import_module("eval")  # eval.py, beside train.py

FAST = ["data.val_size=200", "data.batch_size=64", "data.eval_batch_size=200", "callbacks.progress_bar=null",
        "callbacks.result_figures=null",
        "callbacks.model_summary=null"]


def mnist_config(mnist_dir, out, *overrides):
    return make_config("model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", *FAST, *overrides, output_dir=out)


@pytest.mark.parametrize("data", ["fashion_mnist", "mnist", "cifar10"])
def test_cnn_configs_compose_and_instantiate(data, tmp_path):
    from hydra.utils import instantiate
    cfg = make_config("model=cnn", f"data={data}", output_dir=tmp_path)
    assert cfg.data.name == data and cfg.monitor.metric == "val/acc"
    assert isinstance(instantiate(cfg.data), ImageDataModule)
    net = instantiate(cfg.model.net)(in_channels=3, num_classes=10, image_size=(32, 32))
    assert isinstance(net, ConvNet) and net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("model, data, target", [
    ("dnn", "clicks", "data.clicks.ClicksDataModule"), ("dnn", "advertising", "data.tabular.CSVDataModule"),
    ("dnn", "csv", "data.tabular.CSVDataModule"), ("dnn", "criteo", "data.criteo.CriteoDataModule"),
    ("lstm", "shakespeare", "data.text.ShakespeareDataModule"),
    ("lstm", "tinyshakespeare", "data.text.TextFileDataModule"),
    ("lstm", "text", "data.text.TextFileDataModule"), ("lstm", "fashion_mnist_rows", "data.images.ImageDataModule"),
])
def test_dnn_and_lstm_configs_compose(model, data, target, tmp_path):
    cfg = make_config(f"model={model}", f"data={data}", "data.path=F", output_dir=tmp_path) if data in (
        "csv", "criteo", "text") else make_config(f"model={model}", f"data={data}", output_dir=tmp_path)
    assert cfg.data._target_ == target and cfg.monitor.metric.startswith("val/")
    assert cfg.model.net._target_ == {"dnn": "models.dnn.ClickMLP", "lstm": "models.lstm.build"}[model]


def test_train_end_to_end_writes_metrics_checkpoints_and_events(mnist_dir, tmp_path):
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=3"))
    assert metrics["test/acc"] > 0.9  # the generated classes are easy: this asserts learning
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    for key in ("test/loss", "val/acc_best", "epochs", "stopped_early", "train_seconds", "device"):
        assert key in saved
    assert saved["epochs"] == 3 and saved["stopped_by"] == "max_epochs"
    assert saved["best_checkpoint"] == os.path.join("checkpoints", "best.ckpt")  # relative to the run directory
    assert (tmp_path / saved["best_checkpoint"]).is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    recipe = load_recipe(str(tmp_path / saved["best_checkpoint"]))  # the checkpoint alone rebuilds the network
    assert recipe.hparams.net_kwargs["image_size"] == (28, 28)
    assert recipe.net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_train_seconds_leave_out_reading_the_data(mnist_dir, tmp_path, monkeypatch):
    # Data that takes 1000 s to read (on the recipe's clock, moved on while setup reads), then a fit of 2 steps: the
    # time is the fit's (training and validation), the same in metrics.json and the checkpoints, so runs on slow and
    # fast disks compare. (A real 4 s sleep made the bound depend on how fast a loaded machine fits: 4.4 s.)
    import models.recipe

    setup, skew = ImageDataModule.setup, [0.0]

    def slow_setup(self, stage=None):
        if stage == "fit":
            skew[0] += 1000.0
        setup(self, stage)

    monkeypatch.setattr(models.recipe, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + skew[0]))
    monkeypatch.setattr(ImageDataModule, "setup", slow_setup)
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1",
                                              "trainer.limit_train_batches=2"))
    assert skew[0] >= 1000 and 0 < metrics["train_seconds"] < 1000  # setup may run more than once
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < last["train_seconds"] <= metrics["train_seconds"]


def test_bfloat16_weights_train_and_unscaled_float16_ones_are_refused(tmp_path):
    # bf16-true: the model summary forwarded its float32 example into bfloat16 weights (a traceback); 16-true gave
    # NaN from the DNN's raw features (float16 ends at 65,504) and a traceback in the test figures.
    metrics = train_module.train(make_config("model=dnn", "data.rows=20000", "data.batch_size=256",
                                             "trainer.max_epochs=2", "trainer.precision=bf16-true",
                                             "callbacks.progress_bar=null",
                                             output_dir=tmp_path / "bf16"))  # the summary and figures on
    # It learns as float32 weights do: 0.770-0.772 for seeds 42, 0 and 1, float32 0.771-0.773 (Bayes 0.827).
    assert metrics["test/auroc"] > 0.74
    # The losses in float32: bfloat16 ones (its 8 bits, steps of 1/256 at 0.5) were what metrics.json reported.
    assert metrics["test/loss"] != torch.tensor(metrics["test/loss"]).bfloat16().item()
    mean = WeightedMean().to(torch.bfloat16)  # as bf16-true converts the recipe's modules, its metrics' states too
    for _ in range(3):
        mean.update(torch.tensor(1 / 3, dtype=torch.bfloat16), 1000)
    assert mean.compute().dtype == torch.float32 and mean.compute().item() == pytest.approx(0.33398, abs=1e-5)
    with pytest.raises(UserInputError, match="trainer.precision=16-true trains float16 weights without loss scaling"):
        train_module.train(make_config("model=dnn", "data.rows=3000", "trainer.precision=16-true", *FAST[3:],
                                       output_dir=tmp_path / "fp16"))


def test_a_run_trains_at_the_rate_a_learning_rate_finder_sets(tmp_path):
    # Lightning's finder as a command line adds it: its trial (up to lr 1, where the loss may blow up) before the fit,
    # then the whole run at the rate it found, from the weights the trial started with.
    finder = ["+callbacks.lrf._target_=lightning.pytorch.callbacks.LearningRateFinder",
              "+callbacks.lrf.update_attr=true", "+callbacks.lrf.num_training_steps=16",
              "+callbacks.lrf.early_stop_threshold=null"]
    metrics = train_module.train(make_config("model=dnn", "data.rows=3000", "data.batch_size=64", "scheduler=none",
                                             "trainer.max_epochs=1", *FAST[3:], *finder, output_dir=tmp_path))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    found = last["optimizer_states"][0]["param_groups"][0]["lr"]
    assert metrics["steps"] == 33 and found != 1e-2  # 33: an epoch of 2,100 rows, 64 a batch
    assert last["hyper_parameters"]["lr"] == found  # the rate the checkpoint records


def test_lightning_device_stats_monitor_logs_the_hosts_use(tmp_path):
    # "Any Lightning callback joins a run": DeviceStatsMonitor needs psutil on a CPU (a dependency, for that).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_module.train(make_config("model=dnn", "data.rows=3000", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                                   "trainer.limit_train_batches=3", *FAST[3:],
                                   "+callbacks.dsm._target_=lightning.pytorch.callbacks.DeviceStatsMonitor",
                                   output_dir=tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "DeviceStatsMonitor.on_train_batch_start/cpu_percent" in events.Tags()["scalars"]


@pytest.mark.parametrize("limit, message", [
    ("trainer.limit_train_batches=0.01", r"trainer.limit_train_batches=0.01 of the train split's \d+ batches is less "
                                         r"than one: give at least 0.\d+, or a whole number of batches"),
    ("trainer.limit_test_batches=0.01", r"trainer.limit_test_batches=0.01 of the test split's 2 batches is less than"),
])
def test_a_fraction_of_less_than_one_batch_is_one_line(limit, message, mnist_dir, tmp_path):
    # Known only once the data is read: Lightning's MisconfigurationException was a traceback.
    with pytest.raises(UserInputError, match=message):
        train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1", "trainer.limit_val_batches=1",
                                        limit))


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_is_set_before_the_strategy_wraps_the_network(channels_last, mnist_dir, tmp_path, monkeypatch):
    # Set in on_fit_start it came after DDP had built its gradient buckets ("Grad strides do not match bucket view
    # strides ... may impair performance"): configure_model runs before the strategy's setup. false keeps NCHW.
    from lightning.pytorch.strategies import SingleDeviceStrategy
    layouts = []
    setup = SingleDeviceStrategy.setup
    monkeypatch.setattr(SingleDeviceStrategy, "setup", lambda self, trainer: (layouts.append(
        self.lightning_module.net.features[4].weight.is_contiguous(memory_format=torch.channels_last)),
        setup(self, trainer))[1])
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1",
                                              "trainer.limit_train_batches=1",
                                              f"model.channels_last={str(channels_last).lower()}"))
    assert layouts[0] == channels_last  # the fit's setup saw NHWC weights, and only when asked for
    # Outside the fit (load_recipe: eval.py, predict.py, the notebooks) the checkpoint runs in the layout it trained
    # in, with the weights it saved, and scores what the run's test did.
    recipe = load_recipe(str(tmp_path / metrics["best_checkpoint"]))
    assert recipe.net.features[4].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    saved = torch.load(tmp_path / metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in recipe.state_dict().items() if name in saved)
    assert eval_script.evaluate(tmp_path / metrics["best_checkpoint"])["test/acc"] == pytest.approx(metrics["test/acc"])


def test_the_command_lines_penalties_rate_and_optimizer_are_what_the_recipe_trains_with(mnist_dir, tmp_path):
    # The recipe's own tests give it weight_decay, l1 and label_smoothing directly: here they come from the config, as
    # a run gets them.
    from models.assemble import build

    cfg = mnist_config(mnist_dir, tmp_path, "model.weight_decay=0.05", "model.l1=0.001", "model.lr=0.02",
                       "model.label_smoothing=0.1", "optimizer=sgd", "optimizer.momentum=0.5", "scheduler=none")
    _, recipe = build(cfg)
    optimizer = recipe.configure_optimizers()
    decayed, free = optimizer.param_groups
    assert type(optimizer) is torch.optim.SGD and (decayed["weight_decay"], free["weight_decay"]) == (0.05, 0.0)
    assert (decayed["lr"], decayed["momentum"], recipe.hparams.l1, recipe.hparams.label_smoothing) == (
        0.02, 0.5, 0.001, 0.1)


def test_early_stopping_stops_when_validation_stalls(mnist_dir, tmp_path):
    # min_delta=1: no gain in accuracy can count as an improvement, so patience=2 stops after 3 epochs of 20.
    cfg = mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=20", "callbacks.early_stopping.min_delta=1.0",
                       "callbacks.early_stopping.patience=2")
    metrics = train_module.train(cfg)
    assert metrics["stopped_early"] and metrics["epochs"] == 3
    # metrics.json holds the test score of the best checkpoint, not of the weights the run ended with.
    best, last = (torch.load(tmp_path / "checkpoints" / f"{name}.ckpt", weights_only=True) for name in ("best", "last"))
    assert best["epoch"] < last["epoch"]  # val/acc peaked before the last epoch (else this test proves nothing)
    scored = eval_script.evaluate(tmp_path / "checkpoints" / "best.ckpt")
    assert scored["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-5)
    assert eval_script.evaluate(tmp_path / "checkpoints" / "last.ckpt")["test/loss"] != scored["test/loss"]
    # Resumed, a run that stopped early trains nothing more (it trained one more epoch before).
    (tmp_path / "metrics.json").unlink()
    again = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=20", "ckpt_path=last",
                                            "callbacks.early_stopping.min_delta=1.0",
                                            "callbacks.early_stopping.patience=2"))
    assert again["stopped_early"] and (again["epochs"], again["steps"]) == (metrics["epochs"], metrics["steps"])
    # Resumed with more patience, it trains on: the 2 epochs without improvement count, 2 more make 4.
    (tmp_path / "metrics.json").unlink()
    longer = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=20", "ckpt_path=last",
                                             "callbacks.early_stopping.min_delta=1.0",
                                             "callbacks.early_stopping.patience=4"))
    assert longer["stopped_early"] and longer["epochs"] == metrics["epochs"] + 2
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"][
        "EarlyStopping{'monitor': 'val/acc', 'mode': 'max'}"]["patience"] == 4


def test_the_reported_best_validation_score_is_the_best_epochs_not_the_last(tmp_path):
    # val/loss_best (what a sweep optimizes) is the run's lowest val/loss, the best checkpoint's, in a run that gets
    # worse on validation as it trains: the held-out images are labelled one class on, so the better the network
    # learns the training labels the higher its validation loss. (The generated classes are learnt within an epoch:
    # on them val/acc is 1.0 from the first epoch on, and the last epoch is as good as the best.)
    images, labels = pattern_images(1200, 28, 1, seed=0)
    held_out = split_indices(1200, 200, seed=0)[1].numpy()  # the rows data.val_size=200 (split_seed 0) holds out
    labels[held_out] = (labels[held_out] + 1) % 10
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    test_images, test_labels = pattern_images(300, 28, 1, seed=1)
    for split, x, y in (("train", images, labels), ("t10k", test_images, test_labels)):
        write_idx(raw / f"{split}-images-idx3-ubyte", x[..., 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    metrics = train_module.train(mnist_config(tmp_path / "data", tmp_path / "run", "trainer.max_epochs=3",
                                              "monitor.metric=val/loss", "monitor.mode=min",
                                              "callbacks.early_stopping=null"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    curve = [e.value for e in events.Scalars("val/loss")]
    assert len(curve) == 3 and min(curve) < curve[-1]  # else this test proves nothing
    assert metrics["val/loss_best"] == pytest.approx(min(curve), rel=1e-6)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == curve.index(min(curve))


def test_a_logged_step_loss_is_the_mean_over_its_accumulated_batches(mnist_dir, tmp_path):
    # 6 batches, 2 to an optimizer step, every step logged: each train/loss_step is its two batches' mean (the
    # loss its gradient follows), so their mean is the epoch's train/loss; one batch's loss each would not be.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=6",
                                    "+trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1",
                                    "scheduler=none", "callbacks.early_stopping=null"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = events.Scalars("train/loss_step")
    assert [e.step for e in steps] == [0, 1, 2]
    rates = [tag for tag in events.Tags()["scalars"] if tag.startswith("lr-")]  # lr-AdamW/pg1, ...: one a group
    assert rates and all([e.step for e in events.Scalars(tag)] == [0, 1, 2] for tag in rates)  # once a step too
    epoch = events.Scalars("train/loss")[0].value
    assert sum(e.value for e in steps) / 3 == pytest.approx(epoch, rel=1e-5)
    # Logged at the run's last step alone (log_every_n_steps 100): the same mean of its two batches, not the last's.
    train_module.train(mnist_config(mnist_dir, tmp_path / "once", "trainer.max_epochs=1",
                                    "trainer.limit_train_batches=6", "+trainer.accumulate_grad_batches=2",
                                    "trainer.log_every_n_steps=100", "scheduler=none", "callbacks.early_stopping=null"))
    events = EventAccumulator(str(tmp_path / "once" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    last, = events.Scalars("train/loss_step")
    assert last.step == 2 and last.value == pytest.approx(steps[-1].value, rel=1e-5)


@pytest.fixture
def few_event_files(monkeypatch):
    """Event files numbered from 0 again, as in a new train.py process. TensorBoard reads a folder's files in the
    order of their names, whose last part counts the process's files: in the test process, past 9, a run's own
    files after its first (".10" before ".9") came before the first one's purge mark, which dropped their points."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(0))


def test_a_resumed_run_logs_each_step_once(mnist_dir, tmp_path, few_event_files):
    # A run killed after its last checkpoint had logged steps it trains again once resumed: TensorBoard kept both.
    # Here last.ckpt comes from the step checkpoint alone, at step 14 of 20: what a kill after step 19 leaves.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    settings = ["trainer.max_epochs=2", "trainer.limit_train_batches=10", "trainer.limit_val_batches=2",
                "trainer.log_every_n_steps=5", "callbacks.step_checkpoint.every_n_train_steps=7",
                "callbacks.epoch_checkpoint=null"]
    first = train_module.train(mnist_config(mnist_dir, tmp_path, *settings))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14
    (tmp_path / "metrics.json").unlink()
    time.sleep(1 - time.time() % 1)  # the next second: TensorBoard orders event files by the second in their names
    again = train_module.train(mnist_config(mnist_dir, tmp_path, *settings, "ckpt_path=last"))
    assert again["steps"] == first["steps"] == 20
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in ("train/loss_step", "val/acc", "test/acc")}
    assert steps == {"train/loss_step": [4, 9, 14, 19], "val/acc": [9, 19], "test/acc": [20]}


def test_a_new_run_where_one_died_before_its_first_checkpoint_logs_each_step_once(mnist_dir, tmp_path,
                                                                                  few_event_files):
    # Started again by the same command (ckpt_path=last finds no last.ckpt, a new run starts): the dead run's
    # points are dropped from the curves, not drawn twice over the same steps (its event file stays).
    settings = ["trainer.max_epochs=2", "trainer.limit_train_batches=10", "trainer.limit_val_batches=2",
                "trainer.log_every_n_steps=5", "callbacks.early_stopping=null"]
    train_module.train(mnist_config(mnist_dir, tmp_path, *settings))
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed before its first checkpoint
    (tmp_path / "metrics.json").unlink()
    dead = set((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    time.sleep(1 - time.time() % 1)  # the next second: TensorBoard orders event files by the second in their names
    train_module.train(mnist_config(mnist_dir, tmp_path, *settings))
    assert dead < set((tmp_path / "tensorboard").glob("events.out.tfevents.*"))  # kept
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in ("train/loss_step", "val/acc", "test/acc")}
    assert steps == {"train/loss_step": [4, 9, 14, 19], "val/acc": [9, 19], "test/acc": [20]}


def test_only_a_runs_own_tensorboard_folder_is_purged_for_a_new_run(tmp_path):
    # A folder other runs share (logger.save_dir elsewhere), or a new version_N each time: nothing of theirs hidden.
    from models.assemble import tensorboard_folder

    assert tensorboard_folder(make_config("model=dnn", output_dir=tmp_path)) == tmp_path / "tensorboard"
    assert tensorboard_folder(make_config("model=dnn", "logger.version=3", output_dir=tmp_path)) == (
        tmp_path / "tensorboard" / "version_3")
    assert tensorboard_folder(make_config("model=dnn", f"logger.save_dir={tmp_path / 'all'}",
                                          output_dir=tmp_path / "run")) is None
    assert tensorboard_folder(make_config("model=dnn", "logger.version=null", output_dir=tmp_path)) is None


def test_a_stop_in_the_first_epoch_is_an_early_stop_and_stays_one_on_resume(mnist_dir, tmp_path):
    # A threshold met at once (any val/acc >= 0) stops after epoch 0, where Lightning's stopped_epoch stays 0.
    stop_at_once = ["trainer.max_epochs=5", "+callbacks.early_stopping.stopping_threshold=0.0"]
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, *stop_at_once))
    assert metrics["stopped_early"] and metrics["epochs"] == 1
    (tmp_path / "metrics.json").unlink()
    again = train_module.train(mnist_config(mnist_dir, tmp_path, *stop_at_once, "ckpt_path=last"))
    assert again["stopped_early"] and (again["epochs"], again["steps"]) == (1, metrics["steps"])


def test_a_stop_within_an_epoch_stays_one_on_resume(mnist_dir, tmp_path):
    # Validating 4 times an epoch, early stopping says stop at the second validation (step 2, epoch 0): last.ckpt,
    # written there, is within epoch 0. Resumed from it, the run trains nothing more and tests the same weights.
    stop_within = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "+trainer.val_check_interval=0.25",
                   "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100"]
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, *stop_within))
    assert metrics["stopped_early"] and metrics["stopped_by"] == "early_stopping" and metrics["steps"] == 2
    (tmp_path / "metrics.json").unlink()
    again = train_module.train(mnist_config(mnist_dir, tmp_path, *stop_within, "ckpt_path=last"))
    assert again["stopped_early"] and (again["epochs"], again["steps"]) == (metrics["epochs"], 2) == (1, 2)
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)


def test_stopped_early_means_early_stopping_ended_the_last_epoch():
    stopper = EarlyStopping(monitor="val/loss")
    trainer = SimpleNamespace(early_stopping_callback=stopper, current_epoch=5)  # epochs 0-4 trained
    assert not stopped_early(trainer)
    stopper.stopping_reason, stopper.stopped_epoch = EarlyStoppingReason.PATIENCE_EXHAUSTED, 4
    assert stopped_early(trainer)
    stopper.stopped_epoch = 2  # it said stop after epoch 2, and trainer.min_epochs kept the run going
    assert not stopped_early(trainer)
    stopper.stopped_epoch = 5  # within epoch 5, at a validation within it: a checkpoint written there
    assert stopped_early(trainer)
    assert not stopped_early(SimpleNamespace(early_stopping_callback=None, current_epoch=5))


def test_stopped_by_names_the_budget_the_run_reached_and_a_callback_otherwise():
    # Pins stopped_by's order and boundaries: a budget counts once reached; max_epochs=-1 is no budget; an expired
    # Timer is max_time; early stopping comes first.
    from lightning.pytorch.callbacks import Timer

    from models.recipe import stopped_by

    def trainer(batches_run=20, **settings):  # of the epoch's 20 (Lightning counts an epoch cut short as done)
        fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
            current=SimpleNamespace(completed=batches_run))))
        return SimpleNamespace(**{"early_stopping_callback": None, "max_steps": -1, "global_step": 40,
                                  "max_epochs": 3, "current_epoch": 2, "callbacks": [], "fit_loop": fit_loop,
                                  "num_training_batches": 20, **settings})

    expired = Timer(duration={"seconds": 1})
    expired._offset = 2  # 2 s of training counted against a 1 s limit
    assert stopped_by(trainer(max_steps=40)) == "max_steps" and stopped_by(trainer(max_steps=41)) == "a callback"
    assert stopped_by(trainer(current_epoch=3)) == "max_epochs"
    assert stopped_by(trainer(max_epochs=-1, current_epoch=5)) == "a callback"  # -1: no epoch budget (the LSTM's)
    assert stopped_by(trainer(max_epochs=-1, callbacks=[expired])) == "max_time"
    assert stopped_by(trainer(current_epoch=3, batches_run=7, callbacks=[expired])) == "max_time"  # the last cut
    assert stopped_by(trainer(current_epoch=3, batches_run=7)) == "a callback"
    assert stopped_by(trainer(callbacks=[Timer(duration={"seconds": 1000})])) == "a callback"
    stopper = EarlyStopping(monitor="val/loss")
    stopper.stopping_reason, stopper.stopped_epoch = EarlyStoppingReason.PATIENCE_EXHAUSTED, 2
    assert stopped_by(trainer(early_stopping_callback=stopper, current_epoch=3, max_steps=40)) == "early_stopping"


def test_eval_scores_as_much_of_the_test_split_as_the_run_did(mnist_dir, tmp_path):
    # debug=fast or trainer.limit_test_batches score part of the test split; eval.py reproduces that figure, and
    # scores the whole split when asked.
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1", "data.eval_batch_size=100",
                                              "trainer.limit_test_batches=1"))
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert eval_script.evaluate(best)["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    whole = eval_script.evaluate(best, trainer_options={"limit_test_batches": 1.0})["test/loss"]  # 3 batches of 100
    assert whole != pytest.approx(metrics["test/loss"], rel=1e-3)  # (the loss is tiny: these patterns are easy)


def test_a_step_budget_ending_mid_epoch_still_validates_and_tests(mnist_dir, tmp_path):
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_steps=5"))  # an epoch is 15 steps
    assert metrics["steps"] == 5 and "val/acc_best" in metrics and "test/acc" in metrics
    assert (tmp_path / metrics["best_checkpoint"]).is_file() and not metrics["stopped_early"]
    assert metrics["stopped_by"] == "max_steps"


def test_a_run_cut_by_max_time_says_so_and_that_its_schedule_had_not_ended(mnist_dir, tmp_path, caplog, capsys):
    # A time limit is a guard: a run it stops has a one-cycle learning rate that never came down. It still
    # validates and tests, and says what stopped it, in metrics.json and in a warning.
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "scheduler=onecycle", "trainer.max_epochs=10000",
                                              "trainer.max_time=00:00:00:02",  # 150,000 steps: cut after 2 s
                                              "callbacks.early_stopping=null"))  # (a fast CPU got to patience first)
    assert metrics["stopped_by"] == "max_time" and 0 < metrics["steps"] < 150_000 and "test/acc" in metrics
    assert (f"trainer.max_time ended the run after {metrics['steps']} of the 150000 steps its learning-rate "
            "schedule spans: the rate was ") in caplog.text and " it ends at, which costs accuracy" in caplog.text
    assert "warning: trainer.max_time ended the run after" in capsys.readouterr().err  # on the console too


def schedule(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]


@pytest.mark.parametrize("budget, steps", [
    (["trainer.max_epochs=2", "+trainer.accumulate_grad_batches=4"], 8),  # 15 batches: 4 steps an epoch (3 + 1)
    (["trainer.max_epochs=2", "trainer.max_steps=20"], 20),               # the step budget ends the run first
    (["trainer.max_epochs=-1", "trainer.max_steps=12", "trainer.limit_train_batches=5"], 12),
    (["trainer.max_epochs=2", "trainer.limit_train_batches=2"], 4),  # a 1-step warm-up (0.25 x 4): OneCycleLR / 0
])
def test_the_one_cycle_schedule_spans_exactly_the_steps_the_run_takes(budget, steps, mnist_dir, tmp_path):
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "scheduler=onecycle", "model.lr=0.01",
                                              "callbacks.early_stopping=null", *budget))
    assert metrics["steps"] == steps == schedule(tmp_path)["total_steps"]  # the last step runs at the final LR


def test_the_step_schedule_decays_every_epoch_of_a_step_budget(mnist_dir, tmp_path):
    # max_epochs=-1 (the LSTM's way): epochs of limit_train_batches=5 steps; 15 steps = 3 decays of x0.5.
    train_module.train(mnist_config(mnist_dir, tmp_path, "scheduler=step", "scheduler.every_epochs=1",
                                    "scheduler.gamma=0.5", "model.lr=0.01", "trainer.max_epochs=-1",
                                    "trainer.max_steps=15", "trainer.limit_train_batches=5"))
    assert schedule(tmp_path)["_last_lr"][0] == pytest.approx(0.01 * 0.5 ** 3)


def test_the_cosine_schedule_ends_the_run_at_its_final_ratio(mnist_dir, tmp_path):
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "scheduler=cosine", "scheduler.final_ratio=0.1",
                                              "model.lr=0.01", "trainer.max_epochs=2", "callbacks.early_stopping=null"))
    saved = schedule(tmp_path)
    assert metrics["steps"] == 30 == saved["T_max"] and saved["_last_lr"][0] == pytest.approx(0.01 * 0.1)


def test_log_every_n_steps_zero_trains(mnist_dir, tmp_path):
    metrics = train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1",
                                              "trainer.log_every_n_steps=0"))
    assert metrics["steps"] == 15


def test_test_split_is_read_only_by_trainer_test(mnist_dir, tmp_path, monkeypatch):
    events = []
    load, test = ImageDataModule._load, L.Trainer.test
    monkeypatch.setattr(ImageDataModule, "_load",
                        lambda self, train: events.append(f"load train={train}") or load(self, train))
    monkeypatch.setattr(L.Trainer, "test", lambda self, *a, **k: events.append("trainer.test") or test(self, *a, **k))
    train_module.train(mnist_config(mnist_dir, tmp_path, "trainer.max_epochs=1"))
    assert events == ["load train=True", "trainer.test", "load train=False"]


def test_cli_run_directory_holds_config_checkpoints_events_and_metrics(mnist_dir, tmp_path):
    out = tmp_path / "run"
    result = run_cli("model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", "trainer.max_epochs=1",
                     f"hydra.run.dir={out}", *FAST)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    printed = json.loads(result.stdout[result.stdout.rindex("{\n"):])  # the console's last lines: the test metrics
    assert "test/acc" in printed and printed == {k: v for k, v in metrics.items() if k.startswith("test/")}
    log = (out / "train.log").read_text()  # Lightning's messages, the command and the metrics, not an empty file
    assert "python train.py model=cnn" in log and "Trainer.fit` stopped" in log and '"test/acc"' in log
    assert " trainer.max_epochs=1 " in log  # as typed (Hydra was given ++trainer.max_epochs=1)


def test_cli_console_holds_no_line_that_asks_nothing(mnist_dir, tmp_path):
    """The default trainer settings, whole epochs: Lightning's devices, checkpoint restores and reason for stopping
    stay; its cloud-logger advertisement, torch's deprecations of what Lightning calls (LeafSpec; torch.jit.trace,
    which draws TensorBoard's graph), the announcements of limits at 1.0 and of a skipped default summary, and
    ckpt_path="best"'s warning about three ModelCheckpoints go. The model summary lists the network's layers with
    the shapes one validation example takes through them."""
    result = run_cli("model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", "data.val_size=200",
                     "data.batch_size=64", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                     "callbacks.result_figures=null", "+logger.log_graph=true", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert "GPU available" in console and "Trainer.fit` stopped" in console and "Restoring states" in console
    for line in ("Tip:", "is deprecated", "was configured so", "Skipping setting a default",
                 "multiple `ModelCheckpoint`"):
        assert line not in console, line
    # A padded 3x3 convolution keeps 28x28, the 2x2 max-pool halves it; the FLOPs are counted, not 0.
    assert re.search(r"net\.features\.0 +│ Conv2d .*│ +\[1, 1, 28, 28\] │ +\[1, (\d+), 28, 28\] │", console)
    assert re.search(r"MaxPool2d .*│ +\[1, (\d+), 28, 28\] │ +\[1, \1, 14, 14\] │", console)
    assert "Total FLOPs: 0 " not in console and re.search(r"Total FLOPs: [\d.]+ [KM]", console)
    assert "metrics." not in console and "losses." not in console  # the recipe's metric objects are not layers


@pytest.mark.parametrize("compiled", [False, True])
def test_model_summary_example_is_one_validation_row_unless_the_network_is_compiled(compiled):
    """The summary's forward of a compiled network would compile it again for that example's shapes: none then."""
    net = ConvNet(in_channels=1, num_classes=10, image_size=(28, 28))
    if compiled:
        net.compile()  # (compiles at its first call, which does not come)
    recipe = Recipe(net, task="multiclass", lr=0.1, optimizer={"name": "sgd"}, scheduler={"name": "none"},
                    net_kwargs={"num_classes": 10})
    from lightning.pytorch.plugins.precision import HalfPrecision, Precision

    images, labels = torch.randn(5, 1, 28, 28), torch.arange(5)
    for plugin, dtype in ((Precision(), torch.float32), (HalfPrecision("bf16-true"), torch.bfloat16)):
        recipe.example_input_array = None
        recipe._trainer = SimpleNamespace(datamodule=SimpleNamespace(val_dataloader=lambda: iter([(images, labels)])),
                                          precision_plugin=plugin)  # bf16-true: as Lightning converts each batch
        recipe.setup("fit")
        if compiled:
            assert recipe.example_input_array is None
        else:
            (example,) = recipe.example_input_array
            assert torch.equal(example, images[:1].to(dtype)) and example.dtype == dtype
            # its own row: a view would keep the batch's storage (a table's: the validation split's device copy)
            assert example.untyped_storage().nbytes() == example.numel() * example.element_size()


def test_log_graph_writes_the_networks_graph_to_tensorboard(tmp_path):
    cfg = make_config("model=dnn", "data.rows=2000", "debug=fast", "callbacks.progress_bar=null",
                      "callbacks.model_summary=null", "callbacks.result_figures=null", "+logger.log_graph=true",
                      output_dir=tmp_path)
    train_module.train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert events.Tags()["graph"]
    # Once: Lightning wrote it again at the test's start, a second graph TensorBoard overwrote the first with,
    # warning "Found more than one graph event per run".
    graphs = [event for file in (tmp_path / "tensorboard").glob("events.*")
              for event in EventFileLoader(str(file)).Load() if event.HasField("graph_def")]
    assert len(graphs) == 1


def test_cli_unknown_choice_lists_the_options(tmp_path):
    result = run_cli("model=cnnn", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Could not find 'model/cnnn'" in result.stderr and "cnn" in result.stderr


def test_cli_missing_data_is_one_clear_line(tmp_path):
    result = run_cli("model=cnn", "data=mnist", f"paths.data_dir={tmp_path}/nothing", "data.download=false",
                     f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: mnist not found in")
    assert "[ERROR] - error: mnist not found in" in (tmp_path / "run" / "train.log").read_text()


def test_multirun_writes_one_directory_per_job_and_a_summary(mnist_dir, tmp_path):
    result = run_cli("-m", "model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", *FAST, "trainer.max_epochs=1",
                     "model.lr=0.01,0.003", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == ["0", "1"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(r["model.lr"] for r in summary) == ["0.003", "0.01"]  # (best first: tests/test_scale.py)


def test_a_failing_job_of_a_sweep_is_one_error_line_and_the_sweep_goes_on(mnist_dir, tmp_path):
    fast = [a for a in FAST if not a.startswith("data.val_size=")]
    result = run_cli("-m", "model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", *fast, "trainer.max_epochs=1",
                     "data.val_size=0,200", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]  # after every job: a script running the sweep knows
    assert "error: data.val_size=0 leaves no training or no validation rows" in result.stderr
    assert "Traceback" not in result.stderr and "1 run (1 failed, no metrics.json: job 0)" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["job"], r["failed"], r["data.val_size"]) for r in summary] == [("1", False, "200"), ("0", True, "0")]
    assert summary[0]["trainer.max_epochs"] == "1"  # the column of `trainer.max_epochs=1` (passed on as ++trainer...)
    assert "test/acc" in summary[0] and "test/acc" not in summary[1]  # the failed job: its overrides, no metrics


@pytest.mark.skipif(torch.cuda.is_available() or not torch.cuda._is_compiled(),
                    reason="for a CUDA build of torch on a machine without a GPU (with one, the NVML check stays)")
def test_without_a_gpu_optimizer_steps_do_not_look_for_nvml(monkeypatch):
    from models.host import NVML_CHECK, cheap_cuda_check
    monkeypatch.setenv(NVML_CHECK, "1")  # what importing Lightning sets
    looked = []
    # -1: NVML failed (patched above the NVML call itself, which CUDA_VISIBLE_DEVICES="" or -1 would skip)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: looked.append(1) or -1)
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters())

    def steps(n: int) -> int:
        looked.clear()
        for _ in range(n):
            net(torch.ones(1, 2)).sum().backward()
            optimizer.step()
        return len(looked)

    assert steps(3) == 3  # torch.optim looks for a GPU on every step...
    assert cheap_cuda_check()
    assert steps(3) == 0 and os.environ.get(NVML_CHECK) != "1"  # ...and no longer: the CUDA runtime answers
    assert torch.cuda.is_available() is False


def test_freed_memory_is_kept_for_reuse_on_linux():
    from models.host import keep_freed_memory
    applied = keep_freed_memory()
    assert applied == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert make_config("model=cnn").keep_freed_memory is True  # on by default, `keep_freed_memory=false` turns it off
    if applied:  # a 64 MB buffer comes from the heap now, not from a fresh mmap() (glibc's mallinfo2: mmapped chunks)
        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                              "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo2.restype = MallInfo2
        before = mallinfo2().hblks
        buffer = torch.empty(64 << 20, dtype=torch.uint8)
        assert mallinfo2().hblks == before
        del buffer


def test_keep_freed_memory_asks_mallopt_for_no_mmap_and_a_1_gib_trim_threshold(monkeypatch):
    # Pinned: mallopt(M_MMAP_MAX=-4, 0) and mallopt(M_TRIM_THRESHOLD=-1, 1 GiB), both asked; applied only if both
    # succeed; a libc without mallopt (musl) is no error; only on Linux.
    from models import host
    calls, answers = [], [1, 1]
    libc = SimpleNamespace(mallopt=lambda param, value: calls.append((param, value)) or answers[len(calls) - 1])
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert host.keep_freed_memory() is True and calls == [(-4, 0), (-1, 1 << 30)]
    calls.clear()
    answers[:] = [0, 1]  # mmap could not be turned off: the trim threshold is still set, and it did not apply
    assert host.keep_freed_memory() is False and len(calls) == 2
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace())
    assert host.keep_freed_memory() is False
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(sys, "platform", "darwin")  # macOS has no glibc: nothing asked
    assert host.keep_freed_memory() is False and len(calls) == 2


def test_cheap_cuda_check_drops_the_nvml_setting_only_without_a_gpu(monkeypatch):
    # Pinned: PYTORCH_NVML_BASED_CUDA_CHECK=1 is removed (True) only where no GPU is seen; kept with one, or if not 1.
    from models.host import NVML_CHECK, cheap_cuda_check
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cheap_cuda_check() is False and os.environ[NVML_CHECK] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cheap_cuda_check() is True and os.environ.get(NVML_CHECK) != "1"
    monkeypatch.setenv(NVML_CHECK, "0")
    assert cheap_cuda_check() is False and os.environ[NVML_CHECK] == "0"


@pytest.mark.parametrize("experiment, precision", [("cnn_gpu", "bf16-mixed"), ("lstm_gpu", "bf16-mixed")])
def test_gpu_presets_run_their_whole_path_on_the_cpu(experiment, precision, mnist_dir, tmp_path, monkeypatch):
    # Everything but the device: the preset's network, data and schedule, in bf16 autocast (the LSTM's recurrence
    # in float32: oneDNN has no bf16 LSTM on an AVX2 CPU). torch.compile is left out only for time: minutes here.
    text = tmp_path / "corpus.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 1500)
    # Shorter windows and text samples than the preset's (the same network, precision and schedule): time.
    data = ([f"data.path={text}", "data.seq_len=32", "data.eval_seq_len=64", "callbacks.text_samples.length=20"]
            if experiment == "lstm_gpu" else ["data=mnist", f"paths.data_dir={mnist_dir}", "data.val_size=200"])
    cfg = make_config(f"experiment={experiment}", *data, "trainer.accelerator=cpu", f"trainer.precision={precision}",
                      "model.compile=false", "data.batch_size=8", "data.eval_batch_size=8",  # small batches: time
                      "trainer.max_steps=2", "trainer.limit_val_batches=2",
                      "trainer.limit_test_batches=2", "callbacks.progress_bar=null",
                      "callbacks.result_figures=null", output_dir=tmp_path / "run")
    assert make_config(f"experiment={experiment}").trainer.precision == "bf16-mixed"  # on the GPU
    dtypes, loss = [], Recipe.loss
    monkeypatch.setattr(Recipe, "loss", lambda self, logits, targets: dtypes.append(logits.dtype) or
                        loss(self, logits, targets))
    with warnings.catch_warnings(record=True) as caught:  # the model summary's forward runs under autocast too
        warnings.simplefilter("always")
        metrics = train_module.train(cfg)
    # float32 weights under mixed precision: Lightning's summary warns it cannot tell, and counts 32 bits, rightly
    assert not [w for w in caught if "not supported by the model summary" in str(w.message)]
    assert metrics["steps"] == 2 and metrics["device"].startswith("cpu")
    assert set(dtypes) == {torch.bfloat16}  # autocast was on: the logits of every step and evaluation
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("test/"))


@pytest.mark.parametrize("budget", [["trainer.max_steps=7"], ["trainer.max_steps=-1", "trainer.max_epochs=7"]])
def test_the_lstm_gpu_preset_validates_every_n_steps_across_short_epochs(budget, tmp_path):
    # tinyshakespeare's epoch is ~30 of the preset's steps: validation (checkpoints, early stopping, samples)
    # counts steps across epochs instead. Here an epoch is 1 step (limit_train_batches=1); validation every 3,
    # and when the run ends, whether its step or its epoch budget ends it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    text = tmp_path / "corpus.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 1000)
    cfg = make_config("experiment=lstm_gpu", f"data.path={text}", "trainer.accelerator=cpu",
                      "trainer.precision=32-true",
                      "model.compile=false", "model.net.hidden_size=32", "model.net.embedding_dim=16",
                      "data.batch_size=16", "data.seq_len=32", "data.eval_seq_len=64", "trainer.limit_train_batches=1",
                      "trainer.val_check_interval=3", *budget, "trainer.limit_val_batches=1",
                      "trainer.limit_test_batches=1", "callbacks.progress_bar=null", "callbacks.model_summary=null",
                      output_dir=tmp_path / "run")
    metrics = train_module.train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert metrics["epochs"] >= 6 and [e.step for e in events.Scalars("val/loss")] == [2, 5, 6]  # after steps 3, 6, 7


def test_compile_switch_trains_a_compiled_network_whose_checkpoint_loads_without_compiling(tmp_path):
    # model.compile=true compiles the network's forward in place (nn.Module.compile): the parameters and their
    # state_dict keys stay as they are, so best.ckpt loads into a plain network and predicts what it predicted.
    torch._dynamo.reset()
    cfg = make_config("model=dnn", "data.rows=4000", "data.batch_size=256", "model.compile=true", "debug=fast",
                      "callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.result_figures=null",
                      output_dir=tmp_path)
    torch._dynamo.utils.counters.clear()  # an earlier test's compiles must not count
    metrics = train_module.train(cfg)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo did capture the network
    recipe = load_recipe(str(tmp_path / metrics["best_checkpoint"]))  # an eager network
    assert not hasattr(recipe.net, "_compiled_call_impl") or recipe.net._compiled_call_impl is None
    datamodule = runs.build_datamodule(recipe.hparams.config["data"])
    again = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        recipe, datamodule=datamodule, verbose=False)[0]
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-5)


@pytest.mark.parametrize("accelerator, cuda, set_to", [("auto", True, "high"), ("gpu", True, "high"),
                                                      ("cpu", True, None), ("auto", False, None)])
def test_float32_matmul_precision_is_set_for_a_run_that_may_use_a_cuda_gpu(accelerator, cuda, set_to, monkeypatch):
    # TF32 tensor cores for float32 matrix products on a GPU (torch's default leaves them out, and Lightning says so
    # on every GPU run); nothing changes for a run on the CPU.
    from models import host
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    host.set_matmul_precision(make_config().float32_matmul_precision, accelerator)
    assert calls == ([] if set_to is None else [set_to])


@pytest.mark.parametrize("setting, mode", [("true", None), ("false", "not compiled"),
                                           ("reduce-overhead", "reduce-overhead")])
def test_compile_setting_picks_torch_compiles_mode(setting, mode, monkeypatch, tmp_path):
    # model.compile=true compiles in torch.compile's default mode; a mode's name picks that mode (experiment=cnn_gpu's
    # reduce-overhead: CUDA graphs, for a step that waits on the host). Each passes the run's checks.
    from models import assemble
    from models.checks import check_run_settings
    cfg = make_config("model=dnn", "data.rows=2000", f"model.compile={setting}", output_dir=tmp_path)
    check_run_settings(cfg)
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, mode=None, **options: modes.append(mode))
    assemble.build(cfg)
    assert modes == ([] if mode == "not compiled" else [mode])


@pytest.mark.parametrize("budget, last_epoch", [({"max_epochs": -1, "max_steps": 10}, "/2"),  # 4 steps an epoch
                                                ({"max_epochs": 3}, "/2"),
                                                # 2 optimizer steps an epoch (the last accumulates 1 batch): 3 epochs
                                                ({"max_epochs": -1, "max_steps": 6, "accumulate_grad_batches": 3},
                                                 "/2"),
                                                ({"max_epochs": -1, "max_steps": -1,
                                                                            "max_time": "00:00:00:02"}, ""),
                                                # a stream of unknown length (Criteo's, streamed): no last epoch
                                                ({"max_epochs": -1, "max_steps": 10, "stream": True}, ""),
                                                ({"max_steps": 10, "stream": True}, ""),
                                                ({"max_epochs": 2, "max_steps": 10, "stream": True}, "/1")])
def test_the_progress_bar_numbers_the_epochs_of_a_step_budget(budget, last_epoch, tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomIterableDataset
    from models.progress import ProgressBar

    class Stream(BoringModel):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(RandomIterableDataset(32, 4))  # no len(): inf batches an epoch

    budget = dict(budget)
    stream = budget.pop("stream", False)
    model, length = (Stream(), {}) if stream else (BoringModel(), {"limit_train_batches": 4})

    class Recorded(ProgressBar):
        descriptions = []

        def _get_train_description(self, current_epoch):
            self.descriptions.append(super()._get_train_description(current_epoch).strip())
            return self.descriptions[-1]

    trainer = L.Trainer(callbacks=[Recorded()], limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **length, **budget)
    trainer.fit(model)
    assert Recorded.descriptions[0] == f"Epoch 0{last_epoch}" and "-" not in "".join(Recorded.descriptions)


def test_the_device_line_names_the_threads_and_the_ddp_processes():
    # Pins device_name: a single process is its device alone, several are counted as DDP processes.
    from models.assemble import device_name

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")), world_size=1)
    assert device_name(trainer) == f"cpu ({torch.get_num_threads()} threads)"
    trainer.world_size = 4
    assert device_name(trainer) == f"cpu ({torch.get_num_threads()} threads) x 4 processes (DDP)"


@pytest.mark.parametrize("setting, net_kwargs, message", [
    ("model.net.activation=gelu", {}, "model.net: activation='gelu'; choose one of"),
    ("model.net.hidden_size=8", {"vocab_size": 12}, "model.net: ClickMLP.__init__() got an unexpected keyword "
                                                    "argument 'vocab_size' (set by the data's config"),
    ("model.net.num_layers=[2]", {}, "model.net: a setting of the wrong kind"),
])
def test_a_network_refusing_its_settings_is_one_user_error(setting, net_kwargs, message):
    # Pins build_recipe's wrapping of the network's ValueError and TypeError into one-line errors naming model.net.
    from models.assemble import build_recipe

    data = SimpleNamespace(net_kwargs={"num_numeric": 3, "cardinalities": [4], **net_kwargs}, task="binary")
    with pytest.raises(UserInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build_recipe(make_config("model=dnn", setting), data)


def test_a_run_without_a_logger_drops_the_learning_rate_monitor_and_a_resume_purges_later_points(tmp_path):
    # Pins make_trainer: LearningRateMonitor needs a logger; TensorBoard drops the points from the resumed step on.
    from lightning.pytorch.callbacks import LearningRateMonitor

    from models.assemble import make_trainer

    trainer = make_trainer(make_config("model=cnn", "~logger", output_dir=tmp_path))
    assert trainer.logger is None and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks)
    assert make_trainer(make_config("model=cnn", output_dir=tmp_path), resume_step=5).logger._kwargs == {
        "purge_step": 5}


def test_max_time_is_taken_as_the_readme_writes_it(tmp_path):
    from lightning.pytorch.callbacks import Timer

    from models.assemble import make_trainer

    for budget in ("00:00:30:00", "{minutes: 30}", "{hours: 0.5}"):  # the dicts failed: "Missing key total_seconds"
        trainer = make_trainer(make_config("model=cnn", f"trainer.max_time={budget}", output_dir=tmp_path))
        assert [c._duration for c in trainer.callbacks if isinstance(c, Timer)] == [1800], budget


def test_the_trainers_switches_turn_off_the_configured_progress_bar_and_model_summary(tmp_path):
    # trainer.enable_progress_bar=false ended in Lightning's "found ProgressBar in callbacks list", and
    # trainer.enable_model_summary=false still printed the configured RichModelSummary's table.
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    from models.assemble import make_trainer

    def kinds(*overrides):
        trainer = make_trainer(make_config("model=cnn", *overrides, output_dir=tmp_path))
        return {kind.__name__ for kind in (ProgressBar, ModelSummary)
                if any(isinstance(c, kind) for c in trainer.callbacks)}

    assert kinds() == {"ProgressBar", "ModelSummary"}
    assert kinds("++trainer.enable_progress_bar=false") == {"ModelSummary"}
    assert kinds("++trainer.enable_model_summary=false") == {"ProgressBar"}
    # Taken out of the callbacks, they are off: Lightning's own bar and summary took their place, so a "quiet" run
    # (tests, benchmarks/gpu.sh's logs) printed a TQDM bar and a summary table.
    assert kinds("callbacks.progress_bar=null", "callbacks.model_summary=null") == set()
    assert kinds("~callbacks.progress_bar") == {"ModelSummary"}
    assert kinds("callbacks.model_summary=null") == {"ProgressBar"}
    # Lightning's defaults stay one switch away.
    assert kinds("callbacks.progress_bar=null", "callbacks.model_summary=null", "++trainer.enable_progress_bar=true",
                 "++trainer.enable_model_summary=true") == {"ProgressBar", "ModelSummary"}
