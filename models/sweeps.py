"""`python train.py -m ...` sweeps: a summary of the jobs (summary.csv, summary.json) kept up to date in the sweep
directory, and which sweeps go on past a failed job."""
import csv
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from models.records import read_metrics, read_overrides, write_json


class SweepSummary(Callback):
    """`python train.py -m ...`: summary.csv and summary.json in the sweep directory, one row per job (its overrides
    and its metrics.json), best first by the monitored validation metric. Written again after every job, so a sweep
    cut short (Ctrl-C, an Optuna study stopped by an error) keeps the summary of the jobs it ran."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # The sweep directory exists before the sweeper starts: the Optuna sweeper opens its SQLite study there.
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(config.hydra.sweep.dir), config.monitor)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = write_sweep_summary(sweep, config.monitor)
        if not rows:
            return
        failed = [r["job"] for r in rows if r["failed"]]
        failures = f" ({len(failed)} failed, no metrics.json: jobs {', '.join(failed)})" if failed else ""
        best = f"; best by {config.monitor.metric}_best: job {rows[0]['job']}" if not rows[0]["failed"] else ""
        print(f"{len(rows) - len(failed)} runs{failures}; summary: {sweep / 'summary.csv'}{best}")


def write_sweep_summary(sweep: Path, monitor: DictConfig) -> list[dict]:
    """The sweep's summary.csv and summary.json from its job directories so far, best first by `monitor`'s metric;
    their rows (none: nothing written)."""
    rows, failed = [], []  # finished jobs (with metrics.json), and jobs that ended with an error
    for job in sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda job: (len(job.name), job.name)):
        overrides = {}  # key -> value; "++trainer.x=1" as trainer.x, "~logger" with no value
        for override in read_overrides(job):
            key, _, value = override.partition("=")
            overrides[key.lstrip("+")] = value
        if (job / "metrics.json").exists():
            metrics = read_metrics(job)
            rows.append({"job": job.name, "failed": False, **overrides, **metrics})
        else:
            failed.append({"job": job.name, "failed": True, **overrides})
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
