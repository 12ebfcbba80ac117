"""The benchmarks' command lines, checked as train.py checks its own: a bad argument is one `error:` line and exit 2.

throughput.py and time_to_accuracy.py take `key=value` options of their own beside any train.py override;
lstm_windows.py and criteo_prepare.py take argparse flags, whose values `at_least` bounds.
"""
import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.checks import CONFIGS, check_number
from models.cli import check_overrides, trainer_arguments
from models.records import write_json
from models.runs import check_out

os.environ.setdefault("REDES_ROOT", str(CONFIGS.parent))  # configs' ${paths.root_dir}, as train.py sets it
# trainer.precision's short names, as Lightning reads them; what measure.autocast does in the plain loop (bf16-true
# would train bfloat16 weights in one path and float32 ones in the other)
LIGHTNING_PRECISION = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
PLAIN_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def split_options(argv: list[str], names: tuple[str, ...]) -> tuple[dict, list[str]]:
    """(the benchmark's own `name=value` options, the train.py overrides)."""
    for arg in argv:
        if arg.startswith("-") or arg in names:  # (`--help` is run's)
            raise UserInputError(f"{arg}: give key=value arguments, the benchmark's own ({', '.join(names)}) and "
                                 "train.py's overrides; --help shows the usage")
        key = arg.split("=", 1)[0].lstrip("+~")
        near = [] if key in names or "." in key else difflib.get_close_matches(key, names, n=1, cutoff=0.75)
        if near and not is_train_setting(key):  # `step=5`: Hydra would advise +step=5
            raise UserInputError(f"{arg}: {key} is neither this benchmark's option nor train.py's; did you mean "
                                 f"{near[0]}?")
    options = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in names)
    if options.get("out"):  # a missing folder, a folder, a run's own file: said now, not after minutes of measuring
        check_out(options["out"], {}, out_name="benchmark.json")
    return options, [a for a in argv if a.split("=", 1)[0] not in options]


def is_train_setting(key: str) -> bool:
    """A top-level key of train.py's config (`seed`) or a config group (`model`)."""
    return (CONFIGS / key).is_dir() or key in OmegaConf.load(CONFIGS / "train.yaml")


def whole_option(options: dict, key: str, default: int, least: int) -> int:
    """`key=N` as a whole number >= least (`steps=abc`, `steps=0`: one line)."""
    value = options.get(key, default)
    try:
        value = int(value)
    except ValueError:
        raise UserInputError(f"{key}={value}: give a whole number >= {least}") from None
    check_number(key, value, least, whole=True)
    return value


def number_list(options: dict, key: str) -> list[float]:
    """`key=[0.93,0.94]` as numbers."""
    value = options.get(key, "[]")
    try:
        return [float(t) for t in value.strip("[]").split(",") if t.strip()]
    except ValueError:
        raise UserInputError(f"{key}={value}: give a list of numbers, e.g. {key}=[0.93,0.94]") from None


def train_config(overrides: list[str]) -> DictConfig:
    """train.py's config for these overrides, checked first as train.py checks them (an unknown choice, a misspelt
    key, a bad value: one line). `trainer.NAME=` sets any Trainer argument, as in train.py."""
    overrides = trainer_arguments(overrides)
    check_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides + ["paths.output_dir=/tmp/redes-benchmark"])
    precision = str(cfg.trainer.get("precision", "32-true"))
    if LIGHTNING_PRECISION.get(precision, precision) not in PLAIN_PRECISIONS:
        raise UserInputError(f"trainer.precision={precision}: the benchmarks' plain-PyTorch loop runs "
                             f"{', '.join(PLAIN_PRECISIONS)} as Lightning does; give one of those")
    return cfg


def run(main: Callable[[list[str]], tuple[dict, str | None]]) -> None:
    """Run a benchmark's `main(argv) -> (result, out)`: print its JSON and save it to `out`, or print the error line
    of bad input and exit 2."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(sys.modules[main.__module__].__doc__)
        return
    try:
        result, out = main(sys.argv[1:])
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2))
    if out:
        write_json(out, result)  # whole or not at all, as eval.py's out=


def at_least(cast: type, least: float, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse `type`: a number of that kind >= least (> least when not inclusive)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not (value >= least if inclusive else value > least):
            kind = "a whole number" if cast is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r}: give {kind} {'>=' if inclusive else '>'} {least}")
        return value
    return parse
