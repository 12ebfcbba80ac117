"""What the command line needs besides the recipe: one-line errors for bad input, `resume=RUN_DIR`, the ranks
of a DDP run sharing one run directory, and sweep summaries."""
import csv
import difflib
import inspect
import json
import os
import typing
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_object
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, ListConfig, OmegaConf

from data import UserInputError
from models.recipe import epoch_metric_names

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def check_overrides(argv: list[str]) -> None:
    """Compose the config up front, so a misspelled key or an unknown choice is one line, not a page; under
    `-m`, once for each value of each swept setting (the others at their first value), up to MAX_CHECKED."""
    flags = [a for a in argv if a.startswith("-")]
    if any(flag not in ("-m", "--multirun") for flag in flags):  # --cfg, --help, ...: Hydra's own business
        return
    overrides = [a for a in argv if not a.startswith(("-", "hydra.", "+hydra."))]
    for variant in sweep_variants(overrides) if flags else [overrides]:
        try:
            with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
                cfg = compose("train", overrides=variant)
        except Exception as err:
            message = " ".join(str(err).split("Config search path")[0].split())
            raise UserInputError(f"{message} (see `python train.py --help`)") from err
        check_settings(cfg)  # before Hydra writes .hydra/: a bad value never reaches a run's saved config


MAX_CHECKED = 20  # command lines composed for a sweep: ~0.2 s each


def override_values(override) -> list[str]:
    """`a=1,2` -> [a=1, a=2]; `a=1` -> [a=1]; a range or glob -> [] (the config's value)."""
    try:
        if override.is_choice_sweep() or override.is_range_sweep():
            return [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
        return [] if override.is_sweep_override() else [override.input_line]
    except Exception:  # a glob needs Hydra's config loader to list the options it matches
        return []


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """`a=1,2 b=x,y` -> [a=1 b=x], [a=2 b=x], [a=1 b=y]: every value once, taking the swept settings' second
    values first, then their third, ... (a long `seed=range(30)` does not crowd out `lr=0.1,abc`). A range
    (`interval(...)`, which Optuna samples) or a `glob(...)` of config options keeps the config's value; an override
    Hydra cannot parse is left for Hydra to report."""
    try:
        values = [override_values(o) for o in OverridesParser.create().parse_overrides(overrides)]
    except Exception:
        return []
    swept = [i for i, choices in enumerate(values) if choices]
    first = [values[i][0] for i in swept]
    variants = [first]
    for rank in range(1, max(map(len, values), default=1)):
        variants += [first[:at] + [values[i][rank]] + first[at + 1:]
                     for at, i in enumerate(swept) if rank < len(values[i])]
    return variants[:MAX_CHECKED]


def trainer_arguments(argv: list[str]) -> list[str]:
    """`trainer.NAME=VALUE` sets any Lightning Trainer argument, also one configs/trainer/ does not list (Hydra alone
    would want `+trainer.NAME=`): passed on as `++trainer.NAME=VALUE`, set or add. A NAME the Trainer does not
    take is refused, with the nearest names."""
    names = list(inspect.signature(L.Trainer.__init__).parameters)
    passed = []
    for arg in argv:
        name, _, inner = arg.split("=", 1)[0].removeprefix("trainer.").partition(".")  # inner: trainer.strategy.x
        if arg.startswith("trainer.") and "=" in arg and not name.startswith("_"):  # _target_: Hydra's
            if name not in names:
                near = difflib.get_close_matches(name, names, n=3)
                raise UserInputError(f"trainer.{name} is not a lightning Trainer argument"
                                     + (f"; did you mean {', '.join(near)}?" if near else ""))
            arg = arg if inner else f"++{arg}"
        passed.append(arg)
    return passed


def resume_arguments(argv: list[str]) -> list[str]:
    """`resume=RUN_DIR` -> that run's own overrides + its run directory + `ckpt_path=last`. Also refuses to
    start a fresh run in a directory that holds a finished one (it would overwrite its config and metrics)."""
    args = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    if "resume" in args:
        run = Path(args["resume"])
        overrides = run / ".hydra" / "overrides.yaml"
        if not overrides.is_file():
            raise UserInputError(f"resume={run}: no {overrides}; resume takes a run directory made by train.py")
        kept = [a for a in OmegaConf.load(overrides) if not a.startswith(("hydra.run.dir=", "ckpt_path="))]
        extra = [a for a in argv if not a.startswith("resume=")]
        if (run / "metrics.json").is_file() and not extra:  # re-running its test would only rewrite metrics.json
            if json.loads((run / "metrics.json").read_text()).get("stopped_early"):  # its patience is restored too
                raise UserInputError(f"resume={run}: that run stopped early (metrics.json): there is nothing to "
                                     "continue; its best weights are in checkpoints/best.ckpt")
            raise UserInputError(f"resume={run}: that run finished (metrics.json) and there is nothing to continue; "
                                 "to train it longer add a larger trainer.max_epochs=N and scheduler=none (its "
                                 "schedule's length was fixed when it started)")
        return kept + [a for a in argv if not a.startswith("resume=")] + [f"hydra.run.dir={run}", "ckpt_path=last"]
    run_dir = args.get("hydra.run.dir")
    if run_dir and (Path(run_dir) / "metrics.json").exists() and "ckpt_path" not in args:
        raise UserInputError(f"hydra.run.dir={run_dir} already holds a finished run (metrics.json); "
                             "choose another directory, or add ckpt_path=last to continue it")
    if run_dir and (Path(run_dir) / "checkpoints" / "last.ckpt").exists() and "ckpt_path" not in args:
        raise UserInputError(f"hydra.run.dir={run_dir} holds an unfinished run (checkpoints/last.ckpt); continue it "
                             f"with `python train.py resume={run_dir}`, or choose another directory")
    return argv


@contextmanager
def config_kept_on_failure(argv: list[str]):
    """Hydra writes a command's config into RUN/.hydra/ before the run starts. If the command then fails before it
    writes a checkpoint (a resume refused because its schedule differs, a bad path), the run directory's earlier
    .hydra/ files are put back: its saved config stays the one its checkpoints were trained with, and
    `resume=RUN` keeps working."""
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    folder = Path(run_dir) / ".hydra" if run_dir else None
    # Only the process that writes .hydra/ puts it back: DDP's other ranks (started after rank 0 wrote the new
    # config, or told hydra.output_subdir=null) would put back rank 0's new files.
    other_rank = any(int(os.environ.get(name, 0) or 0) > 0 for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))
    if folder is None or not folder.is_dir() or other_rank or "hydra.output_subdir=null" in argv:
        yield
        return
    saved = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    checkpoints = lambda: {p: p.stat().st_mtime_ns for p in (Path(run_dir) / "checkpoints").glob("*.ckpt")}
    before = checkpoints()
    try:
        yield
    except BaseException as err:
        if not (isinstance(err, SystemExit) and err.code in (0, None)) and checkpoints() == before:
            for path in folder.iterdir():
                if path.is_file() and path not in saved:
                    path.unlink()
            for path, content in saved.items():
                path.write_bytes(content)
        raise


def distributed_arguments(argv: list[str]) -> list[str]:
    """torchrun and srun start every rank with the same command line. The ranks must share one run directory
    (each would otherwise stamp its own from the clock), and only rank 0 writes .hydra/. (The ranks that Lightning
    itself starts, `trainer=ddp` or `ddp_cpu` from one command, are given rank 0's directory by Lightning.)"""
    for launcher, environment in (("torchrun", TorchElasticEnvironment), ("srun", SLURMEnvironment)):
        if environment.detect() and (env := environment()).world_size() > 1:
            if not any(a.startswith("hydra.run.dir=") for a in argv):
                raise UserInputError(f"the {env.world_size()} processes that {launcher} started need one run "
                                     "directory: add hydra.run.dir=DIR (e.g. "
                                     f"{'outputs/run1' if launcher == 'torchrun' else 'outputs/$SLURM_JOB_ID'})")
            if (rank := env.global_rank()) > 0:
                return argv + ["hydra.output_subdir=null", f"hydra.job.name=train_ddp_process_{rank}"]
    return argv


class WholeSweepError(UserInputError):
    """An error every job of a sweep would meet: the sweep stops at the first (other job errors skip that job)."""


def check_monitor(monitor: DictConfig, task: str) -> None:
    """`monitor.metric` picks the best checkpoint, stops early and is what a sweep optimizes: it must be logged."""
    names = epoch_metric_names(task, "val") + epoch_metric_names(task, "train")
    if monitor.metric not in names:
        raise WholeSweepError(f"monitor.metric={monitor.metric} is not a metric this {task} run logs; "
                              f"choose one of {', '.join(names)}")
    if monitor.mode not in ("min", "max"):
        raise WholeSweepError(f"monitor.mode={monitor.mode} is not a mode; choose min or max")


def check_model_reads_data(cfg: DictConfig) -> None:
    """`model=cnn data=text`: refused before the data is read, naming the models that do read it. A network says
    which kinds of data it reads (`reads`), a data module which kind it gives (`kind`)."""
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
    if HydraConfig.initialized():  # the command's words, unless model.net._target_ or data._target_ was changed
        choices = HydraConfig.get().runtime.choices
        if targets.get(choices.get("model")) == model:
            model = f"model={choices.get('model')}"
        data_file = CONFIGS / "data" / f"{choices.get('data')}.yaml"
        if data_file.is_file() and OmegaConf.load(data_file).get("data", {}).get("_target_") == data_choice:
            data_choice = f"data={choices.get('data')}"
    raise UserInputError(f"{model} reads {' or '.join(reads)}, and {data_choice} is {kind}: "
                         f"for {kind} choose {' or '.join(f'model={m}' for m in readers) or 'another model'}")


def check_single_process_sweep(trainer: L.Trainer) -> None:
    """Lightning starts each extra DDP rank by re-running the command line, which under `-m` is the whole sweep
    again (Lightning dropped Hydra multirun support from its launcher, PR #15737): sweeps run one process per job."""
    if trainer.world_size > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise WholeSweepError(f"-m with {trainer.world_size} DDP processes per run is not supported: sweep with one "
                              "process per run (drop trainer=ddp...), or start each DDP run on its own")


def _admits(value, hint) -> bool:
    if hint is typing.Any or value is None and type(None) in typing.get_args(hint):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_admits(value, h) for h in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or hint is dict:
        return isinstance(value, (dict, DictConfig))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint) or isinstance(value, (dict, DictConfig))  # a dict: Hydra builds the object
    return True  # a hint we cannot judge


# Numbers of the recipe and the data: (whole number?, least value, may it equal the least value?)
NUMBERS = {"model.lr": (False, 0, False), "model.weight_decay": (False, 0, True), "model.l1": (False, 0, True),
           "data.batch_size": (True, 1, True), "data.eval_batch_size": (True, 1, True)}


def missing_keys(tree: dict, prefix: str = "") -> list[str]:
    """The keys set to `???` in a config: values only the user can give (a data file's path)."""
    found = []
    for key, value in tree.items():
        if isinstance(value, dict):
            found += missing_keys(value, f"{prefix}{key}.")
        elif value == "???":
            found.append(f"{prefix}{key}")
    return found


def check_settings(cfg: DictConfig) -> None:
    """Values Hydra cannot judge, checked before anything is built: Trainer argument types, the recipe's numbers,
    and a run that could never validate (no best checkpoint, nothing for early stopping to watch)."""
    if missing := missing_keys(OmegaConf.to_container(cfg, resolve=False)):
        raise UserInputError(f"{missing[0]} is required here: add {missing[0]}=... to the command line")
    check_trainer_args(cfg.trainer)
    for key, (whole, least, inclusive) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or not whole)
        if not number or not (value >= least if inclusive else value > least):
            raise UserInputError(f"{key}={value!r}: give {'a whole number' if whole else 'a number'} "
                                 f"{'>=' if inclusive else '>'} {least}")
    trainer = cfg.trainer
    if trainer.get("limit_val_batches") == 0:
        raise UserInputError("trainer.limit_val_batches=0: the best checkpoint and early stopping need validation; "
                             "give a fraction or a number of batches > 0")
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if isinstance(every, int) and isinstance(epochs, int) and 0 < epochs < every:
        raise UserInputError(f"trainer.check_val_every_n_epoch={every} with trainer.max_epochs={epochs} never "
                             "validates: there would be no best checkpoint; lower it or train longer")


def check_trainer_args(trainer_cfg: DictConfig) -> None:
    """`trainer.max_epochs=abc` -> one line naming the argument and the type it takes."""
    hints = typing.get_type_hints(L.Trainer.__init__)
    for key, value in OmegaConf.to_container(trainer_cfg, resolve=False).items():
        if key.startswith("_") or isinstance(value, str) and "${" in value:  # an interpolation: its value is Hydra's
            continue
        if key not in hints:
            raise UserInputError(f"trainer.{key} is not a lightning Trainer argument")
        if not _admits(value, hints[key]):
            raise UserInputError(f"trainer.{key}={value!r} has the wrong type: Trainer takes {hints[key]}".replace("typing.", ""))


class SweepSummary(Callback):
    """After `python train.py -m ...`: summary.csv and summary.json in the sweep directory, one row per job
    (its overrides and its metrics.json), best first by the monitored validation metric."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The sweep directory exists before the sweeper starts: the Optuna sweeper opens its SQLite study there.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows, failed = [], []  # finished jobs (with metrics.json), and jobs that ended with an error
        for job in sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda job: (len(job.name), job.name)):
            saved = job / ".hydra" / "overrides.yaml"
            overrides = {}  # key -> value; "++trainer.x=1" as trainer.x, "~logger" with no value
            for override in OmegaConf.load(saved) if saved.exists() else []:
                key, _, value = override.partition("=")
                overrides[key.lstrip("+")] = value
            if (job / "metrics.json").exists():
                metrics = json.loads((job / "metrics.json").read_text())
                rows.append({"job": job.name, "failed": False, **overrides, **metrics})
            else:
                failed.append({"job": job.name, "failed": True, **overrides})
        if not rows and not failed:
            return
        key, mode = f"{config.monitor.metric}_best", config.monitor.mode
        rows.sort(key=lambda r: r.get(key, float("nan")), reverse=mode == "max")
        rows += failed  # listed last, with their overrides: what to fix or rerun
        (sweep / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(sweep / "summary.csv", "w", newline="") as f:
            csv.DictWriter(f, columns).writeheader()
            csv.DictWriter(f, columns).writerows(rows)
        names = ", ".join(r["job"] for r in failed)
        failures = f" ({len(failed)} failed, no metrics.json: jobs {names})" if failed else ""
        best = f"; best by {key}: job {rows[0]['job']}" if not rows[0]["failed"] else ""
        print(f"{len(rows) - len(failed)} runs{failures}; summary: {sweep / 'summary.csv'}{best}")
