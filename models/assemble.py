"""What a run is made of, built from its config: the data, the network inside the shared recipe, the Trainer with
its callbacks and logger. train.py puts them together; the benchmarks build the same pieces to time them."""
import os
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from omegaconf import DictConfig, OmegaConf

from data import UserInputError
from models.checkpointing import RunCheckpoint
from models.checks import check_single_process_sweep
from models.host import cheap_cuda_check, keep_freed_memory, set_matmul_precision
from models.recipe import Recipe
from models.runs import instantiate_data, prepare_data_once


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
    set_matmul_precision(cfg.get("float32_matmul_precision", "high"), cfg.trainer.get("accelerator", "auto"))
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
    if cfg.model.compile:  # true: torch.compile's default mode; or a mode's name (models/checks.py, COMPILE_MODES)
        net.compile(mode=None if cfg.model.compile is True else cfg.model.compile)
    return Recipe(net, task=datamodule.task, lr=cfg.model.lr, weight_decay=cfg.model.weight_decay,
                  l1=cfg.model.l1, label_smoothing=cfg.model.get("label_smoothing", 0.0),
                  optimizer=OmegaConf.to_container(cfg.optimizer),
                  scheduler=OmegaConf.to_container(cfg.scheduler),
                  net_kwargs=datamodule.net_kwargs,
                  channels_last=cfg.model.get("channels_last", False),
                  config=absolute_data_paths(OmegaConf.to_container(cfg, resolve=True)))


def absolute_data_paths(config: dict) -> dict:
    """`config` with the data's files (data.path, data.cache_dir, data.data_dir) as absolute paths, as the checkpoint
    keeps it: eval.py, predict.py and the notebooks (which run in notebooks/) read them from other directories than
    the one train.py ran in (`data.path=../shared/datasets/advertising.csv`)."""
    data = config.get("data") or {}
    for key in ("path", "cache_dir", "data_dir"):
        if isinstance(value := data.get(key), str) and value and not Path(value).expanduser().is_absolute():
            data[key] = os.path.abspath(value)
    return config


def instantiate_setting(key: str, node: DictConfig, **kwargs):
    """A callback or the logger; one that refuses its settings (EarlyStopping(mode="maxx")) is a one-line error."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        raise UserInputError(f"{key}: {err.__cause__ or err}") from err


def tensorboard_folder(cfg: DictConfig) -> Path | None:
    """The folder TensorBoardLogger writes this run's event files into, where it is the run's own (inside its
    output_dir; None for a new version_N each time, or a folder that other runs share)."""
    version = cfg.logger.get("version")
    if version is None:
        return None
    folder = Path(cfg.logger.save_dir) / (cfg.logger.get("name") or "") / (
        f"version_{version}" if isinstance(version, int) else str(version))
    inside = folder.resolve().is_relative_to(Path(cfg.paths.output_dir).resolve())
    return folder if inside else None


def purge_step(cfg: DictConfig, resume_step: int | None) -> int | None:
    """The step from which TensorBoard drops the points already in the run's event files. A run resumed from a
    checkpoint of `resume_step` steps drops those its killed predecessor logged at that step and after: it logs them
    again (Lightning numbers a step's values, and an epoch's end, by the steps before it, so what a checkpoint holds
    was logged before its step and stays). A new run in a folder where an earlier one died before its first
    checkpoint (started again by the same command, `ckpt_path=last`) drops all of that one's points (step 0): its
    own curves would otherwise run twice over the same steps. (The earlier event files stay on disk.)"""
    if resume_step is not None:
        return resume_step
    folder = tensorboard_folder(cfg)
    return 0 if folder is not None and next(folder.glob("events.out.tfevents.*"), None) else None


def bar_and_summary(cfg: DictConfig, callbacks: list) -> tuple[list, dict]:
    """The callbacks less a progress bar or model summary the Trainer's own switches turn off, and the switches to
    give the Trainer. Lightning refuses a bar it was told not to show, and would print a summary callback's summary
    anyway. A bar or summary taken out of the callbacks (`callbacks.progress_bar=null`) is off, not replaced by
    Lightning's default (`trainer.enable_progress_bar=true` asks for that one)."""
    switches = {}
    for switch, kind in (("enable_progress_bar", ProgressBar), ("enable_model_summary", ModelSummary)):
        asked = cfg.trainer.get(switch)  # True, False or None (not set)
        if asked is False:
            callbacks = [c for c in callbacks if not isinstance(c, kind)]
        configured = any(isinstance(c, kind) for c in callbacks)
        if configured and kind is ModelSummary:  # it prints itself: Lightning's would only announce that it skips
            switches[switch] = False
        elif not configured and asked is not True:
            switches[switch] = False
    return callbacks, switches


def make_trainer(cfg: DictConfig, resume_step: int | None = None) -> L.Trainer:
    """The Lightning Trainer of `cfg.trainer`, with the run's callbacks and logger; `resume_step`: the steps of the
    checkpoint a resumed run starts from."""
    tensorboard = str(cfg.get("logger", {}).get("_target_", "")).endswith("TensorBoardLogger")
    purge = {"purge_step": step} if tensorboard and (step := purge_step(cfg, resume_step)) is not None else {}
    logger = instantiate_setting("logger", cfg.logger, **purge) if cfg.get("logger") else False
    # `callbacks.x=null` (or false) drops one
    callbacks = [instantiate_setting(f"callbacks.{name}", c) for name, c in cfg.callbacks.items() if c]
    if not logger:  # `~logger`: nowhere to write learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks, switches = bar_and_summary(cfg, callbacks)
    for callback in callbacks:
        if isinstance(callback, RunCheckpoint):
            callback.resuming = resume_step is not None
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **switches,
                                     _convert_="all")  # plain dicts and lists: max_time={minutes: 30} is a dict
    except InstantiationException as err:  # e.g. trainer=gpu on a machine without one
        message = str(err.__cause__ or err)
        hardware = any(word in message.lower() for word in ("gpu", "cuda", "accelerator", "device", "precision",
                                                              "strategy", "backend", "mps", "tpu"))
        raise UserInputError(f"trainer: {message}" + ("; check trainer.accelerator, trainer.devices, trainer.precision "
                                                      "(trainer=cpu runs anywhere)" if hardware else "")) from err
    if trainer.precision == "16-true":  # float16 weights, inputs and loss, unscaled: NaN at the first large number
        raise UserInputError("trainer.precision=16-true trains float16 weights without loss scaling: gradients "
                             "below float16's 6e-8 are lost and values past its 65,504 (a raw feature such as a "
                             "salary) overflow: use 16-mixed, bf16-mixed or bf16-true")
    check_single_process_sweep(trainer)
    return trainer
