"""Does a configured object take these arguments? A config section (`data`, `model.net`, `callbacks.NAME`,
`trainer`, `optimizer`) against the parameters and type hints of the class it builds, so `data.val_size=abc` or
`+callbacks.early_stopping.pacience=3` is one line naming the setting, not a failure halfway through a run."""
import difflib
import inspect
import logging
import types
import typing

import lightning as L
from hydra.utils import get_object as hydra_get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from data import UserInputError


def get_object(target: str):
    """Hydra's get_object, without the three lines it logs before raising for a target that cannot be imported:
    the caller's one-line error (or instantiate's) says it."""
    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        return hydra_get_object(target)
    finally:
        logger.disabled = disabled


def admits(value, hint) -> bool:
    if hint is typing.Any or value is None and type(None) in typing.get_args(hint):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[int], int | None
        return any(admits(value, h) for h in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]  # list[str], tuple[int, ...]: each item's type
        return isinstance(value, (list, tuple, ListConfig)) and (
            len(inner) != 1 or all(admits(item, inner[0]) for item in value))
    if origin is dict or hint is dict:
        return isinstance(value, (dict, DictConfig))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:  # true is no count (Python's bool is an int)
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, (dict, DictConfig))
    if isinstance(hint, type):
        return isinstance(value, hint) or isinstance(value, (dict, DictConfig))  # a dict: Hydra builds the object
    return True  # a hint we cannot judge


def check_trainer_args(trainer_cfg: DictConfig) -> None:
    """`trainer.max_epochs=abc` -> one line naming the argument and the type it takes."""
    hints = typing.get_type_hints(L.Trainer.__init__)
    for key, value in OmegaConf.to_container(trainer_cfg, resolve=False).items():
        if key.startswith("_") or isinstance(value, str) and "${" in value:  # an interpolation: its value is Hydra's
            continue
        if key not in hints:  # e.g. +trainer.max_epoch=3 (without the +, models/cli.py's trainer_arguments says it)
            raise not_a_trainer_argument(key)
        if not admits(value, hints[key]):
            raise UserInputError(f"trainer.{key}={value!r} has the wrong type: Trainer takes {hint_name(hints[key])}")


def hint_name(hint) -> str:
    """int, Optional[int], Literal['step', 'epoch']: a type hint as the user would write it."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


# Classes that hand their `**kwargs` to an object they build, not to a base class: that object's arguments (less
# those the class sets itself) are theirs too. TensorBoardLogger(..., **kwargs) -> SummaryWriter(log_dir, **kwargs).
KWARGS_BUILD = {"lightning.pytorch.loggers.tensorboard.TensorBoardLogger":
                ("torch.utils.tensorboard.SummaryWriter", {"log_dir"})}


def constructor_arguments(cls: type) -> tuple[dict, dict, bool]:
    """The parameters and type hints of `cls(...)`, following `**kwargs` up to the base class they are passed to
    (ShakespeareDataModule(val_plays, **batching) -> CharDataModule(seq_len, batch_size, ...)) or the object built
    with them (KWARGS_BUILD); and whether it still takes any keyword in the end."""
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)  # `kwargs` is no keyword
    if not isinstance(cls, type):  # a function that builds the object (models.lstm.build)
        own = inspect.signature(cls).parameters
        return ({k: p for k, p in own.items() if p.kind not in variadic}, typing.get_type_hints(cls),
                any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()))
    parameters, hints, open_ended = {}, {}, True
    inits = [vars(klass)["__init__"] for klass in cls.__mro__ if "__init__" in vars(klass)]
    target, set_by_cls = KWARGS_BUILD.get(f"{cls.__module__}.{cls.__qualname__}", (None, ()))
    if target:
        inits = [inits[0], get_object(target).__init__]
    for init in inits:
        own = inspect.signature(init).parameters
        parameters = {**{k: p for k, p in own.items() if k != "self"}, **parameters}
        hints = {**typing.get_type_hints(init), **hints}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            open_ended = False
            break
    parameters = {k: p for k, p in parameters.items() if k not in set_by_cls and p.kind not in variadic}
    return parameters, hints, open_ended


def check_object_args(key: str, node: DictConfig) -> None:
    """`callbacks.early_stopping.patience=abc`, `data.val_size=abc`, `model.net.kernel_size=1.5` -> one line naming
    the setting and the type its class takes (Lightning would keep a string patience and fail at the first epoch
    without improvement; a data module would fail halfway through reading its files); `+callbacks.x.pacience=3`
    -> one line naming the class's arguments."""
    if not isinstance(node, DictConfig):
        return
    target = OmegaConf.select(node, "_target_", throw_on_resolution_failure=False)
    if not isinstance(target, str):
        return
    try:
        cls = get_object(target)
    except Exception as err:  # Hydra's message would be a page
        cause = err.__cause__ or err
        missing = getattr(cause, "name", None) if isinstance(cause, ModuleNotFoundError) else None
        if missing and (target == missing or target.startswith(f"{missing}.")):  # a misspelt module or class
            raise UserInputError(f"{key}._target_={target}: no such class; see configs/{key.split('.')[0]}/ for the "
                                 "ones this project has") from None
        problem = " ".join(f"{type(cause).__name__}: {cause}".split())  # e.g. a SyntaxError in the user's module
        raise UserInputError(f"{key}._target_={target}: cannot import it ({problem})") from None
    check_arguments(key, cls, OmegaConf.to_container(node, resolve=False))


def check_arguments(key: str, cls: type, values: dict) -> None:
    """`values` (a config section's keys) against `cls(...)`'s parameters and type hints."""
    try:
        parameters, hints, open_ended = constructor_arguments(cls)
    except Exception:  # hints this Python cannot evaluate
        return
    name_of = cls.__name__ if isinstance(cls, type) else f"{cls.__module__}.{cls.__name__}"  # a function: its module
    for name, value in values.items():
        if name.startswith("_") or isinstance(value, str) and "${" in value:  # an interpolation: Hydra's to judge
            continue
        if name not in parameters and not open_ended:
            near = difflib.get_close_matches(name, list(parameters), n=3, cutoff=0.8)  # a misspelling
            other = ", or pick the choice it was set for" if key in ("data", "model.net") else ""
            raise UserInputError(f"{key}.{name} is not an argument of {name_of}; "
                                 + (f"did you mean {', '.join(near)}?" if near
                                    else f"drop it (~{key}.{name} drops one that a config sets){other}"))
        if name in hints and not admits(value, hints[name]):
            raise UserInputError(f"{key}.{name}={value!r} has the wrong type: {name_of} takes "
                                 f"{hint_name(hints[name])}")


def not_a_trainer_argument(name: str) -> UserInputError:
    """The error for a misspelt Trainer argument, with the nearest names."""
    near = difflib.get_close_matches(name, list(inspect.signature(L.Trainer.__init__).parameters), n=3)
    return UserInputError(f"trainer.{name} is not a lightning Trainer argument"
                          + (f"; did you mean {', '.join(near)}?" if near else ""))
