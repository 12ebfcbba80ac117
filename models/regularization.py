"""Regularization (course item 6) switched on in the real recipe: the runs notebooks/regularization.ipynb draws.

Every experiment is `train.train(cfg)` on real Fashion-MNIST with a config composed from configs/, shrunk so
that overfitting shows in seconds: 500 training images, a small CNN without its dropout, constant-rate AdamW,
no early stopping. Each technique is then one override on top of that baseline (EXPERIMENTS). The data is the
default `paths.data_dir` (the repository's datasets/), filled from Debian's package on first use.
tests/test_regularization.py asserts the effects the notebook shows, from the same runs.
"""
import contextlib
import json
import logging
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, open_dict

import train as train_module
from models.recipe import decayed_parameters, load_recipe
from models.records import read_checkpoint
from models.runs import checkpoint_epoch, epoch_curves

ROOT = Path(__file__).resolve().parents[1]

# The baseline: little data, enough capacity to memorize it, nothing that regularizes (but the CNN's batch norm).
# 30 epochs of 10 steps: 5-8 s of training on 2 idle CPU cores.
BASELINE = [
    "model=cnn", "data=fashion_mnist",
    "data.train_size=500",            # images; the rest of the training split goes unused
    "data.val_size=1000", "data.batch_size=50", "data.eval_batch_size=1000",
    "data.augment.enabled=false",
    "model.net.widths=[8,16]", "model.net.hidden_size=256",  # 200k weights, most in the head, for 500 images
    "model.net.dropout=0.0", "model.weight_decay=0.0", "model.l1=0.0",
    "optimizer=adamw", "scheduler=none", "model.lr=1e-3",  # higher rates overfit sooner, with noisier curves
    "trainer.max_epochs=30",
    "monitor.metric=val/loss", "monitor.mode=min",  # overfitting shows first, and most, in the validation loss
    "callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.result_figures=null",
]
NO_EARLY_STOPPING = "callbacks.early_stopping=null"  # so the curves go on past the best epoch

# name -> the overrides that switch one technique on. The strengths are large on purpose: 300 steps is short.
EXPERIMENTS = {
    "baseline": [],
    # AdamW's decoupled weight decay: every step multiplies each weight by 1 - lr * weight_decay (0.998 here).
    "weight_decay": ["model.weight_decay=2.0"],
    # The recipe adds l1 * sum |w| to the loss: a gradient of constant size towards 0, whatever the weight's size
    # (AdamW then scales it, like the data's gradient, by each weight's gradient statistics).
    "l1": ["model.l1=1e-4"],
    # The CNN's head: Dropout -> Linear -> ReLU -> Dropout -> Linear; each drops half its inputs while training.
    "dropout": ["model.net.dropout=0.5"],
    "early_stopping": ["callbacks.early_stopping.patience=5"],  # epochs without a lower val/loss, then stop
    "augmentation": ["data.augment.enabled=true"],  # random shift of up to 2 pixels and mirroring
}


def overrides(name: str) -> list[str]:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {list(EXPERIMENTS)}")
    stopping = [] if name == "early_stopping" else [NO_EARLY_STOPPING]
    return [*BASELINE, *stopping, *EXPERIMENTS[name]]


def make_config(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """configs/train.yaml composed as the CLI would, with `overrides`, writing into `output_dir`."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@contextlib.contextmanager
def _quiet(log):
    """Lightning's printing and warnings go to `log`; one thread, for the duration."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small gains little from a second thread, and loses a lot on a busy CPU
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)  # "GPU available", "Seed set", "Restoring states", ...
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # test tables, warnings
            yield
    finally:
        torch.set_num_threads(threads)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run(overrides: list[str], out_dir: str | Path) -> tuple[dict, pd.DataFrame]:
    """Train (unless `out_dir` already holds a run of exactly these overrides): metrics.json and per-epoch curves."""
    out_dir = Path(out_dir)
    stamp = out_dir / "overrides.json"
    done = (out_dir / "metrics.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == overrides
    if not done:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "train.log", "w") as log, _quiet(log):  # a notebook shows curves, not six test tables
            train_module.train(make_config(overrides, out_dir))
        stamp.write_text(json.dumps(overrides) + "\n")
    return json.loads((out_dir / "metrics.json").read_text()), epoch_curves(out_dir)


def experiment(name: str, runs_dir: str | Path) -> tuple[dict, pd.DataFrame]:
    return run(overrides(name), Path(runs_dir) / name)


def weights(run_dir: str | Path, checkpoint: str = "last") -> torch.Tensor:
    """Every conv kernel and linear weight as one vector: what L1 and weight decay act on (not biases, not batch
    norm).
    `last`: the weights at the end of training, where the penalties have acted longest."""
    recipe = load_recipe(str(Path(run_dir) / "checkpoints" / f"{checkpoint}.ckpt"))
    return torch.cat([p.detach().flatten() for p in decayed_parameters(recipe.net)])  # the recipe's own choice


def training_images(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's 500 training images (500, 1, 28, 28) and labels (500,) as evaluation sees them: normalized, not
    augmented. Every experiment trains on the same 500 (only data.augment differs), so any run gives them."""
    config = read_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")["hyper_parameters"]["config"]
    data = instantiate(config["data"])
    data.setup("fit")
    return next(iter(data._batches(data.train, len(data.train[1]), train=False)))  # one batch of all 500


def training_fit(run_dir: str | Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The final weights' cross-entropy on the training images with dropout off: how closely they fit them. (The
    logged train/loss has dropout and augmentation on, so for those two runs it is higher by construction.)"""
    recipe = load_recipe(str(Path(run_dir) / "checkpoints" / "last.ckpt")).eval()
    with torch.no_grad():
        return F.cross_entropy(recipe(images), labels).item()


def near_zero_fraction(w: torch.Tensor, threshold: float = 1e-3) -> float:
    # 1e-3 is ~1/20 of the median baseline weight here: such a weight changes no output that matters.
    return (w.abs() < threshold).float().mean().item()


def weight_norm(w: torch.Tensor) -> float:
    return w.norm().item()  # the Euclidean norm ||w||; L2 penalizes its square, lambda/2 * ||w||^2


def summary(runs_dir: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """One row per finished experiment: where each curve ends (the logged train loss, with dropout and augmentation
    on, and the final weights' fit to the training images without them), its best epoch, the weights, the time."""
    rows, images = {}, None
    for name in names or EXPERIMENTS:
        metrics, curves = experiment(name, runs_dir)
        w = weights(Path(runs_dir) / name)
        if images is None:  # the same 500 for every run
            images = training_images(Path(runs_dir) / name)
        rows[name] = {
            "train loss": curves["train/loss"].iloc[-1],
            "train loss, eval mode": training_fit(Path(runs_dir) / name, *images),
            "val loss": curves["val/loss"].iloc[-1],
            "lowest val loss": curves["val/loss"].min(), "at epoch": int(curves["val/loss"].idxmin()),
            "val acc": curves["val/acc"].iloc[-1], "test acc (best epoch)": metrics["test/acc"],
            "weight norm": weight_norm(w), "|w| < 1e-3": near_zero_fraction(w),
            "epochs": metrics["epochs"], "train seconds": metrics["train_seconds"],
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def best_epoch(run_dir: str | Path) -> int:
    return checkpoint_epoch(Path(run_dir) / "checkpoints" / "best.ckpt")  # 1 = the first epoch


def replay_early_stopping(val_loss: pd.Series, patience: int) -> tuple[int | None, int]:
    """(the epoch EarlyStopping would stop after, or None; the best epoch) on a finished run's val/loss curve:
    stop once `patience` epochs in a row brought no new lowest loss (Lightning's rule, with min_delta 0)."""
    lowest, best, waited = float("inf"), 0, 0
    for epoch, loss in val_loss.items():
        if loss < lowest:
            lowest, best, waited = loss, int(epoch), 0
        else:
            waited += 1
            if waited >= patience:
                return int(epoch), best
    return None, best


def curves_figure(curves: dict[str, pd.DataFrame], title: str, marks: dict[str, int] | None = None) -> Figure:
    """Loss (train dashed, validation solid) and validation accuracy per epoch, one colour per run;
    `marks`: label -> epoch, drawn as vertical lines."""
    fig = Figure(figsize=(11, 3.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for i, (label, table) in enumerate(curves.items()):
        color = f"C{i}"
        loss_ax.plot(table.index, table["train/loss"], "--", color=color, label=f"{label}, train")
        loss_ax.plot(table.index, table["val/loss"], "o-", color=color, markersize=3, label=f"{label}, validation")
        acc_ax.plot(table.index, table["val/acc"], "o-", color=color, markersize=3, label=label)
    for j, (label, epoch) in enumerate((marks or {}).items()):
        for ax in (loss_ax, acc_ax):
            ax.axvline(epoch, color="grey", linestyle=[":", "-."][j % 2], label=label if ax is loss_ax else None)
    top = 1.3 * max(table["val/loss"].iloc[min(2, len(table) - 1):].max() for table in curves.values())
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", ylim=(0, top))  # epochs 1-2 would squash the rest
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def weights_figure(runs: dict[str, torch.Tensor], threshold: float = 1e-3) -> Figure:
    """Histogram of log10 |w| per run: L1 piles weights up below `threshold`, weight decay
    shifts the whole bulk left."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    for i, (label, w) in enumerate(runs.items()):
        ax.hist(w.abs().clamp(min=1e-8).log10().numpy(), bins=80, range=(-8, 0), histtype="step", linewidth=1.5,
                color=f"C{i}", label=f"{label}: {near_zero_fraction(w, threshold):.0%} below {threshold:g}")
    ax.axvline(math.log10(threshold), color="grey", linestyle=":")
    ax.set(xlabel="log10 |w|  (|w| < 1e-8 counted at -8)", ylabel="weights",
           title="conv and linear weights at the end of training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
