"""Reading what train.py leaves in a run directory, for eval.py, predict.py and the notebooks; and building a
run's data from its config (train.py's too: `instantiate_data`, `prepare_data_once`).

A run directory holds metrics.json, checkpoints/best.ckpt (whose hyperparameters carry the resolved config and the
data's net_kwargs), tensorboard/events.* and, when it came from the command line, .hydra/config.yaml and
.hydra/overrides.yaml. A sweep (`python train.py --multirun ...`) is a folder of run directories.
"""
import json
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import torch
import yaml
from filelock import FileLock, Timeout
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from data import UserInputError, class_names
from models.checks import check_data_settings, flatten
from models.recipe import PER_STEP, load_recipe, probabilities
from models.records import descriptor, read_checkpoint, read_metrics, read_overrides  # noqa: F401 (runs.read_metrics: the notebooks')

# Config keys that differ between runs without being a choice: where files went (the checkpoints' dirpath too), what
# to log, and the checkpoint a resumed run (resume=RUN_DIR) went on from. The callbacks' other settings are choices
# (callbacks.early_stopping.patience=1,6: a sweep over them).
NOT_CHOICES = ("paths.", "logger.", "hydra.", "ckpt_path")


def is_choice(key: str) -> bool:
    return not key.startswith(NOT_CHOICES) and not key.endswith(".dirpath")


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory (one holding metrics.json) at or under `root`, sorted by path."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("metrics.json"))


def failed_runs(root: str | Path) -> dict[str, list[str]]:
    """Run directories under `root` that Hydra started (.hydra/) but that wrote no metrics.json: the jobs of a sweep
    that failed, by path relative to `root`, each with its command-line overrides."""
    root = Path(root)
    return {str(p.parent.relative_to(root)): read_overrides(p.parent)
            for p in sorted(root.rglob(".hydra")) if not (p.parent / "metrics.json").exists()}


def newest_run(root: str | Path) -> Path:
    runs = find_runs(root)
    if not runs:
        raise UserInputError(f"no run directory (one with metrics.json) under {root}/: "
                             "train one with `python train.py`")
    return max(runs, key=lambda run: (run / "metrics.json").stat().st_mtime)


def best_checkpoint(run: str | Path) -> Path:
    run = Path(run)
    metrics = read_metrics(run) if (run / "metrics.json").is_file() else {}
    return run / metrics.get("best_checkpoint", "checkpoints/best.ckpt")


def first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(2)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no checkpoint at {path}: give a .ckpt written by train.py (RUN/checkpoints/best.ckpt)")
    try:
        checkpoint = read_checkpoint(path)
    except Exception as err:
        start = None if zipfile.is_zipfile(path) else first_bytes(path)  # the formats torch.save writes: zip, pickle
        if start == b"":
            why = "an empty file, e.g. a copy that failed: copy it again"
        elif start == b"PK":  # a zip without its central directory
            why = "a truncated or corrupt zip archive, e.g. a copy cut short: copy it again"
        elif start is not None and start[:1] != b"\x80":
            why = "not a file torch.save wrote: neither a zip archive nor a pickle"
        elif isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
            why = "it holds objects other than tensors and plain containers, and loading those could run code"
        elif isinstance(err, pickle.UnpicklingError) and "WeightsUnpickler error:" in str(err):
            cause = str(err).split("WeightsUnpickler error:")[1].strip().split("\n\n")[0]  # after torch's advice
            why = f"UnpicklingError: {cause}"
        else:
            why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'unreadable'}"
        raise UserInputError(f"{path} is not a readable checkpoint ({why})") from err
    if not isinstance(checkpoint, dict) or "config" not in checkpoint.get("hyper_parameters", {}):
        raise UserInputError(f"{path} is not a checkpoint written by train.py (no config in its hyperparameters)")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserInputError(f"{path} is not a checkpoint written by train.py (no network weights: state_dict)")
    return checkpoint


def read_config(run: str | Path) -> dict:
    """The run's config as Hydra saved it (.hydra/config.yaml, unresolved), else the resolved one in best.ckpt."""
    saved = Path(run) / ".hydra" / "config.yaml"
    if saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    return load_checkpoint(best_checkpoint(run))["hyper_parameters"]["config"]


# -- TensorBoard events -----------------------------------------------------------------------------------
def scalars(run: str | Path) -> pd.DataFrame:
    """Every scalar TensorBoard holds for the run: columns tag, step, value (a resumed run: the newest value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Path(run)
    folders = sorted({p.parent for p in run.rglob("events.out.tfevents.*")})
    rows = []
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        rows += [(tag, e.step, e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    table = pd.DataFrame(rows, columns=["tag", "step", "value"])
    return table.drop_duplicates(["tag", "step"], keep="last").reset_index(drop=True)


def epoch_curves(run: str | Path) -> pd.DataFrame:
    """One row per epoch (1 = the first epoch), one column per epoch-level train/ and val/ metric."""
    table = scalars(run)
    epochs = table[table.tag == "epoch"].set_index("step")["value"]  # Lightning logs the epoch beside every metric
    per_epoch = table[table.tag.str.match(r"(train|val)/") & ~table.tag.str.endswith(("_step", "_best"))
                      & ~table.tag.isin(PER_STEP)]
    per_epoch = per_epoch.assign(epoch=per_epoch.step.map(epochs).astype("Int64") + 1).dropna(subset=["epoch"])
    curves = per_epoch.pivot_table(index="epoch", columns="tag", values="value", aggfunc="last")
    curves.columns.name = None
    return curves


def checkpoint_epoch(path: str | Path) -> int:
    """The epoch (1 = the first) whose weights the checkpoint holds."""
    return int(load_checkpoint(path)["epoch"]) + 1


# -- data and predictions -----------------------------------------------------------------------------------
def partial_test_limit(config: dict) -> int | float | None:
    """The run's trainer.limit_test_batches where it scored only part of the test split (a whole number counts
    batches: 1 is one batch, where 1.0 is all of them), else None."""
    limit = config["trainer"].get("limit_test_batches")
    return None if limit is None or isinstance(limit, float) and limit >= 1 else limit


def reference_metrics(datamodule, trainer) -> dict:
    """Figures to read the test metrics against, where the data knows them (the Bayes-optimal AUROC of generated
    clicks, a unigram model's loss), over the test batches `trainer.test` just scored (trainer.limit_test_batches)."""
    if not hasattr(datamodule, "reference_metrics"):
        return {}
    scored, batches = int(trainer.num_test_batches[0]), len(trainer.test_dataloaders)
    # (under DDP each process scores its own shard of the rows: as many rows, from the start of the split)
    return datamodule.reference_metrics(batches=None if scored >= batches else scored * trainer.world_size)


def instantiate_data(config: DictConfig):
    """Hydra's instantiate for a `data` config. A DataModule checks its settings when built (a column named twice,
    fractions that add up to more than 1) and raises UserInputError; Hydra wraps whatever a constructor raises in
    a several-line InstantiationException, which is unwrapped here into the one-line error it is."""
    try:
        return instantiate(config)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):
            raise err.__cause__ from None
        if isinstance(err.__cause__, TypeError) and "unexpected keyword argument" in str(err.__cause__):
            raise UserInputError(f"data: {err.__cause__}: drop that setting ({config.get('_target_')} takes the "
                                 "ones in its configs/data/ file)") from None
        if isinstance(err.__cause__, TypeError) and "got multiple values" in str(err.__cause__):  # label_column
            raise UserInputError(f"data: {err.__cause__}: drop that setting ({config.get('_target_')} sets it "
                                 "itself)") from None
        raise


def prepare_data_once(datamodule) -> None:
    """Download or convert the data in one process of this machine at a time: every DDP rank, every job of a
    parallel sweep and an eval.py beside a training run build the data, and two processes writing one download
    would corrupt it. The first does the work under the lock; the others then find it done (prepare_data is a no-op
    on prepared data, so waiting costs nothing after the first run). One lock per user of the machine, in the
    temporary folder: the data's folder may not exist yet or be read-only."""
    # Per user: /tmp is shared, and another user's lock file is not writable.
    name = f"redes-prepare-data-{os.getuid()}.lock" if hasattr(os, "getuid") else "redes-prepare-data.lock"
    lock = FileLock(str(Path(tempfile.gettempdir()) / name))
    try:
        lock.acquire(timeout=0)
    except Timeout:  # a wait of minutes (a first Criteo conversion elsewhere) should not look like a hang
        print(f"waiting for another process that prepares data (lock {lock.lock_file})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        datamodule.prepare_data()
    finally:
        lock.release()


def instantiate_datamodule(data_config: dict, overrides: list[str] | tuple[str, ...] = ()):
    """The run's DataModule from its stored `data` config, not yet set up. `overrides`: `data.KEY=VALUE` or
    `paths.data_dir=DIR`."""
    config = OmegaConf.create(data_config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not (key.startswith("data.") or key == "paths.data_dir"):
            raise UserInputError(f"{item!r}: only data.KEY=VALUE and paths.data_dir=DIR change the data")
        path = "data_dir" if key == "paths.data_dir" else key[len("data."):]
        if OmegaConf.select(config, path, default=KeyError) is KeyError:
            files = [k for k in sorted(flatten(data_config)) if k in ("path", "cache_dir")]
            hint = (f" (paths.data_dir moves image datasets; this data's files are data.{', data.'.join(files)})"
                    if key == "paths.data_dir" and files else "")
            raise UserInputError(f"{key}: not a setting of this run's data ({config.get('_target_')}){hint}; "
                                 f"its settings: {', '.join(sorted(flatten(data_config)))}")
        OmegaConf.update(config, path, yaml.safe_load(value))
    if overrides:  # the stored settings passed train.py's checks; changed ones pass them too
        check_data_settings(config)
    return instantiate_data(config)


# data.KEY settings that decide which rows are the test split, or what is fitted on the training split: a
# checkpoint is scored on the split it was tested on, with what it was fitted with, so these cannot change there.
SPLIT_SETTINGS = ("split_seed", "val_size", "train_size", "val_fraction", "test_fraction", "val_plays", "test_plays",
                  "rows", "seed", "name", "label_column", "numeric_columns", "categorical_columns",
                  "timestamp_columns", "timestamp_format", "log_columns", "min_count", "hash_buckets")


def setting(override: str) -> str:
    """`data.KEY.MORE=VALUE` -> KEY: an element of a list setting (`data.numeric_columns.0=b`) is that setting."""
    return override.partition("=")[0].removeprefix("data.").split(".")[0]


def as_trained(data_config: dict, override: str) -> bool:
    """Whether `data.KEY=VALUE` leaves the run's stored data config as it was (the value it was trained with, of the
    same type: 5000.0 is not a val_size of 5000), e.g. a training command's data.* settings given again."""
    key, _, value = override.partition("=")
    config = OmegaConf.create(data_config)
    path = key.removeprefix("data.")
    if OmegaConf.select(config, path, default=KeyError) is KeyError:
        return False
    try:
        changed = config.copy()
        OmegaConf.update(changed, path, yaml.safe_load(value))
    except Exception:  # (a value YAML cannot read: instantiate_datamodule says so)
        return False
    return json.dumps(OmegaConf.to_container(changed)) == json.dumps(OmegaConf.to_container(config))


def refuse_split_settings(overrides: list[str] | tuple[str, ...], data_config: dict | None = None) -> list[str]:
    """Scoring or predicting with a checkpoint keeps its split, columns and encoders: overriding SPLIT_SETTINGS would
    score rows it trained on, or feed its network other columns than it learned (scaled with the saved statistics).
    One that gives the value the run was trained with (`data_config`, the checkpoint's) changes nothing and is
    dropped: the overrides left are returned."""
    kept = []
    for override in overrides:
        if setting(override) not in SPLIT_SETTINGS:
            kept.append(override)
        elif data_config is None or not as_trained(data_config, override):
            raise UserInputError(f"{override}: this setting decides which rows are the test split or what is fitted "
                                 "on the training split (normalization, encoders, the columns), which stay as the "
                                 f"checkpoint was trained; train a run with {override} to score another split")
    return kept


def build_datamodule(data_config: dict, overrides: list[str] | tuple[str, ...] = (), trained_on: dict | None = None):
    """The run's DataModule set up for fit (normalization statistics, vocabulary, encoders all come from the
    training split). `trained_on`, a loaded checkpoint: overrides of SPLIT_SETTINGS are refused, and so is data unlike
    what its network learned from (overrides that point at another file with another alphabet, other categories or
    other statistics, another image dataset): what is fitted again here must be what the checkpoint was fitted with."""
    if trained_on is not None:
        overrides = refuse_split_settings(overrides, data_config)
    datamodule = instantiate_datamodule(data_config, overrides)
    prepare_data_once(datamodule)
    datamodule.setup("fit")
    if trained_on is not None:
        saved = trained_on.get(type(datamodule).__qualname__) or {}
        names = learned_names(saved)  # (what an older checkpoint saved: no more is compared)
        given = {key: value for key, value in learned_names(datamodule.state_dict()).items() if key in names}
        differences = (data_differences(trained_on["hyper_parameters"].get("net_kwargs", {}), datamodule.net_kwargs)
                       or data_differences(names, given)
                       or fitted_differences(saved, datamodule.state_dict()))
        if differences:
            changed = f" ({', '.join(overrides)})" if overrides else ""
            raise UserInputError(f"the checkpoint was trained on other data than this{changed}: {differences}; "
                                 "give the data it was trained on")
    return datamodule


def learned_names(state: dict) -> dict:
    """From a DataModule's state_dict, what the network's inputs and outputs mean beyond their sizes: the class
    names (images), each categorical column's levels (tables), the training text (a language model's)."""
    names = {"classes": list(state["classes"])} if "classes" in state else {}
    for column, levels in state.get("ids", {}).get("vocab", {}).items():
        names[f"levels of {column}"] = list(levels)
    if "train_sha256" in state:  # a text's: the same alphabet is not the same text
        names["training text"] = f"sha256 {state['train_sha256'][:12]}"
    return names


def fitted_differences(saved: dict, given: dict, prefix: str = "") -> str:
    """Which numbers fitted on the training split (a DataModule's state_dict: image mean and std, a scaler's mean
    and std, bucket counts) differ between a checkpoint's and these, e.g. "scaler.mean"; "" when they agree. Close
    is equal: a sum over many numbers can end in other last bits on another machine."""
    differ = []
    for key in sorted(set(saved) & set(given)):
        a, b = saved[key], given[key]
        if isinstance(a, dict) and isinstance(b, dict):
            differ.append(fitted_differences(a, b, f"{prefix}{key}."))
        elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            same = a.shape == b.shape and torch.allclose(a.double().cpu(), b.double().cpu(), rtol=1e-4, atol=1e-6)
            differ.append("" if same else f"{prefix}{key}")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and a != b:
            differ.append(f"{prefix}{key} {a} there, {b} here")
        elif isinstance(a, str) and isinstance(b, str) and a != b:  # a date format
            differ.append(f"{prefix}{key} {a!r} there, {b!r} here")
    differ = [d for d in differ if d]
    return f"{', '.join(differ)} fitted on the training split" if differ and not prefix else ", ".join(differ)


def data_differences(saved: dict, given: dict) -> str:
    """What differs between the net_kwargs a network was sized by (a checkpoint's) and another data's, e.g.
    "in_channels 1 there, 3 here", "vocab with other entries"; "" when they agree."""
    saved, given = (json.loads(json.dumps(kwargs, default=list)) for kwargs in (saved, given))  # tuples as lists

    def shown(value) -> str:
        return f"{len(value)} entries" if isinstance(value, list) and len(value) > 4 else repr(value)

    return ", ".join(f"{key} {shown(saved.get(key))} there, {shown(given.get(key))} here"
                     if shown(saved.get(key)) != shown(given.get(key)) else f"{key} with other entries"
                     for key in sorted(set(saved) | set(given)) if saved.get(key) != given.get(key))


def fitted_datamodule(checkpoint: dict, overrides: list[str] | tuple[str, ...] = ()):
    """The run's DataModule holding what it fitted on the training split, read from the checkpoint (Lightning
    saves a DataModule's state_dict there) without touching the data; a DataModule that saved nothing is set up
    on its training split instead. Overrides of SPLIT_SETTINGS are refused."""
    config = checkpoint["hyper_parameters"]["config"]["data"]
    overrides = refuse_split_settings(overrides, config)
    datamodule = instantiate_datamodule(config, overrides)
    if state := checkpoint.get(type(datamodule).__qualname__):
        datamodule.load_state_dict(state)
        return datamodule
    return build_datamodule(config, overrides)


@torch.no_grad()
def predict_split(ckpt_path: str | Path, split: str = "test", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The checkpoint's predictions on a whole split: inputs (the first input tensor: images, or the DNN's scaled
    numeric columns without its categorical ids), targets, probabilities (N, C) or (N,), classes."""
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r}; choose val or test")
    recipe = load_recipe(str(ckpt_path)).eval()
    task = recipe.hparams.task
    if task == "lm":
        raise ValueError("predict_split is for classifiers; a language model's outputs are text (generate.py)")
    datamodule = build_datamodule(recipe.hparams.config["data"], overrides, trained_on=load_checkpoint(ckpt_path))
    datamodule.setup(split)
    batches = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    inputs, targets, probs = [], [], []
    for *x, y in batches:
        logits = recipe(*x).float()
        probs.append(probabilities(logits, task))
        inputs.append(x[0])
        targets.append(y)
    num_classes = recipe.hparams.net_kwargs.get("num_classes", 2)
    return {"task": task, "inputs": torch.cat(inputs), "targets": torch.cat(targets), "probs": torch.cat(probs),
            "classes": class_names(datamodule, num_classes),
            "mean": getattr(datamodule, "mean", None), "std": getattr(datamodule, "std", None)}


# -- comparing runs -------------------------------------------------------------------------------------
def compare(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per run under `root`: the config keys that differ between the runs, then the results."""
    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise UserInputError(f"no run directory (one with metrics.json) under {root}/")
    configs = {run: {k: v for k, v in flatten(read_config(run)).items() if is_choice(k)}
               for run in runs}
    keys = sorted(set().union(*configs.values()))
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    rows = []
    for run in runs:
        metrics = read_metrics(run)
        results = {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}
        rows.append({"run": str(run.relative_to(root)) if run != root else ".",
                     **{k: configs[run].get(k) for k in varying}, **results,
                     **{k: metrics.get(k) for k in ("epochs", "stopped_early", "stopped_by", "train_seconds")}})
    return pd.DataFrame(rows).set_index("run"), varying


# -- command lines of eval.py and predict.py ----------------------------------------------------------------
def parse_arguments(argv: list[str], usage: str, required: tuple[str, ...], optional: tuple[str, ...] = (),
                    out_name: str = "out.csv") -> tuple[dict, list[str], dict]:
    """`key=value` arguments -> (the script's own options, data overrides, trainer.* options). `out_name`: the file
    name an error about `out=` suggests (what the command writes)."""
    options, data, trainer = {}, [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserInputError(f"{arg!r} is not key=value; usage: {usage}")
        if key.startswith("data.") or key == "paths.data_dir":
            data.append(arg)
        elif key.startswith("trainer."):
            trainer[key[len("trainer."):]] = yaml.safe_load(value)
        elif key == "out" and value and yaml.safe_load(value) is None:  # out=null: as when out= is left out (it
            options.pop(key, None)                                         # wrote a file named "null")
        elif key in required + optional:
            options[key] = value
        else:
            raise UserInputError(f"unknown argument {key!r}; usage: {usage}")
    if missing := [k for k in required if k not in options]:
        raise UserInputError(f"missing {', '.join(f'{k}=...' for k in missing)}; usage: {usage}")
    if out := options.get("out"):
        check_out(out, {key: Path(options[key]) for key in ("ckpt_path", "input") if options.get(key)}, out_name)
    return options, data, trainer


RUN_FILES = ("metrics.json", "train.log", ".hydra", "checkpoints", "tensorboard")  # what train.py writes in a run


def check_out(out: str, read: dict[str, Path], out_name: str = "out.csv") -> None:
    """eval.py's and predict.py's `out=FILE`, before the work: a file that can be written, and not one this command
    reads, a checkpoint, or one of a training run's own files (its metrics.json is the run's record)."""
    path = Path(out).expanduser()
    if (fd := descriptor(path)) is not None:  # /dev/stdout, /dev/fd/N: written through the descriptor
        try:
            os.fstat(fd)
        except OSError as err:
            raise UserInputError(f"out={out}: cannot write there ({err.strerror}); give a file you can write") from None
        return
    if not path.parent.is_dir():
        raise UserInputError(f"out={out}: no folder {path.parent}; create it first")
    if path.is_dir():
        raise UserInputError(f"out={out} is a folder; give a file name in it, e.g. out={Path(out) / out_name}")
    if path.is_file():  # never write over what this command reads, nor a checkpoint, nor a run's record
        if reads := [key for key, p in read.items() if p.expanduser().resolve() == path.resolve()]:
            raise UserInputError(f"out={out} is the {reads[0]} this command reads: give another file name for the "
                                 "output")
        if path.suffix == ".ckpt":
            raise UserInputError(f"out={out} is a checkpoint: give another file name for the output")
        for run in path.resolve().parents:
            if (run / ".hydra" / "config.yaml").is_file():
                part = path.resolve().relative_to(run).parts[0]
                if part in RUN_FILES or part == "metrics_eval.json" != out_name:  # (eval.py's record: eval.py's own)
                    writer = "eval.py" if part == "metrics_eval.json" else "train.py"
                    raise UserInputError(f"out={out} is a file {writer} wrote for the run in {run} ({part}): give "
                                         f"another file name, e.g. out={run / out_name}")
                break
    if path.exists() and not path.is_file():  # /dev/stdout, a pipe, a device: written to directly (opening a pipe
        if not os.access(path, os.W_OK):      # now would end its reader's input before the output came)
            raise UserInputError(f"out={out}: cannot write there; give a file you can write")
        return
    if why := unwritable(path):
        raise UserInputError(f"out={out}: cannot write there ({why}); give a file you can write")


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (found out now, not after the work), or None; a file made to find out is
    removed."""
    target = path.resolve()  # what is written: a symlink's target (a link to no file yet too), the link kept
    existed = target.exists()
    try:
        with open(target, "a"):
            pass
    except OSError as err:
        return err.strerror
    finally:
        if not existed:
            target.unlink(missing_ok=True)
    return None
