"""`python train.py -m ...` sweeps: a summary of the jobs (summary.csv, summary.json) kept up to date in the sweep
directory, which sweeps go on past a failed job, and what a failed job leaves: a grid sweep's exit status 1, an Optuna
trial marked failed in its study; and the metric an Optuna study ranks by, kept in it, so that a later search that
would rank its trials another way is refused."""
import csv
import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from data import UserInputError, count
from models.records import read_metrics, read_overrides, write_json


class SweepSummary(Callback):
    """`python train.py -m ...`: summary.csv and summary.json in the sweep directory, one row per job (its overrides
    and its metrics.json), best first by the monitored validation metric. Written again after every job, so a sweep
    cut short (Ctrl-C, an Optuna study stopped by an error) keeps the summary of the jobs it ran.
    A grid sweep goes on past a job that failed (see `is_grid_sweep_job`) and, at its end, exits with status 1, so
    a script that runs it knows."""

    def __init__(self) -> None:
        self.failed_jobs: list[int] = []  # this sweep's jobs, not an earlier command's in a shared folder (Optuna's)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The sweep directory exists before the sweeper starts: the Optuna sweeper opens its SQLite study there.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        stamp_study(config.hydra.sweeper, config.monitor.metric, config.data)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(config.hydra.sweep.dir), config.monitor)
            if not (Path(config.hydra.runtime.output_dir) / "metrics.json").exists():
                self.failed_jobs.append(config.hydra.job.num)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if rows := write_sweep_summary(sweep, config.monitor):
            failed = [r["job"] for r in rows if r["failed"]]
            jobs = f"{'job' if len(failed) == 1 else 'jobs'} {', '.join(failed)}"
            failures = f" ({len(failed)} failed, no metrics.json: {jobs})" if failed else ""
            best = f"; best by {config.monitor.metric}_best: job {rows[0]['job']}" if not rows[0]["failed"] else ""
            print(f"{count(len(rows) - len(failed), 'run')}{failures}; summary: {sweep / 'summary.csv'}{best}")
        if self.failed_jobs:  # also where the summary found no job folder
            sys.exit(1)


def write_sweep_summary(sweep: Path, monitor: DictConfig) -> list[dict]:
    """The sweep's summary.csv and summary.json from its job directories so far, best first by `monitor`'s metric;
    their rows (none: nothing written)."""
    rows, failed = [], []  # finished jobs (with metrics.json), and jobs that ended with an error
    # A job's folder is hydra.sweep.subdir, which may be deeper than one level (`${hydra.job.num}/run`, `lr_${model.lr}/
    # seed_${seed}`): named by its path in the sweep folder
    jobs = {p.parent.relative_to(sweep).as_posix(): p.parent for p in sweep.rglob(".hydra") if p.parent != sweep}
    for name in sorted(jobs, key=lambda name: (len(name), name)):
        job = jobs[name]
        overrides = {}  # key -> value; "++trainer.x=1" as trainer.x, "~logger" with no value
        for override in read_overrides(job):
            key, _, value = override.partition("=")
            overrides[key.lstrip("+")] = value
        if (job / "metrics.json").exists():
            metrics = read_metrics(job)
            rows.append({"job": name, "failed": False, **overrides, **metrics})
        else:
            failed.append({"job": name, "failed": True, **overrides})
    if not rows and not failed:
        return []
    key, mode = f"{monitor.metric}_best", monitor.mode
    rows.sort(key=lambda r: r.get(key, float("nan")), reverse=mode == "max")
    rows += failed  # listed last, with their overrides: what to fix or rerun
    write_json(sweep / "summary.json", rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(sweep / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def is_grid_sweep_job() -> bool:
    """A job of a `-m` sweep by Hydra's basic sweeper, which runs every job whatever the others returned.
    (An Optuna study stops at a trial's error: train.py ends the process, before the sweeper's max_failure_rate.)"""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and "BasicSweeper" in hydra_cfg.sweeper.get("_target_", "")


def mark_trial_failed() -> None:
    """The Optuna trial this process runs ended with an error: it is marked FAIL in its study, not left RUNNING for
    ever (train.py ends the process, so the sweeper that would tell the study never learns of it). Its trial is the
    running one whose parameters this job was given."""
    sweeper = HydraConfig.get().sweeper
    if not optuna_storage(sweeper):
        return  # another sweeper; or an in-memory study, which ends with the process
    import optuna  # (only here: the Optuna sweeper's own dependency)

    overrides = set(HydraConfig.get().overrides.task)
    try:
        study = optuna.load_study(study_name=sweeper.get("study_name"), storage=sweeper.storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            # the sweeper's overrides for a trial are f"{name}={value}" of its parameters
            if all(f"{name}={value}" in overrides for name, value in trial.params.items()):
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                return
    except Exception as err:  # the error that ended the trial is the one to report, not this
        logging.getLogger(__name__).warning("could not mark the Optuna trial failed in %s: %s", sweeper.storage, err)


def optuna_storage(sweeper: DictConfig) -> str | None:
    """The storage of an Optuna sweeper's study (`sqlite:///.../study.db`); None for another sweeper, or a study kept
    in memory."""
    return sweeper.get("storage") or None if "optuna" in sweeper.get("_target_", "").lower() else None


def data_file(data: DictConfig) -> str | None:
    """The file a search's data comes from (data=csv, advertising, criteo), as an absolute path; None where the data
    config reads none (the synthetic clicks)."""
    if "path" not in data or OmegaConf.is_missing(data, "path") or not data.path:  # data=csv's ???: said after
        return None
    return str(Path(data.path).resolve())


def stamp_study(sweeper: DictConfig, metric: str, data: DictConfig) -> None:
    """The study a search is about to start or continue records the metric its trials are ranked by (Optuna keeps
    only the direction) and the file they learn from, for `check_study` to compare the next search's with."""
    if not (storage := optuna_storage(sweeper)):
        return
    import optuna  # (only here: the Optuna sweeper's own dependency)

    direction = sweeper.direction  # ("maximize"; a list for a study of several objectives)
    study = optuna.create_study(study_name=sweeper.study_name, storage=storage, load_if_exists=True,
                                directions=list(direction) if isinstance(direction, ListConfig) else [direction])
    for key, value in (("monitor", metric), ("data", data_file(data))):
        if key not in study.user_attrs:
            study.set_user_attr(key, value)


def check_study(sweeper: DictConfig, monitor: DictConfig, data: DictConfig) -> None:
    """An Optuna search that goes on with a study already in its SQLite file (the same command again) must rank
    its trials as the study's own were: by the same metric in the same direction, on the same data file (data=csv's
    study, dnn_csv, is every file's). Optuna itself refuses only the other direction, with its traceback once the
    sweep has started; another metric's values, or another table's, would join the study's, and TPE learn from
    numbers that do not compare."""
    storage = optuna_storage(sweeper)
    path = Path(storage.removeprefix("sqlite:///")) if storage and storage.startswith("sqlite:///") else None
    if path is None or not path.is_file() or not isinstance(direction := sweeper.direction, str):
        return
    import optuna

    name = sweeper.study_name
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the file holds other studies, not this one: a new study
        return
    except Exception as err:
        first = next(iter(str(err).splitlines()), type(err).__name__)
        raise UserInputError(f"{path}: Optuna cannot read it as a study database ({first}); move it away, or name "
                             "another study, hydra.sweeper.study_name=NAME") from None
    metric, mode = study.user_attrs.get("monitor"), study.direction.name.lower()
    if mode != direction.lower() or metric not in (None, monitor.metric):
        kept = f"{mode}s {metric}" if metric else f"{mode}s its metric"
        raise UserInputError(f"hydra.sweeper.study_name={name}: that study ({path}) {kept}; this search "
                             f"{direction.lower()}s {monitor.metric}, so its trials would not rank among the study's: "
                             "name a study of its own, hydra.sweeper.study_name=NAME")
    if "data" in study.user_attrs and (searched := study.user_attrs["data"]) != data_file(data):
        raise UserInputError(f"hydra.sweeper.study_name={name}: that study ({path}) searched "
                             f"{searched or 'the synthetic clicks'}; this search reads {data_file(data)}: name a "
                             "study for this file, hydra.sweeper.study_name=NAME")
