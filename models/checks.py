"""Checks of the composed config, before anything is built: each bad setting ends the command with one line naming
it and the fix (train.py prints `error: ...`)."""
import datetime
import difflib
import math
import re
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, ListConfig, OmegaConf

from data import UserInputError, check_folder
from models.recipe import OPTIMIZERS, epoch_metric_names, make_optimizer, metric_mode
from models.schedules import SCHEDULE_SETTINGS, SCHEDULERS
from models.signatures import check_arguments, check_object_args, check_trainer_args, get_object

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config as the dotted keys of the command line."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class WholeSweepError(UserInputError):
    """An error every job of a sweep would meet: the sweep stops at the first (other job errors skip that job)."""


def monitorable(task: str) -> list[str]:
    """The metrics a run of `task` logs once an epoch, which a callback can watch: validation's, then training's."""
    return epoch_metric_names(task, "val") + epoch_metric_names(task, "train")


def check_monitor(monitor: DictConfig, task: str) -> None:
    """`monitor.metric` picks the best checkpoint, stops early and is what a sweep optimizes: it must be logged."""
    names = monitorable(task)
    if monitor.metric not in names:
        raise WholeSweepError(f"monitor.metric={monitor.metric} is not a metric this {task} run logs; "
                              f"choose one of {', '.join(names)}")
    if monitor.mode not in ("min", "max"):
        raise WholeSweepError(f"monitor.mode={monitor.mode} is not a mode; choose min or max")
    check_mode("monitor.metric", monitor.metric, "monitor.mode", monitor.mode)


def check_mode(metric_key: str, metric: str, mode_key: str, mode: str) -> None:
    """A data config sets `monitor.mode` for its own metric (max for val/acc): changing only the metric
    (`monitor.metric=val/loss`) would keep the epoch with the highest loss and stop on its improvements."""
    if mode in ("min", "max") and mode != metric_mode(metric):
        raise WholeSweepError(f"{metric_key}={metric} is better when {'lower' if mode == 'max' else 'higher'}, but "
                              f"{mode_key}={mode} would keep its worst epoch: add {mode_key}={metric_mode(metric)}")


def check_monitors(cfg: DictConfig) -> None:
    """monitor.* and the callbacks' own monitors, against the metrics the data's task logs."""
    if not isinstance(cfg.get("monitor"), DictConfig) or None in (cfg.monitor.get("metric"), cfg.monitor.get("mode")):
        raise WholeSweepError("monitor is required: monitor.metric and monitor.mode pick the best checkpoint and stop "
                              "early, e.g. monitor.metric=val/loss monitor.mode=min")
    try:
        task = get_object(cfg.data._target_).task
    except Exception:  # a misspelt _target_ (check_settings names it), or a data module of the user's without a task
        return
    check_monitor(cfg.monitor, task)
    check_callback_monitors(cfg.get("callbacks"), task)


def check_callback_monitors(callbacks: DictConfig | None, task: str) -> None:
    """A callback given its own metric (`callbacks.early_stopping.monitor=val/acc`, instead of following
    monitor.metric) must watch one the run logs too: Lightning would say so only after the first epoch."""
    names = monitorable(task)
    for name, node in (callbacks or {}).items():
        metric = node.get("monitor") if isinstance(node, DictConfig) else None  # (not a callback: check_settings)
        if metric is not None and metric not in names:  # an interpolation resolves to monitor.metric: checked
            raise WholeSweepError(f"callbacks.{name}.monitor={metric} is not a metric this {task} run logs; "
                                  f"choose one of {', '.join(names)}")
        if metric is not None:  # without a mode of its own: Lightning's default, min
            check_mode(f"callbacks.{name}.monitor", metric, f"callbacks.{name}.mode", node.get("mode") or "min")


def check_model_reads_data(cfg: DictConfig, choices: dict | None = None) -> None:
    """`model=cnn data=text`: refused before the data is read, naming the models that do read it. A network says
    which kinds of data it reads (`reads`), a data module which kind it gives (`kind`). `choices` (e.g. {"model":
    "cnn"}), to name them in the message: Hydra's, by default."""
    try:
        network, data = get_object(cfg.model.net._target_), get_object(cfg.data._target_)
    except (ImportError, AttributeError, ValueError):  # a misspelt _target_: instantiating it says so
        return
    reads, kind = getattr(network, "reads", None), getattr(data, "kind", None)
    if reads is None or kind is None or kind in reads:
        return
    targets = {path.stem: OmegaConf.load(path).model.net._target_ for path in (CONFIGS / "model").glob("*.yaml")}
    readers = sorted(name for name, target in targets.items() if kind in getattr(get_object(target), "reads", ()))
    model, data_choice = cfg.model.net._target_, cfg.data._target_
    if choices is None and HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    if choices is not None:  # the command's words, unless model.net._target_ or data._target_ was changed
        if targets.get(choices.get("model")) == model:
            model = f"model={choices.get('model')}"
        data_file = CONFIGS / "data" / f"{choices.get('data')}.yaml"  # its _target_, or its defaults' (tinyshakespeare)
        if data_file.is_file() and OmegaConf.load(data_file).get("data", {}).get("_target_") in (None, data_choice):
            data_choice = f"data={choices.get('data')}"
    raise UserInputError(f"{model} reads {' or '.join(reads)}, and {data_choice} is {kind}: "
                         f"for {kind} choose {' or '.join(f'model={m}' for m in readers) or 'another model'}")


def check_single_process_sweep(trainer: L.Trainer) -> None:
    """Lightning starts each extra DDP rank by re-running the command line, which under `-m` is the whole sweep
    again (Lightning dropped Hydra multirun support from its launcher, PR #15737): sweeps run one process per job."""
    if trainer.world_size > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise multi_process_sweep(trainer.world_size)


def multi_process_sweep(processes: int) -> WholeSweepError:
    return WholeSweepError(f"-m with {processes} DDP processes per run is not supported: sweep with one process per "
                           "run (drop trainer=ddp...), or start each DDP run on its own")


def check_sweep(cfg: DictConfig) -> None:
    """Before a `-m` sweep's first job, what every job would meet: the monitored metrics, and DDP (more than one
    process per job, where the config says how many: trainer.devices as a count or a list, times num_nodes)."""
    check_monitors(cfg)
    devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes") or 1
    count = len(devices) if isinstance(devices, (list, ListConfig)) else devices if isinstance(devices, int) else 1
    if isinstance(nodes, int) and count > 0 and count * nodes > 1:  # devices=-1 (all): the job finds out
        raise multi_process_sweep(count * nodes)


# Numbers of the recipe, the networks, the data and the callbacks: check_number's bounds, and whether null is a
# value (top_k: null = no cut). Keys a run's config lacks (another data module's) are skipped.
NUMBERS = {
    "model.lr": dict(least=0, inclusive=False), "model.weight_decay": dict(least=0), "model.l1": dict(least=0),
    "model.label_smoothing": dict(least=0, most=1, most_inclusive=False),  # 1 would leave no trace of the targets
    "model.net.dropout": dict(least=0, most=1, most_inclusive=False),  # 1 would zero every activation
    "data.batch_size": dict(least=1, whole=True), "data.eval_batch_size": dict(least=1, whole=True),
    "data.hash_buckets": dict(least=1, whole=True), "data.min_count": dict(least=0, whole=True),
    "data.block_rows": dict(least=1, whole=True), "data.chunk_rows": dict(least=1, whole=True),
    "data.max_in_memory_gb": dict(least=0, finite=False),  # inf: always in memory
    "data.seed": dict(least=0, whole=True),  # numpy's default_rng: any whole number >= 0
    "data.split_seed": dict(least=0, most=2**63 - 1, whole=True),  # a torch.Generator's seed
    "callbacks.model_summary.max_depth": dict(least=-1, whole=True),  # -1: every layer, 0: none
    "callbacks.early_stopping.patience": dict(least=0, whole=True),  # epochs without improvement
    "callbacks.early_stopping.min_delta": dict(least=0),
    # sampled one character at a time at every validation: 10,000 take seconds, a mistyped 100,000,000 hours
    "callbacks.text_samples.length": dict(least=1, most=10_000, whole=True),
    "callbacks.text_samples.temperature": dict(least=0),
    "callbacks.text_samples.top_k": dict(least=1, whole=True, nullable=True),
}


MISSING = object()
TIMEDELTA_KEYS = {"days", "seconds", "microseconds", "milliseconds", "minutes", "hours", "weeks"}  # max_time={...}


def budget_seconds(max_time) -> float | None:
    """trainer.max_time as Lightning's Timer reads it ("DD:HH:MM:SS", or a dict of timedelta's arguments) in seconds;
    None for anything else."""
    if isinstance(max_time, str) and (m := re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", max_time.strip())):
        days, hours, minutes, seconds = map(int, m.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if isinstance(max_time, DictConfig) and set(max_time) <= TIMEDELTA_KEYS and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in max_time.values()):
        return datetime.timedelta(**max_time).total_seconds()
    return None


def check_number(key: str, value, least: float, most: float | None = None, whole: bool = False,
                 inclusive: bool = True, most_inclusive: bool = True, finite: bool = True, other: str = "") -> None:
    """`key=value` is a number (a whole one if `whole`; a finite one if `finite`) in [least, most] (ends open where
    not inclusive); `other` names what else the key takes. A number given as text (what `${oc.env:NAME}` gives) is
    refused with the resolver that reads it as a number."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or not whole)
    if not number or not (value >= least if inclusive else value > least) or most is not None and not (
            value <= most if most_inclusive else value < most) or finite and not math.isfinite(value):
        infinite = finite and isinstance(value, float) and not math.isfinite(value)  # inf, or nan
        kind = "a whole number" if whole else "a finite number" if infinite else "a number"
        low = ">=" if inclusive else ">"
        upper = "" if most is None else f" and {'<=' if most_inclusive else '<'} {most}"
        text = ""
        if isinstance(value, str) and is_number_text(value):
            text = (f" ({value!r} is text: unquote it, or read ${{oc.env:NAME}} as a number with "
                    f"\'{key}=\"${{oc.decode:${{oc.env:NAME}}}}\"\')")
        raise UserInputError(f"{key}={value!r}: give {kind} {low} {least}{upper}{other}{text}")


def is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def check_numbers(cfg: DictConfig, prefix: str = "") -> None:
    """The NUMBERS a config has (those whose keys start with `prefix`) within their bounds."""
    for key, bounds in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=MISSING, throw_on_resolution_failure=False)
        if key.startswith(prefix) and value is not MISSING and not (value is None and bounds.get("nullable")):
            check_number(key, value, **{k: v for k, v in bounds.items() if k != "nullable"})


def check_data_settings(data: DictConfig) -> None:
    """A `data` config on its own (a checkpoint's, with eval.py's or predict.py's `data.KEY=VALUE` overrides): its
    numbers and the types its DataModule takes, as train.py checks them."""
    check_numbers(OmegaConf.create({"data": data}), prefix="data.")
    check_data_path(data)
    check_object_args("data", data)


def check_data_path(data: DictConfig | None) -> None:
    """`data.path=` (empty) would be the current folder, and refused as a folder named `.`; `data.data_dir=` or
    `data.cache_dir=` would put the datasets or Criteo's cache in the current folder (as `paths.data_dir=` did)."""
    if data is not None and data.get("path") == "":
        raise UserInputError("data.path='' names no file: give data.path=FILE")
    for key, default in (("data_dir", "paths.data_dir"), ("cache_dir", "paths.data_dir/criteo_cache")):
        if data is not None and data.get(key) == "":
            raise UserInputError(f"data.{key}= is empty: the data would go in the current folder; give a folder, "
                                 f"or leave it out for the configs' {default}")


# model.compile's values besides true (torch.compile's default) and false: torch.compile's modes. reduce-overhead
# replays the compiled forward and backward as CUDA graphs: one launch for each instead of one per kernel, for a step
# that waits on the host (a small network on a fast GPU); on a CPU it compiles as the default does.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = ("highest", "high", "medium")
RUN_CHECKPOINTS = "${paths.output_dir}/checkpoints"  # configs/callbacks/default.yaml's dirpath


def is_model_checkpoint(target) -> bool:
    try:
        return isinstance(target, str) and issubclass(get_object(target), ModelCheckpoint)
    except Exception:  # a misspelt _target_: check_object_args names it
        return False


def check_run_settings(cfg: DictConfig) -> None:
    """The top-level switches and the Trainer's counts: `seed=-1` or `trainer.accumulate_grad_batches=0` would
    fail deep inside numpy or Lightning, `keep_freed_memory=abc` would count as true."""
    if cfg.get("seed") is None:  # null or deleted: Lightning would seed every run with 0 (a warning aside)
        raise UserInputError("seed=null: give a whole number, seed=N (a run is repeated from its seed; a run saved "
                             "with seed=null was seeded with 0: add seed=0 to resume it)")
    check_number("seed", cfg.seed, 0, 2**32 - 1, whole=True)  # numpy's range
    # switches: true or false; model.compile also takes a torch.compile mode
    for key, modes in (("keep_freed_memory", ()), ("model.compile", COMPILE_MODES), ("model.channels_last", ())):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool) and value not in modes:
            raise UserInputError(f"{key}={value!r}: give true or false"
                                 + (f", or a torch.compile mode ({', '.join(modes)})" if modes else ""))
    if cfg.get("float32_matmul_precision", "high") not in MATMUL_PRECISIONS:
        raise UserInputError(f"float32_matmul_precision={cfg.float32_matmul_precision!r}: give one of "
                             f"{', '.join(MATMUL_PRECISIONS)} (torch.set_float32_matmul_precision's)")
    if (data_dir := OmegaConf.select(cfg, "paths.data_dir", default=None)) is not None:
        check_folder("paths.data_dir", Path(str(data_dir)).expanduser())
    for name, node in (cfg.get("callbacks") or {}).items():  # a ModelCheckpoint's folder (best.ckpt, last.ckpt)
        if not node or not is_model_checkpoint(node.get("_target_")):
            continue
        dirpath = OmegaConf.to_container(node, resolve=False).get("dirpath", RUN_CHECKPOINTS)
        if dirpath != RUN_CHECKPOINTS:  # (null: Lightning's default, under the logger's folder)
            raise UserInputError(f"callbacks.{name}.dirpath={dirpath}: a run's checkpoints are its run directory's "
                                 "checkpoints/, where resume=, eval.py and metrics.json look (and another run's would "
                                 "be overwritten): leave it, and choose the run directory with hydra.run.dir=DIR")
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not isinstance(ckpt_path, str) or ckpt_path == "":  # "": was "no checkpoint at ."
        raise UserInputError(f"ckpt_path={ckpt_path!r}: give a checkpoint file, or `last`")
    trainer = cfg.trainer
    if "logger" in trainer:  # the run's own logger (or none) is handed to the Trainer in its place
        raise UserInputError(f"trainer.logger={trainer.logger!r} is not used: the run's logger is the logger config's "
                             "(configs/logger/): drop it; ~logger runs without one")
    if "callbacks" in trainer:  # likewise the run's callbacks
        raise UserInputError("trainer.callbacks is not used: the run's callbacks are the callbacks config's "
                             "(configs/callbacks/): drop it; +callbacks.NAME._target_=CLASS adds one, "
                             "callbacks.NAME=null drops one")
    for key in ("accumulate_grad_batches", "check_val_every_n_epoch"):
        if trainer.get(key) is not None:
            check_number(f"trainer.{key}", trainer[key], 1, whole=True)
    if trainer.get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", trainer.gradient_clip_val, 0)  # 0: no clipping
    for key in ("max_epochs", "max_steps"):  # -1 (or null for epochs): no limit of that kind
        if trainer.get(key) not in (None, -1):
            check_number(f"trainer.{key}", trainer[key], 1, whole=True, other=", or -1 for no limit")
    if trainer.get("fast_dev_run") not in (None, False, 0):
        raise UserInputError(f"trainer.fast_dev_run={trainer.fast_dev_run!r} turns checkpoints off, and a run ends by "
                             "testing its best checkpoint: for a run of a couple of batches use debug=fast")
    if trainer.get("enable_checkpointing") is False:
        raise UserInputError("trainer.enable_checkpointing=false: a run ends by testing its best checkpoint, and "
                             "resumes from last.ckpt: keep it true")
    if not (cfg.get("callbacks") or {}).get("model_checkpoint"):  # (it trained to the end, then found no best)
        raise UserInputError("callbacks.model_checkpoint=null: a run ends by testing its best checkpoint "
                             "(checkpoints/best.ckpt), which that callback writes: keep it")
    if trainer.get("gradient_clip_algorithm") not in (None, "norm", "value"):
        raise UserInputError(f"trainer.gradient_clip_algorithm={trainer.gradient_clip_algorithm!r}: choose norm "
                             "(the global gradient norm, the default) or value (each gradient element)")
    max_time = trainer.get("max_time")
    if max_time is not None and (seconds := budget_seconds(max_time)) is None:
        raise UserInputError(f"trainer.max_time={max_time!r}: give days:hours:minutes:seconds (00:00:09:30 is 9.5 "
                             "minutes), {minutes: 30}, or null for no limit")
    if max_time is not None and seconds <= 0:  # Lightning would stop before the first batch, with no checkpoint
        raise UserInputError(f"trainer.max_time={max_time!r} leaves no time to train: give a positive time, e.g. "
                             "00:00:30:00 or {minutes: 30}, or null for no limit")
    interval = trainer.get("val_check_interval")  # batches (a whole number), a fraction of an epoch, or a time
    if isinstance(interval, (int, float)) and not isinstance(interval, bool):
        check_number("trainer.val_check_interval", interval, 0, 1 if isinstance(interval, float) else None,
                     whole=isinstance(interval, int), inclusive=False)
    for stage in ("train", "val", "test"):
        if (limit := trainer.get(f"limit_{stage}_batches")) is not None:  # 0 for val/test: check_settings says why not
            check_batch_limit(stage, limit)


def check_batch_limit(stage: str, limit) -> None:
    """trainer.limit_{stage}_batches: a number of batches (a whole number) or a fraction of the split. (0 for
    validation or test is refused by check_settings and eval.py, which say why.)"""
    number = isinstance(limit, (int, float)) and not isinstance(limit, bool)
    most = 1 if isinstance(limit, float) else math.inf  # a fraction, or a count
    if not number or not (0 < limit <= most or limit == 0 and stage != "train"):
        raise UserInputError(f"trainer.limit_{stage}_batches={limit!r}: give a number of batches (a whole number > 0) "
                             "or a fraction of the split (> 0 and <= 1)")


def check_optimization(cfg: DictConfig) -> None:
    """optimizer.* and scheduler.*: the names, and the optimizer built once on a stand-in parameter, so a bad
    setting (`optimizer.betas=[0.9]`, `scheduler.pct_start=1.5`) is one line before the data is read."""
    optimizer, scheduler = cfg.get("optimizer"), cfg.get("scheduler")
    if optimizer is not None:
        if optimizer.get("name") not in OPTIMIZERS:
            raise UserInputError(f"optimizer.name={optimizer.get('name')!r}: choose one of {', '.join(OPTIMIZERS)}")
        options = {k: v for k, v in OmegaConf.to_container(optimizer, resolve=True).items() if k != "name"}
        if "weight_decay" in options:  # each parameter group sets its own, from model.weight_decay: never used
            raise UserInputError(f"optimizer.weight_decay={options['weight_decay']} is not used: the recipe decays "
                                 "weight matrices, kernels and embeddings (not biases or norms) by model.weight_decay; "
                                 f"give model.weight_decay={options['weight_decay']} instead")
        if "lr" in options:  # the recipe gives the optimizer model.lr: torch's "got multiple values for 'lr'"
            raise UserInputError(f"optimizer.lr={options['lr']}: the learning rate is model.lr (the schedule's start "
                                 f"or peak), which the recipe gives the optimizer; give model.lr={options['lr']} "
                                 "instead")
        check_arguments("optimizer", OPTIMIZERS[optimizer.name], options)  # nesterov=abc: SGD takes bool
        betas = options.get("betas", [0.9, 0.999])
        if not isinstance(betas, list) or len(betas) != 2:
            raise UserInputError(f"optimizer.betas={betas!r}: give two numbers, [beta1, beta2], e.g. [0.9, 0.999]")
        for i, beta in enumerate(betas):  # running averages' decay: 1 would never forget (torch refuses it too)
            check_number(f"optimizer.betas[{i}]", beta, 0, 1, most_inclusive=False)
        if "alpha" in options:  # RMSprop's decay of the squared-gradient average
            check_number("optimizer.alpha", options["alpha"], 0, 1, most_inclusive=False)
        if "momentum" in options:  # SGD's and RMSprop's velocity decay: 1 or more never forgets a step (it diverges)
            check_number("optimizer.momentum", options["momentum"], 0, 1, most_inclusive=False)
        lr = cfg.model.lr if isinstance(cfg.model.get("lr"), (int, float)) else 1e-3
        make_optimizer([torch.zeros(1, requires_grad=True)], optimizer.name, lr, options)
    if scheduler is None:
        return
    name = scheduler.get("name")
    if name not in SCHEDULERS:
        raise UserInputError(f"scheduler.name={name!r}: choose one of {', '.join(SCHEDULERS)}")
    check_schedule_keys(scheduler, name)
    trainer = cfg.get("trainer") or {}
    if name in ("cosine", "onecycle") and all(trainer.get(key) in (None, -1) for key in ("max_epochs", "max_steps")):
        # -1 epochs fails when the schedule is made; null would be Lightning's 1000 epochs, the schedule spread over
        # them (early stopping ends the run while one-cycle still warms up)
        raise UserInputError(f"scheduler={name} needs the run's length, and trainer.max_epochs="
                             f"{trainer.get('max_epochs')} with trainer.max_steps={trainer.get('max_steps')} sets "
                             "none: give trainer.max_epochs=N or trainer.max_steps=N, or use scheduler=none")
    if name == "step":
        check_number("scheduler.every_epochs", scheduler.every_epochs, 1, whole=True)
        check_number("scheduler.gamma", scheduler.gamma, 0, inclusive=False)
    elif name == "cosine":
        check_number("scheduler.final_ratio", scheduler.final_ratio, 0, 1)
    elif name == "onecycle":
        check_number("scheduler.pct_start", scheduler.pct_start, 0, 1, inclusive=False, most_inclusive=False)
        if not isinstance(scheduler.cycle_momentum, bool):
            raise UserInputError(f"scheduler.cycle_momentum={scheduler.cycle_momentum!r}: give true or false")
        check_number("scheduler.max_momentum", scheduler.max_momentum, 0, 1, most_inclusive=False)
        check_number("scheduler.base_momentum", scheduler.base_momentum, 0, scheduler.max_momentum)  # <= max


def check_schedule_keys(scheduler: DictConfig, name: str) -> None:
    """The schedule's own settings, all there and no others: `scheduler.name=cosine` changes the name alone, keeping
    the onecycle config's settings and lacking cosine's (a traceback), and an extra key (`+scheduler.warmup=5`,
    Hydra's advice for a key it does not know) would be silently ignored."""
    reads = SCHEDULE_SETTINGS[name]
    if missing := [key for key in reads if key not in scheduler]:
        raise UserInputError(f"scheduler={name} reads scheduler.{missing[0]}, which is missing: choose the schedule "
                             f"with scheduler={name} (configs/scheduler/{name}.yaml sets its settings; "
                             f"scheduler.name={name} changes only the name), or give scheduler.{missing[0]}=...")
    if extra := [str(key) for key in scheduler if key != "name" and key not in reads]:
        near = difflib.get_close_matches(extra[0], reads, n=1)
        other = [other for other, keys in SCHEDULE_SETTINGS.items() if extra[0] in keys]  # scheduler.name=none
        advice = (f"did you mean scheduler.{near[0]}?" if near else
                  f"it is scheduler={other[0]}'s: choose that schedule with scheduler={other[0]}" if other else
                  f"no schedule reads it: drop it (~scheduler.{extra[0]} drops one that a config sets)")
        settings = ", ".join(f"scheduler.{key}" for key in reads) or "no settings (a constant model.lr)"
        raise UserInputError(f"scheduler.{extra[0]} is not a setting of scheduler={name}, which reads {settings}; "
                             f"{advice}")


# The settings train.py reads outside the nodes checked against a constructor's arguments (data, model.net, callbacks,
# logger, trainer, optimizer, scheduler): an extra key (`+model.lrr=0.1`, the route Hydra suggests for a key it does
# not know) would otherwise be silently ignored.
KNOWN_KEYS = {
    "": ("seed", "keep_freed_memory", "float32_matmul_precision", "ckpt_path", "trainer", "callbacks", "logger",
         "paths", "model", "data", "optimizer", "scheduler", "monitor"),
    "model": ("net", "lr", "weight_decay", "l1", "label_smoothing", "compile", "channels_last"),
    "monitor": ("metric", "mode"),
    "paths": ("root_dir", "data_dir", "log_dir", "output_dir"),
}


def check_known_keys(cfg: DictConfig) -> None:
    """An extra key is refused unless another setting interpolates it (`paths.mine` in `data.path: ${paths.mine}/x`)."""
    text = str(OmegaConf.to_container(cfg, resolve=False))
    for node, known in KNOWN_KEYS.items():
        settings = OmegaConf.select(cfg, node) if node else cfg
        for key in settings.keys() if isinstance(settings, DictConfig) else ():
            name = f"{node}.{key}" if node else key
            if key not in known and not re.search(r"\$\{(oc\.select:)?" + re.escape(name) + r"\b", text):
                near = [f"{other}.{key}" for other, keys in KNOWN_KEYS.items() if other and key in keys]
                near += [f"{node}.{k}" if node else k for k in difflib.get_close_matches(key, known, n=1)]
                raise UserInputError(f"{name} is not a setting train.py reads"
                                     + (f"; did you mean {near[0]}?" if near else
                                        f"; {node or 'the top level'} has {', '.join(known)}"))


# What train.py and the recipe read without a default of their own (seed: check_run_settings; monitor: check_monitors)
REQUIRED = ("data._target_", "model.net._target_", "model.lr", "model.weight_decay", "model.l1", "model.compile",
            "optimizer.name", "scheduler.name", "paths.root_dir", "paths.data_dir", "paths.log_dir")


def check_settings(cfg: DictConfig) -> None:
    """Values Hydra cannot judge, checked before anything is built: Trainer argument types, the recipe's numbers,
    and a run that could never validate (no best checkpoint, nothing for early stopping to watch)."""
    # `???` marks a value only the user can give (a data file's path)
    if missing := [k for k, v in flatten(OmegaConf.to_container(cfg, resolve=False)).items() if v == "???"]:
        raise UserInputError(f"{missing[0]} is required here: add {missing[0]}=... to the command line")
    check_known_keys(cfg)
    check_trainer_args(cfg.trainer)
    check_numbers(cfg)  # (a number set to null: its range)
    if deleted := [k for k in REQUIRED if OmegaConf.select(cfg, k, default=None) is None]:  # `~model.lr`, `=null`
        sections = [deleted[0].rsplit(".", n)[0] for n in range(deleted[0].count("."), 0, -1)]  # model, model.net
        if value := next(((s, OmegaConf.select(cfg, s)) for s in sections  # a value, not null
                          if not isinstance(OmegaConf.select(cfg, s, default={}), DictConfig | dict | None)), None):
            raise UserInputError(f"{value[0]}={value[1]} replaces the section the recipe reads {deleted[0]} from: "
                                 f"set its keys instead ({deleted[0]}=...)")
        raise UserInputError(f"{deleted[0]} is missing (deleted with ~ or set to null): the recipe reads it; leave it "
                             "out of the command line to keep the configs' value, or give one")
    if empty := [k for k in REQUIRED if k.startswith("paths.") and OmegaConf.select(cfg, k) == ""]:
        default = OmegaConf.to_container(OmegaConf.load(CONFIGS / "paths" / "default.yaml"))[empty[0][len("paths."):]]
        raise UserInputError(f"{empty[0]}= is empty: give a folder, or leave it out for the configs' {default}")
    for name, node in (cfg.get("callbacks") or {}).items():
        check_instantiable(f"callbacks.{name}", node)
    check_instantiable("logger", cfg.get("logger"))
    check_data_path(cfg.get("data"))
    check_run_settings(cfg)
    check_optimization(cfg)
    # After the recipe's numbers (their messages give the range too): the constructors' type hints.
    for key in ("data", "model.net"):
        if (node := OmegaConf.select(cfg, key)) is not None:
            check_object_args(key, node)
    objects = {f"callbacks.{name}": node for name, node in (cfg.get("callbacks") or {}).items()}
    for key, node in {**objects, "logger": cfg.get("logger")}.items():
        if node is not None and node is not False:  # callbacks.NAME=null (or false) drops one
            check_object_args(key, node)
    check_tuning_callbacks(cfg)
    check_pruning_layout(cfg)
    check_batch_norm_rows(cfg)
    trainer = cfg.trainer
    if trainer.get("limit_test_batches") == 0:
        raise UserInputError("trainer.limit_test_batches=0: the run ends by scoring the test split for metrics.json; "
                             "give a fraction or a number of batches > 0")
    if trainer.get("limit_val_batches") == 0:
        raise UserInputError("trainer.limit_val_batches=0: the best checkpoint and early stopping need validation; "
                             "give a fraction or a number of batches > 0")
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if isinstance(every, int) and isinstance(epochs, int) and 0 < epochs < every:
        raise UserInputError(f"trainer.check_val_every_n_epoch={every} with trainer.max_epochs={epochs} never "
                             "validates: there would be no best checkpoint; lower it or train longer")


def check_instantiable(key: str, node) -> None:
    """A callback or the logger is null or false (none) or a section naming its class in `_target_`, not a value
    (`+callbacks.foo=1`, which would fail only as Lightning calls its hooks)."""
    if node is None or node is False or isinstance(node, DictConfig) and isinstance(node.get("_target_"), str):
        return
    kind, folder, none = ("logger", "logger", "~logger") if key == "logger" else (
        "callback", "callbacks", f"{key}=null")
    problem = f"{key} has no _target_" if isinstance(node, DictConfig) else f"{key}={node} is not a {kind}"
    raise UserInputError(f"{problem}: a {kind} is a section naming its class in _target_ (as in configs/{folder}/), "
                         f"or {none} for none")


def check_batch_norm_rows(cfg: DictConfig) -> None:
    """The DNN's BatchNorm1d normalizes each feature over a training batch's rows: one row has no spread, and torch
    raises mid-run. (The CNN's BatchNorm2d also averages over a feature map's pixels: it trains on single images.)"""
    net, batch_size = OmegaConf.select(cfg, "model.net"), OmegaConf.select(cfg, "data.batch_size")
    if net and net.get("_target_") == "models.dnn.ClickMLP" and net.get("batch_norm") is True and batch_size == 1:
        raise UserInputError("data.batch_size=1 with model.net.batch_norm=true: batch norm needs at least 2 rows a "
                             "batch; give data.batch_size=2 or more, or model.net.batch_norm=false")


def check_tuning_callbacks(cfg: DictConfig) -> None:
    """Lightning callbacks that change the run from their own on_fit_start or an epoch's start, after the recipe
    built its learning-rate schedule (sized by data.batch_size and trainer.accumulate_grad_batches, peaking at
    model.lr), and finders that restore their own trial checkpoint over a resumed run's: each would go wrong
    silently (a schedule of the wrong length, or that never reaches the found rate; a resume that restarts at
    step 0), or fail mid-run (one-cycle stepped past its end)."""
    from lightning.pytorch.callbacks import BatchSizeFinder, GradientAccumulationScheduler, LearningRateFinder

    schedule = (cfg.get("scheduler") or {}).get("name", "none")
    for name, node in (cfg.get("callbacks") or {}).items():
        target = node.get("_target_") if node else None
        cls = get_object(target) if isinstance(target, str) else None
        if not isinstance(cls, type):
            continue
        if issubclass(cls, (BatchSizeFinder, LearningRateFinder)) and cfg.get("ckpt_path") is not None:
            raise UserInputError(f"callbacks.{name}: {cls.__name__} restores its own trial's checkpoint over the one a "
                                 f"run resumes from, which would restart at step 0: resume without it "
                                 f"(callbacks.{name}=null)")
        if schedule == "none":
            continue
        if issubclass(cls, LearningRateFinder) and node.get("update_attr"):
            raise UserInputError(f"callbacks.{name}: {cls.__name__} with update_attr=true sets model.lr after the "
                                 f"scheduler={schedule} schedule was built from it (its peak and floor would stay "
                                 "model.lr's): add scheduler=none, or give model.lr the rate it suggests")
        sized_by = {BatchSizeFinder: "data.batch_size",
                    GradientAccumulationScheduler: "trainer.accumulate_grad_batches"}
        if changes := next((key for kind, key in sized_by.items() if issubclass(cls, kind)), None):
            raise UserInputError(f"callbacks.{name}: {cls.__name__} changes {changes} after the scheduler={schedule} "
                                 "schedule was sized by it (it would end at the wrong step, one-cycle fails past its "
                                 f"end): add scheduler=none, or set {changes} yourself")


def check_pruning_layout(cfg: DictConfig) -> None:
    """Lightning's ModelPruning prunes with torch.nn.utils.prune, which reads each weight as one flat view: a conv
    kernel in the channels-last layout (model.channels_last, the CNN's default) has none, and the run failed with a
    RuntimeError traceback at its first epoch's end, after that epoch's training."""
    from lightning.pytorch.callbacks import ModelPruning

    if not OmegaConf.select(cfg, "model.channels_last", default=False):
        return
    for name, node in (cfg.get("callbacks") or {}).items():
        target = node.get("_target_") if node else None
        cls = get_object(target) if isinstance(target, str) else None
        if isinstance(cls, type) and issubclass(cls, ModelPruning):
            raise UserInputError(f"callbacks.{name}: {cls.__name__} cannot prune the conv kernels that "
                                 "model.channels_last=true lays out channels-last (torch's pruning reads each weight "
                                 "as one flat view, which such a kernel has not): add model.channels_last=false")


def check_config(cfg: DictConfig, choices: dict | None = None) -> None:
    """All of a run's checks before anything is built (train.py's command line makes them before Hydra writes the run
    directory, `train(cfg)` again for callers from Python), the first thing to change first: a model that cannot read
    the data, then the monitored metric, then every setting's value."""
    check_model_reads_data(cfg, choices)
    check_monitors(cfg)
    check_settings(cfg)


@contextmanager
def fraction_of_a_batch_refused():
    """Lightning's refusal of a trainer.limit_*_batches fraction that leaves no batch of a split (known only once
    the data is read) as one line; its other errors pass through."""
    try:
        yield
    except MisconfigurationException as err:
        found = re.search(r"You requested to check (\S+) of the `(\w+)_dataloader` but \S+ \* (\d+) < 1", str(err))
        if found is None:
            raise
        fraction, stage, batches = found.groups()
        raise UserInputError(f"trainer.limit_{stage}_batches={fraction} of the {stage} split's {batches} "
                             f"batch{'es' if batches != '1' else ''} is less than one: give at least "
                             f"{1 / int(batches):.3g}, or a whole number of batches") from None
