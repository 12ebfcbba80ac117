"""The networks (plain nn.Modules returning logits) and the one recipe that trains them all."""
from collections.abc import Sequence


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
