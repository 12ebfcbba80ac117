"""Train any redes model with the one shared recipe: `python train.py model=<dnn|cnn|lstm> [key=value ...]`.

`train(cfg)` is plain Python (the tests call it); `main` adds Hydra's CLI and one-line errors on top.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("REDES_ROOT", str(Path(__file__).resolve().parent))  # configs' ${paths.root_dir}

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.assemble import build, device_name, make_trainer
from models.checkpointing import check_checkpoint_fits, resolve_ckpt_path
from models.checks import WholeSweepError, check_config, flatten, fraction_of_a_batch_refused
from models.cli import (check_overrides, check_syntax, claimed_run_dir, config_kept_on_failure, distributed_arguments,
                        flags_first, log, log_to_run_file, resume_arguments, trainer_arguments)
from models.recipe import NonFiniteLossError, stopped_by, stopped_early
from models.records import graph_written, log_hparams_tab, logged_step, write_json, writes_reported
from models.runs import is_choice, load_checkpoint, reference_metrics
from models.schedules import cut_short
from models.sweeps import is_grid_sweep_job, mark_trial_failed, write_sweep_summary


def train(cfg: DictConfig) -> dict:
    """Fit with early stopping, test the best checkpoint, write metrics.json; return its contents."""
    out = Path(cfg.paths.output_dir)
    check_config(cfg)
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out, cfg.model.net._target_)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, recipe = build(cfg)
    if resume_from:
        check_checkpoint_fits(resume_from, cfg.ckpt_path, datamodule.net_kwargs, recipe, cfg)
    trainer = make_trainer(cfg, resume_step=load_checkpoint(resume_from)["global_step"] if resume_from else None)

    try:
        with fraction_of_a_batch_refused(), room_for(out):
            trainer.fit(recipe, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except ValueError as err:  # known only once the data is read: an interval longer than an epoch
        if "`val_check_interval`" not in str(err):
            raise
        raise UserInputError(f"trainer.val_check_interval={cfg.trainer.val_check_interval} is more than the "
                             f"{trainer.num_training_batches} training batches of an epoch: give at most that, a "
                             "fraction of an epoch (0.5), or add trainer.check_val_every_n_epoch=null to count "
                             "batches across epochs") from None
    # Lightning's checkpoint_callback is the first ModelCheckpoint: configs/callbacks/default.yaml lists the best
    # checkpoint's first.
    checkpoint = trainer.checkpoint_callback
    if checkpoint.best_model_score is None:
        raise UserInputError(f"the run ended without validating (trainer.val_check_interval="
                             f"{cfg.trainer.get('val_check_interval')}, check_val_every_n_epoch="
                             f"{cfg.trainer.get('check_val_every_n_epoch')}): no best checkpoint to test; "
                             "validate more often (checkpoints/last.ckpt holds the trained weights)")
    fit = {  # read before trainer.test: restoring the best checkpoint rewinds the callbacks' state
        f"{checkpoint.monitor}_best": float(checkpoint.best_model_score),
        # epochs begun (one ended early counts): current_epoch, but for a run resumed from a checkpoint written
        # within its last epoch that stops at once (early stopping had said stop), where current_epoch is one less
        "epochs": trainer.fit_loop.epoch_progress.current.started,
        "steps": trainer.global_step,
        "stopped_early": stopped_early(trainer),
        "stopped_by": stopped_by(trainer),
        "train_seconds": round(recipe.train_seconds(), 2),  # all segments of a resumed run; not the data's set-up
        "device": device_name(trainer),
        "best_checkpoint": os.path.relpath(checkpoint.best_model_path, out),
    }
    if fit["stopped_by"] == "max_time" and (warning := cut_short(trainer)):
        log.warning(warning)  # the run's train.log
        rank_zero_only(print)(f"warning: {warning}", file=sys.stderr)  # and the console, where the run is watched
    # The official test split, once, on the best checkpoint.
    graph_written(trainer)
    with fraction_of_a_batch_refused(), room_for(out):
        # (its path, as ckpt_path="best" would take, without the warning that three ModelCheckpoints draw)
        test = trainer.test(recipe, datamodule=datamodule, ckpt_path=checkpoint.best_model_path, weights_only=True)[0]
    metrics = {**test, **reference_metrics(datamodule, trainer), **fit}
    if logger := trainer.logger:  # fills TensorBoard's hparams tab, so runs can be compared there
        settings = flatten(OmegaConf.to_container(cfg, resolve=True))
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in settings.items() if is_choice(k)}
        # at the step trainer.test logged its metrics at (Lightning's logger connector counts that)
        log_hparams_tab(logger, hparams, {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))},
                        logged=set(test), step=logged_step(trainer))
    if trainer.is_global_zero:  # under DDP every rank gets here with the same (all-rank) metrics
        write_json(out / "metrics.json", metrics)  # whole or not at all: its presence marks a finished run
    return metrics


def room_for(out: Path):
    """A full disk under the run's folder (a checkpoint's write) as one error line that says how to go on: the
    checkpoints written before are whole (AtomicCheckpointIO)."""
    return writes_reported(str(out), advice=f"make room, then go on with: python train.py resume={out}")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation metric's best value: what a sweeper (hparams_search=...) optimizes."""
    log_to_run_file()
    # As typed: without the `++` that trainer_arguments put before trainer.KEY=VALUE for Hydra
    typed = (o[2:] if o.startswith("++trainer.") else o for o in HydraConfig.get().overrides.task)
    log.info("python train.py %s", " ".join(typed))
    try:
        metrics = train(cfg)
    except (UserInputError, NonFiniteLossError) as err:
        log.error("error: %s", err)  # each process's train.log
        grid_job = is_grid_sweep_job() and not isinstance(err, WholeSweepError)
        if not grid_job and HydraConfig.get().mode == RunMode.MULTIRUN:  # the sweep stops here
            mark_trial_failed()  # (an Optuna study's trial)
            write_sweep_summary(Path(HydraConfig.get().sweep.dir), cfg.monitor)  # this job last
        if rank_zero_only.rank == 0:  # one line on the console, not one per DDP process
            print(f"error: {err}", file=sys.stderr)
        if grid_job:
            return float("nan")  # one job of a grid sweep: the sweep goes on with the next job, and exits 1
        sys.exit(2)
    log.info("metrics: %s", json.dumps(metrics))
    if rank_zero_only.rank == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k.startswith("test/")}, indent=2))
    return metrics.get(f"{cfg.monitor.metric}_best")


if __name__ == "__main__":
    try:
        check_syntax(sys.argv[1:])
        sys.argv[1:] = flags_first(sys.argv[1:])
        sys.argv[1:] = distributed_arguments(resume_arguments(trainer_arguments(sys.argv[1:])))
        check_overrides(sys.argv[1:])
        sys.argv[1:] = claimed_run_dir(sys.argv[1:])
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    with config_kept_on_failure(sys.argv[1:]):
        main()
