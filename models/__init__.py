"""The networks (`cnn`, `dnn`, `lstm`: plain nn.Modules returning logits), the one recipe that trains them all
(`recipe`, `schedules`, `regularization`), and what runs it (`assemble`, `cli`, `checks`, `checkpointing`, `records`,
`runs`, ...)."""
import logging
import warnings
from collections.abc import Sequence

# Console lines that ask nothing of whoever reads them, dropped wherever `models` is imported (train.py, eval.py,
# the benchmarks, the notebooks): Lightning's advertisement for its cloud logger, which every Trainer prints, and
# torch 2.14's FutureWarnings at calls inside Lightning 2.6 (a LeafSpec() in lightning/pytorch/utilities/_pytree.py,
# torch.distributed.nn's all_gather under DDP, and torch.jit.trace, which TensorBoard's graph is drawn with under
# `+logger.log_graph=true`), Lightning's to change. Its other lines (devices, checkpoints restored, why fit stopped)
# stay.
UNACTIONABLE_LOG_LINES = ("💡 Tip: For seamless cloud logging",)
UNACTIONABLE_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                         r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                         r"`torch\.jit\.trace(_method)?` is deprecated")
for _message in UNACTIONABLE_WARNINGS:
    warnings.filterwarnings("ignore", _message, FutureWarning)
# (the logger Lightning's rank_zero_info writes to: the same object before and after Lightning's import)
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith(UNACTIONABLE_LOG_LINES))


def check_sizes(least: int = 1, **sizes) -> None:
    """A network's sizes (units, channels, layers, kernel, stride) are whole numbers >= least, else a ValueError
    naming the setting (train.py prints it as `model.net: ...`): torch would build a layer of no units, divide by
    a zero stride, or fail later with a shape error."""
    for name, value in sizes.items():
        many = isinstance(value, Sequence) and not isinstance(value, str)
        values = list(value) if many else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in values):
            raise ValueError(f"{name}={list(value) if many else value!r}: give "
                             f"{'one or more whole numbers' if many else 'a whole number'} >= {least}")
