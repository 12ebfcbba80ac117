"""Pictures of results as plain matplotlib Figures (no pyplot state): the TensorBoard images of
models/figures.py's callback and the notebooks' plots are the same drawings."""
import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor


def confusion_matrix_figure(confusion: np.ndarray, classes: list[str], title: str = "confusion matrix") -> Figure:
    """Rows: true class, columns: predicted. Colour: the share of the row (per-class recall); text: counts."""
    confusion = np.asarray(confusion)
    n = len(confusion)
    share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 20:  # beyond that the numbers do not fit in the cells
        for i, j in np.ndindex(n, n):
            if confusion[i, j]:
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title=f"{title}: accuracy {np.trace(confusion) / max(confusion.sum(), 1):.2%} of {confusion.sum()}")
    ax.set_xticklabels(classes, rotation=90, fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    fig.tight_layout()
    return fig


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    confusion = np.asarray(confusion)
    return np.diag(confusion) / np.maximum(confusion.sum(1), 1)  # recall of each true class


def image_grid_figure(images: np.ndarray, titles: list[str], correct: list[bool] | None = None,
                      columns: int = 8, title: str = "", cell: float = 1.6) -> Figure:
    """`images` (N, C, H, W) in [0, 1]; one title per image, green when `correct`, red when not; `cell` in inches.
    One mosaic in one axes: matplotlib's cost is per axes, and a grid of 32 axes takes seconds to draw."""
    images = np.asarray(images)
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    gap = max(1, w // 14)  # pixels between images
    band = math.ceil(0.3 / cell * (w + gap))  # pixels above each image for a two-line title (0.3 inch)
    mosaic = np.ones((rows * (band + h), columns * (w + gap), c))  # white background
    for i in range(n):
        r, k = divmod(i, columns)
        top, left = r * (band + h) + band, k * (w + gap)
        mosaic[top:top + h, left:left + w] = images[i].transpose(1, 2, 0)  # (H, W, C)
    top_inches = 0.35 if title else 0.0
    width = cell * columns
    fig = Figure(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + top_inches))
    ax = fig.add_axes((0, 0, 1, 1 - top_inches / fig.get_figheight()))
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, k = divmod(i, columns)
        color = "black" if correct is None else ("tab:green" if correct[i] else "tab:red")
        ax.text(k * (w + gap) + w / 2, r * (band + h) + band - 1, titles[i], ha="center", va="bottom",
                fontsize=7, color=color)
    if title:
        fig.suptitle(title, y=0.995, va="top")
    return fig


def prediction_grid_figure(images: np.ndarray, targets: np.ndarray, probs: np.ndarray, classes: list[str],
                           title: str = "") -> Figure:
    """Each image titled `predicted (probability)` and, when wrong, `true: ...`."""
    preds = probs.argmax(1)
    titles = [f"{classes[p]} ({probs[i, p]:.0%})" + ("" if p == t else f"\ntrue: {classes[t]}")
              for i, (p, t) in enumerate(zip(preds, targets))]
    return image_grid_figure(images, titles, correct=list(preds == targets), title=title)


def filters_figure(weight: Tensor, title: str = "first convolution's filters") -> Figure:
    """Conv kernels (out, in, kh, kw), each scaled to its own range: grey for one input channel, RGB for three."""
    w = weight.detach().float().cpu()
    w = w if w.shape[1] in (1, 3) else w.mean(1, keepdim=True)  # other channel counts: their mean
    low, high = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
    w = (w - low) / (high - low).clamp_min(1e-12)
    return image_grid_figure(w.numpy(), [str(i) for i in range(len(w))], columns=min(8, len(w)), title=title, cell=0.9)


def roc_figure(probs: np.ndarray, targets: np.ndarray, title: str = "ROC") -> Figure:
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    p, t = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(targets).long()
    fpr, tpr, _ = binary_roc(p, t, thresholds=201)  # 201 thresholds: a bounded cost for millions of rows
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"model (AUC {float(binary_auroc(p, t)):.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance (AUC 0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, aspect="equal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def calibration_figure(probs: np.ndarray, targets: np.ndarray, bins: int = 10, title: str = "calibration") -> Figure:
    """Per equal-width probability bin: the mean predicted probability against the share of positives.
    A calibrated model lies on the diagonal; below it, the model overestimates the probability of a positive, above it
    underestimates it."""
    probs, targets = np.asarray(probs, dtype=float), np.asarray(targets, dtype=float)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    filled = count > 0
    mean_prob = np.bincount(which, probs, bins)[filled] / count[filled]
    positives = np.bincount(which, targets, bins)[filled] / count[filled]
    fig = Figure(figsize=(4.5, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    top.plot(mean_prob, positives, "o-", label="model")
    top.set(ylabel="share of positives", title=title, xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    bottom.bar((np.arange(bins) + 0.5) / bins, count, width=0.9 / bins, color="tab:blue")
    skewed = count.max() > 100 * max(count.min(), 1)  # e.g. clicks: most rows predicted near 0
    bottom.set(xlabel="predicted probability", ylabel="rows", yscale="log" if skewed else "linear")
    fig.tight_layout()
    return fig


def displayable(images: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """Network inputs (N, C, H, W) back to [0, 1]: undo the data's normalization, or stretch each image."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        return (x * std.float().cpu().view(1, -1, 1, 1) + mean.float().cpu().view(1, -1, 1, 1)).clamp(0, 1)
    low, high = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-12)
