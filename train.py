"""Train any redes model with the one shared recipe: `python train.py model=<dnn|cnn|lstm> [key=value ...]`.

`train(cfg)` is plain Python (the tests call it); `main` adds Hydra's CLI and one-line errors on top.
"""
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("REDES_ROOT", str(Path(__file__).resolve().parent))  # configs' ${paths.root_dir}

import hydra
import lightning as L
import torch
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.checkpointing import check_checkpoint_fits, resolve_ckpt_path
from models.cli import (WholeSweepError, check_model_reads_data, check_monitor, check_overrides, check_settings,
                        check_single_process_sweep, config_kept_on_failure, distributed_arguments, resume_arguments,
                        trainer_arguments)
from models.host import keep_freed_memory
from models.recipe import NonFiniteLossError, Recipe


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    return name if trainer.world_size == 1 else f"{name} x {trainer.world_size} processes (DDP)"


def prepare_data_once(datamodule: L.LightningDataModule, data_dir: Path) -> None:
    """Download or convert the data in one process of this machine at a time: every DDP rank (and every job of a
    parallel sweep) builds the data, and two processes writing one download would corrupt it. The first does the
    work under the lock; the others then find it done (prepare_data is a no-op on prepared data). The lock file
    sits in the temporary folder, named after the data folder, which may not exist yet or be read-only."""
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"redes-prepare-data-{key}.lock")):
        datamodule.prepare_data()


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, Recipe]:
    """The data, then the network sized by the data (`net_kwargs`), inside the shared recipe."""
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()  # before the first step's buffers: see models/host.py
    datamodule = instantiate(cfg.data)
    prepare_data_once(datamodule, Path(cfg.paths.data_dir).expanduser())
    datamodule.setup("fit")
    return datamodule, build_recipe(cfg, datamodule)


def build_recipe(cfg: DictConfig, datamodule: L.LightningDataModule) -> Recipe:
    """A fresh network (from the current RNG state) for data that is set up, inside the shared recipe."""
    try:
        net = instantiate(cfg.model.net)(**datamodule.net_kwargs)
    except ValueError as err:  # the network refuses its settings (activation=gelu, tie_weights with other sizes)
        raise UserInputError(f"model.net: {err}") from err
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):  # model.net.widths=5: a value of the wrong kind
            raise UserInputError(f"model.net: a setting of the wrong kind ({err}); see configs/model/") from err
        # A setting for another network, e.g. data=fashion_mnist_rows sizes the LSTM.
        raise UserInputError(f"model.net: {err} (set by the data's config or the command line "
                             "for another model: pick the model it was meant for, or drop the setting)") from err
    if cfg.model.compile:
        net.compile()
    return Recipe(net, task=datamodule.task, lr=cfg.model.lr, weight_decay=cfg.model.weight_decay,
                  l1=cfg.model.l1, optimizer=OmegaConf.to_container(cfg.optimizer),
                  scheduler=OmegaConf.to_container(cfg.scheduler),
                  net_kwargs=datamodule.net_kwargs,
                  channels_last=cfg.model.get("channels_last", False),
                  config=OmegaConf.to_container(cfg, resolve=True))


def train(cfg: DictConfig) -> dict:
    """Fit with early stopping, test the best checkpoint, write metrics.json; return its contents."""
    out = Path(cfg.paths.output_dir)
    check_monitor(cfg.monitor, get_class(cfg.data._target_).task)  # the data's task decides which metrics exist
    check_settings(cfg)
    check_model_reads_data(cfg)
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out, cfg.model.net._target_)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, recipe = build(cfg)
    if resume_from:
        check_checkpoint_fits(resume_from, cfg.ckpt_path, datamodule.net_kwargs)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]  # `callbacks.x=null` drops one
    if not logger:  # `~logger`: nowhere to write learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    except InstantiationException as err:  # e.g. trainer=gpu on a machine without one
        raise UserInputError(f"trainer: {err.__cause__ or err}; check trainer.accelerator, trainer.devices, "
                             "trainer.precision (trainer=cpu runs anywhere)") from err
    check_single_process_sweep(trainer)

    start = time.perf_counter()
    trainer.fit(recipe, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    checkpoint, stopper = trainer.checkpoint_callback, trainer.early_stopping_callback
    if checkpoint.best_model_score is None:
        raise UserInputError(f"the run ended without validating (trainer.val_check_interval="
                             f"{cfg.trainer.get('val_check_interval')}, check_val_every_n_epoch="
                             f"{cfg.trainer.get('check_val_every_n_epoch')}): no best checkpoint to test; "
                             "validate more often (checkpoints/last.ckpt holds the trained weights)")
    fit = {  # read before trainer.test: restoring the best checkpoint rewinds the callbacks' state
        f"{checkpoint.monitor}_best": float(checkpoint.best_model_score),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "stopped_early": bool(stopper and stopper.stopped_epoch > 0),
        "train_seconds": round(recipe.seconds_before + time.perf_counter() - start, 2),  # all segments of a resumed run
        "device": device_name(trainer),
        "best_checkpoint": os.path.relpath(checkpoint.best_model_path, out),
    }
    # The official test split, once, on the best checkpoint.
    test = trainer.test(recipe, datamodule=datamodule, ckpt_path="best", weights_only=True)[0]
    reference = getattr(datamodule, "reference_metrics", dict)()  # e.g. the Bayes-optimal AUC of synthetic data
    metrics = {**test, **reference, **fit}
    if logger:  # fills TensorBoard's hparams tab, so runs can be compared there
        hparams = {k: v for k, v in _flat(OmegaConf.to_container(cfg, resolve=True)).items()
                   if not k.startswith(("paths.", "callbacks.", "logger."))}
        logger.log_hyperparams(hparams, {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))})
    if trainer.is_global_zero:  # under DDP every rank gets here with the same (all-rank) metrics
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


log = logging.getLogger("redes")
log.addHandler(logging.NullHandler())  # with Hydra's job logging off: nothing, not Python's stderr fallback


def log_to_run_file() -> None:
    """Hydra points the root logger at RUN/train.log, but Lightning's logger was given its own console handler and
    stopped propagating when it was imported (before Hydra set logging up), so the file stayed empty. Lightning's
    messages and ours (the command, the error line, the test metrics) go to this job's file too, the console
    unchanged. A sweep's next job gets a new file: the previous job's handler is taken off first."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for logger in (logging.getLogger("lightning.pytorch"), logging.getLogger("lightning.fabric"), log):
        for handler in [h for h in logger.handlers if getattr(h, "_redes_run_file", False)]:
            logger.removeHandler(handler)
        if logger.propagate and logger is not log:
            continue  # its records reach the root's file already
        for handler in files:
            handler._redes_run_file = True
            logger.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the console has its own lines (print): only the file gets these


def is_grid_sweep_job() -> bool:
    """A job of a `-m` sweep by Hydra's basic sweeper, which runs every job whatever the others returned.
    (The Optuna sweeper, 1.2, cannot record a failed trial and go on: its study stops at the error.)"""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and "BasicSweeper" in hydra_cfg.sweeper.get("_target_", "")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the monitored validation metric's best value: what a sweeper (hparams_search=...) optimizes."""
    log_to_run_file()
    log.info("python train.py %s", " ".join(HydraConfig.get().overrides.task))
    try:
        metrics = train(cfg)
    except (UserInputError, NonFiniteLossError) as err:
        log.error("error: %s", err)
        print(f"error: {err}", file=sys.stderr)
        if is_grid_sweep_job() and not isinstance(err, WholeSweepError):
            return float("nan")  # one job of a grid sweep: the sweep goes on with the next job
        sys.exit(2)
    log.info("metrics: %s", json.dumps(metrics))
    if rank_zero_only.rank == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k.startswith("test/")}, indent=2))
    return metrics.get(f"{cfg.monitor.metric}_best")


if __name__ == "__main__":
    try:
        sys.argv[1:] = distributed_arguments(resume_arguments(trainer_arguments(sys.argv[1:])))
        check_overrides(sys.argv[1:])
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    with config_kept_on_failure(sys.argv[1:]):
        main()
