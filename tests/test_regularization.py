"""Regularization in the real recipe (notebooks/regularization.ipynb): each technique has the effect it should.

Six short runs of train.train(cfg) on real Fashion-MNIST, shared by every test here and by the notebook.
The margins below held for seeds 42, 0 and 1 with room to spare (the measured values are in the comments).
The notebook's two toy demonstrations (dropout on a tensor, Adam's L2 against AdamW's decay) come first.
"""
import importlib
import io
import logging
import os
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from data import DEBIAN_FASHION_MNIST
from models import course, regularization
from tests.cli_process import SERVER

needs_fashion_mnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                                reason=f"real Fashion-MNIST not found at {DEBIAN_FASHION_MNIST} "
                                       "(apt-get install -y dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """The six experiments, trained once per session: name -> (metrics, curves, final weights)."""
    root = tmp_path_factory.mktemp("regularization")
    # Each run trains on one thread (regularization._quiet): two at a time, one a core, in processes forked from the
    # tests' fork server (train.py's imports already done), so the six take half as long. The loop below then reads
    # the finished runs back, as the notebook does (run() trains only what is missing).
    with SERVER.Pool(min(2, os.cpu_count() or 1), maxtasksperchild=1) as pool:
        pool.starmap(regularization.experiment, [(name, root) for name in regularization.EXPERIMENTS])
    results = {}
    for name in regularization.EXPERIMENTS:
        metrics, curves = regularization.experiment(name, root)
        results[name] = (metrics, curves, regularization.weights(root / name))
    return root, results


def final_val_loss(runs, name: str) -> float:
    return runs[1][name][1]["val/loss"].iloc[-1]


# ---- Toy demonstrations, no training run ----


def test_dropout_zeroes_or_doubles_in_training_and_is_the_identity_in_evaluation():
    x = torch.arange(1.0, 9.0)  # (8,)
    trained, evaluated = course.dropout_train_and_eval(x, p=0.5)  # (10000, 8) training-mode draws; (8,)
    zeroed = trained == 0
    assert torch.equal(trained[~zeroed], (2 * x).expand_as(trained)[~zeroed])  # survivors scaled by 1/(1-p) = 2
    assert zeroed.float().mean().item() == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(trained.mean(0), x, atol=0, rtol=0.05)  # on average: x itself (within 1.9% here)
    assert torch.equal(evaluated, x)


def test_adamw_decays_every_weight_by_the_same_factor_and_adam_l2_does_not():
    final = {name: course.weights_under_decay(optimizer)[-1] for name, optimizer in course.DECAY_OPTIMIZERS.items()}
    factor = (1 - course.DECAY_SETTINGS["lr"] * course.DECAY_SETTINGS["weight_decay"]) ** 100  # 0.366
    large, small = final["AdamW"].tolist()  # the gradients' sizes differ 10,000-fold, the weights do not
    assert large == pytest.approx(small, rel=1e-4) and large == pytest.approx(factor, abs=0.02)  # 0.359
    large, small = final["Adam + L2"].tolist()
    assert large > 0.85 and small < 0.3  # 0.89 and 0.22: decay divided by each weight's gradient size
    torch.testing.assert_close(final["SGD + L2"], torch.full((2,), factor), atol=0.04, rtol=0)  # 0.398, 0.366


def test_the_adamw_toy_shrinks_each_weight_by_0_99_a_step():
    # Pinned: the notebook's numbers, lr 0.01 and decay 1.0: x 0.99 a step, ~0.366 after 100 steps (0.359 measured).
    torch.testing.assert_close(course.weights_under_decay(torch.optim.AdamW)[-1], torch.full((2,), 0.99 ** 100),
                               atol=0.02, rtol=0)


def test_with_sgd_an_l2_term_and_weight_decay_are_the_same_update():
    # SGD(weight_decay=wd) adds the L2 term's gradient wd * w to g: w - lr (g + wd w) = (1 - lr wd) w - lr g, the
    # decoupled shrink-then-step, written out here with the same gradients (+scales, -scales, ...).
    lr, wd = course.DECAY_SETTINGS["lr"], course.DECAY_SETTINGS["weight_decay"]
    path, w = course.weights_under_decay(torch.optim.SGD), torch.ones(2)
    for step in range(100):
        g = (1.0 if step % 2 == 0 else -1.0) * course.NOISE_GRADIENT_SCALES
        w = (1 - lr * wd) * w - lr * g
        torch.testing.assert_close(path[step + 1], w)


# ---- The six runs ----


@needs_fashion_mnist
def test_baseline_overfits(runs):
    metrics, curves, _ = runs[1]["baseline"]
    val, train = curves["val/loss"], curves["train/loss"]
    assert metrics["epochs"] == len(curves) == 30 and not metrics["stopped_early"]
    assert train.iloc[-1] < 0.05  # 0.007-0.010: the 500 training images are memorized
    assert val.idxmin() <= 15  # epoch 10 for all three seeds
    assert val.iloc[-1] > val.min() + 0.05  # +0.11 to +0.14: validation loss climbs back after its minimum
    assert val.iloc[-1] > 10 * train.iloc[-1]


@needs_fashion_mnist
def test_weight_decay_shrinks_the_weights(runs):
    baseline, decayed = runs[1]["baseline"][2], runs[1]["weight_decay"][2]
    assert regularization.weight_norm(decayed) < 0.8 * regularization.weight_norm(baseline)  # 0.67-0.68 of it


@needs_fashion_mnist
def test_l1_makes_the_weights_sparse(runs):
    near_zero = {name: regularization.near_zero_fraction(runs[1][name][2])
                 for name in ("baseline", "weight_decay", "l1")}
    assert near_zero["l1"] > 0.3  # 0.47-0.48
    assert near_zero["l1"] > 10 * near_zero["baseline"]  # baseline 0.026-0.027
    assert near_zero["l1"] > 5 * near_zero["weight_decay"]  # decay shrinks weights, does not zero them: 0.042-0.044


@needs_fashion_mnist
def test_early_stopping_stops_at_patience_after_the_best_epoch(runs):
    root, results = runs
    metrics, curves, _ = results["early_stopping"]
    baseline_curves = results["baseline"][1]
    assert metrics["stopped_early"] and metrics["epochs"] == len(curves) < 30  # 15 of 30
    best = regularization.best_epoch(root / "early_stopping")
    assert best == curves["val/loss"].idxmin() == baseline_curves["val/loss"].idxmin()
    assert metrics["epochs"] == best + 5  # patience 5: five epochs without a lower val/loss
    assert metrics["val/loss_best"] == pytest.approx(curves["val/loss"].min(), abs=1e-6)
    # Same seed, same config but the callback: the same curve, cut short; replaying the rule on it agrees.
    torch.testing.assert_close(torch.tensor(curves["val/loss"].values),
                               torch.tensor(baseline_curves["val/loss"].loc[curves.index].values), atol=1e-4, rtol=0)
    assert regularization.replay_early_stopping(baseline_curves["val/loss"], 5) == (metrics["epochs"], best)


@needs_fashion_mnist
def test_weight_decay_l1_dropout_and_augmentation_lower_the_final_validation_loss(runs):
    baseline = final_val_loss(runs, "baseline")  # 0.65-0.73
    lower = {name: baseline - final_val_loss(runs, name) for name in ("dropout", "weight_decay", "augmentation")}
    assert all(gain > 0.03 for gain in lower.values()), lower  # gains of 0.07 to 0.16
    # ...while the final weights fit the training images less closely: they fight memorizing, not learning.
    # Measured as validation measures, dropout off and no augmentation: baseline 0.007-0.009, weight decay
    # 0.027-0.032, dropout 0.13-0.14, augmentation 0.25-0.26 (seeds 42, 0, 1).
    images, labels = regularization.training_images(runs[0] / "baseline")
    train = {name: regularization.training_fit(runs[0] / name, images, labels) for name in ("baseline", *lower, "l1")}
    assert all(train[name] > 2 * train["baseline"] for name in lower), train
    # L1 as well, by less (seed 42: validation 0.653 -> 0.597, training 0.0087 -> 0.0187): the notebook's "every
    # technique narrows the gap" holds for all five.
    assert baseline - final_val_loss(runs, "l1") > 0.02 and train["l1"] > 1.5 * train["baseline"], train


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of .*'baseline'"):
        regularization.overrides("weight_decayy")


def test_replay_early_stopping_needs_a_strictly_lower_loss_and_weight_norm_is_euclidean():
    # Pinned: as Lightning's EarlyStopping (min_delta 0), a tie with the best loss is no improvement; ||w|| unsquared.
    val_loss = pd.Series([1.0, 0.8, 0.8, 0.8], index=range(1, 5))
    assert regularization.replay_early_stopping(val_loss, 2) == (4, 2)  # the ties at epochs 3 and 4 count as waits
    assert regularization.weight_norm(torch.tensor([3.0, 4.0])) == pytest.approx(5.0)


def test_quiet_puts_back_the_thread_count_and_the_log_levels():
    # Pinned: _quiet's one thread and WARNING level last only while it runs, even when the run fails.
    threads, logger = torch.get_num_threads(), logging.getLogger("lightning.pytorch")
    level = logger.level
    with pytest.raises(RuntimeError), regularization._quiet(io.StringIO()):
        assert torch.get_num_threads() == 1 and logger.level == logging.WARNING
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == threads and logger.level == level


def test_weights_are_the_kernels_and_matrices_not_biases_or_batch_norm(monkeypatch):
    # Pinned: weights() gathers what L1 and decay act on: the conv kernel (16) and linear matrix (24), nothing else.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    monkeypatch.setattr(regularization, "load_recipe", lambda path: SimpleNamespace(net=net))
    w = regularization.weights("run")
    torch.testing.assert_close(w, torch.cat([net[0].weight.flatten(), net[3].weight.flatten()]).detach())


def test_replay_early_stopping_rule():
    val_loss = pd.Series([1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.76, 0.8], index=range(1, 9))
    assert regularization.replay_early_stopping(val_loss, 2) == (4, 2)  # 0.9 and 0.85 do not beat 0.8
    assert regularization.replay_early_stopping(val_loss, 3) == (8, 5)
    assert regularization.replay_early_stopping(val_loss, 4) == (None, 5)  # never stops: 3 epochs after the best


@needs_fashion_mnist
def test_notebook_executes_and_draws(runs):
    nbformat = pytest.importorskip("nbformat")  # the dev extras: nbformat, nbclient, ipykernel
    pytest.importorskip("nbclient")
    root, _ = runs
    notebook = regularization.ROOT / "notebooks" / "regularization.ipynb"
    stored = nbformat.read(notebook, as_version=4)
    assert all(cell.get("outputs", []) == [] for cell in stored.cells), "store the notebook without outputs"
    # The session's runs are reused (same overrides), so this times the notebook's own work, not the training.
    executed = importlib.import_module("notebooks.run").execute("regularization", root, out=root / "executed.ipynb",
                                                                timeout=600)
    outputs = [output for cell in nbformat.read(executed, as_version=4).cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 8  # a figure per technique and more
    text = "".join(output.get("text", "") for output in outputs)
    assert f"stopped_early=True after {runs[1]['early_stopping'][0]['epochs']} of 30 epochs" in text
    assert "500 training images, dropout off: baseline 0.0" in text  # the fit the markdown compares (0.009)
