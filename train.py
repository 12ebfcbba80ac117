"""Train any redes model with the one shared recipe: `python train.py model=<dnn|cnn|lstm> [key=value ...]`.

`train(cfg)` is plain Python (the tests call it); `main` adds Hydra's CLI and one-line errors on top.
"""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("REDES_ROOT", str(Path(__file__).resolve().parent))  # configs' ${paths.root_dir}

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.checkpointing import check_checkpoint_fits, resolve_ckpt_path
from models.checks import (WholeSweepError, check_callback_monitors, check_model_reads_data, check_monitor,
                           check_settings, check_single_process_sweep, flatten)
from models.cli import (check_overrides, config_kept_on_failure, distributed_arguments, is_grid_sweep_job, log,
                        log_to_run_file, resume_arguments, trainer_arguments, write_sweep_summary)
from models.host import cheap_cuda_check, keep_freed_memory
from models.recipe import NonFiniteLossError, Recipe
from models.runs import NOT_CHOICES, instantiate_data, prepare_data_once, reference_metrics


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    return name if trainer.world_size == 1 else f"{name} x {trainer.world_size} processes (DDP)"


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, Recipe]:
    """The data, then the network sized by the data (`net_kwargs`), inside the shared recipe."""
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()  # before the first step's buffers: see models/host.py
    cheap_cuda_check()  # no GPU: torch.optim's check for one on every step, without NVML (models/host.py)
    datamodule = instantiate_data(cfg.data)  # its settings checked: one-line errors
    prepare_data_once(datamodule)
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


def instantiate_setting(key: str, node: DictConfig):
    """A callback or the logger; one that refuses its settings (EarlyStopping(mode="maxx")) is a one-line error."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        raise UserInputError(f"{key}: {err.__cause__ or err}") from err


def make_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer of `cfg.trainer`, with the run's callbacks and logger."""
    logger = instantiate_setting("logger", cfg.logger) if cfg.get("logger") else False
    # `callbacks.x=null` drops one
    callbacks = [instantiate_setting(f"callbacks.{name}", c) for name, c in cfg.callbacks.items() if c]
    if not logger:  # `~logger`: nowhere to write learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    except InstantiationException as err:  # e.g. trainer=gpu on a machine without one
        raise UserInputError(f"trainer: {err.__cause__ or err}; check trainer.accelerator, trainer.devices, "
                             "trainer.precision (trainer=cpu runs anywhere)") from err
    check_single_process_sweep(trainer)
    return trainer


def train(cfg: DictConfig) -> dict:
    """Fit with early stopping, test the best checkpoint, write metrics.json; return its contents."""
    out = Path(cfg.paths.output_dir)
    task = get_class(cfg.data._target_).task  # the data's task decides which metrics exist
    check_monitor(cfg.monitor, task)
    check_callback_monitors(cfg.get("callbacks"), task)
    check_settings(cfg)
    check_model_reads_data(cfg)
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), out, cfg.model.net._target_)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, recipe = build(cfg)
    if resume_from:
        check_checkpoint_fits(resume_from, cfg.ckpt_path, datamodule.net_kwargs)
    trainer = make_trainer(cfg)

    start = time.perf_counter()
    trainer.fit(recipe, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    # Lightning's checkpoint_callback is the first ModelCheckpoint: configs/callbacks/default.yaml lists the best
    # checkpoint's first.
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
        "stopped_early": bool(stopper and stopper.stopping_reason != EarlyStoppingReason.NOT_STOPPED),
        "train_seconds": round(recipe.seconds_before + time.perf_counter() - start, 2),  # all segments of a resumed run
        "device": device_name(trainer),
        "best_checkpoint": os.path.relpath(checkpoint.best_model_path, out),
    }
    # The official test split, once, on the best checkpoint.
    test = trainer.test(recipe, datamodule=datamodule, ckpt_path="best", weights_only=True)[0]
    metrics = {**test, **reference_metrics(datamodule, trainer), **fit}
    if logger := trainer.logger:  # fills TensorBoard's hparams tab, so runs can be compared there
        settings = flatten(OmegaConf.to_container(cfg, resolve=True))
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in settings.items() if not k.startswith(NOT_CHOICES)}
        logger.log_hyperparams(hparams, {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))})
    if trainer.is_global_zero:  # under DDP every rank gets here with the same (all-rank) metrics
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


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
        log.error("error: %s", err)
        print(f"error: {err}", file=sys.stderr)
        if is_grid_sweep_job() and not isinstance(err, WholeSweepError):
            return float("nan")  # one job of a grid sweep: the sweep goes on with the next job
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # an Optuna study stops here: its summary, this trial last
            write_sweep_summary(Path(HydraConfig.get().sweep.dir), cfg.monitor)
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
