"""Wall seconds of training until the test metric crosses each threshold. Prints JSON.

    python benchmarks/time_to_accuracy.py model=cnn targets=[0.93,0.94] [out=FILE] [any train.py override ...]
    python benchmarks/time_to_accuracy.py model=lstm data=tinyshakespeare data.path=... targets=[1.6,1.5]
    python benchmarks/time_to_accuracy.py model=dnn targets=[0.80,0.82]
    python benchmarks/time_to_accuracy.py experiment=cnn_gpu targets=[0.93,0.94] warmup=20

`warmup=N` first trains N steps of a throwaway network, off the clock (torch.compile compiles then; its seconds
are in the JSON as warmup_seconds); the timed network starts from the same seed as without it.

The metric is test/acc for images, test/loss (nats/char, lower is better) for text, test/auroc for clicks.
This benchmark alone scores the test split after every epoch, with the clock stopped: it measures speed and
chooses nothing (training still early-stops on validation only; the clock counts training, the validation after each
epoch that early stopping needs and the epoch-end metrics, as train.py's train_seconds does; not checkpoints nor
TensorBoard figures, which are not made here though train_seconds counts them; nor the test scoring, which
trainer.max_time does not count either). Lightning runs the recipe's and early stopping's epoch ends after this
benchmark's: each point counts those of the epochs before it (milliseconds).
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.pytorch.callbacks import Timer  # noqa: E402

from models import assemble  # noqa: E402
from benchmarks.arguments import number_list, run, split_options, train_config, whole_option  # noqa: E402
from benchmarks.measure import autocast, peak_memory  # noqa: E402

METRIC = {"multiclass": ("test/acc", "max"), "binary": ("test/auroc", "max"), "lm": ("test/loss", "min")}


class TestClock(L.Callback):
    """After each training epoch: stop the clock, score the test split, record (train seconds, metric). One clock
    from the start of training, less the scoring: what happens between epochs (the recipe's epoch-end metrics,
    early stopping) counts, as in train.py's train_seconds (in the next point: Lightning runs them after this).
    A Lightning Timer (trainer.max_time) does not count the scoring either: the benchmark stops where a run of
    train.py would."""

    def __init__(self, datamodule, metric: str) -> None:
        self.datamodule, self.metric, self.points = datamodule, metric, []
        self.started, self.scoring = None, 0.0

    def on_train_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        stopped = time.perf_counter()
        self.datamodule.setup("test")
        pl_module.eval()
        with autocast(trainer.precision, pl_module.device):
            value = pl_module.score(self.datamodule.test_dataloader())[self.metric]
        pl_module.train()
        self.points.append((round(stopped - self.started - self.scoring, 2), round(value, 5)))
        scored = time.perf_counter() - stopped
        self.scoring += scored
        for timer in (c for c in trainer.callbacks if isinstance(c, Timer)):
            timer._offset -= scored  # its elapsed time less the scoring (_offset: what a resumed Timer adds)


def warm_up(cfg, datamodule, steps: int) -> float:
    """`steps` steps and a short validation of a throwaway network, untimed: torch.compile's compilation of the
    training and evaluation graphs, cuDNN's autotuning and the CUDA context happen here, not on the clock.
    Its seconds."""
    start = time.perf_counter()
    trainer = instantiate(cfg.trainer, max_steps=steps, max_epochs=-1, limit_val_batches=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[], plugins=None, _convert_="all")
    trainer.fit(assemble.build_recipe(cfg, datamodule), datamodule=datamodule)
    return round(time.perf_counter() - start, 2)


def main(argv: list[str]) -> tuple[dict, str | None]:
    options, overrides = split_options(argv, ("targets", "warmup", "out"))
    targets, warmup = number_list(options, "targets"), whole_option(options, "warmup", 0, least=0)
    cfg = train_config(overrides)
    L.seed_everything(cfg.seed)
    datamodule, _ = assemble.build(cfg)
    warmup_seconds = warm_up(cfg, datamodule, warmup) if warmup else 0.0
    L.seed_everything(cfg.seed)  # the timed network is the one a run without warm-up trains
    recipe = assemble.build_recipe(cfg, datamodule)
    metric, mode = METRIC[datamodule.task]
    clock = TestClock(datamodule, metric)
    callbacks = [instantiate(c) for name, c in cfg.callbacks.items() if c and name in ("early_stopping",)]
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[clock, *callbacks], plugins=None,
                          _convert_="all")  # plain containers, as train.py's Trainer gets (max_time={minutes: 30})
    trainer.fit(recipe, datamodule=datamodule)
    better = (lambda v, t: v >= t) if mode == "max" else (lambda v, t: v <= t)
    reached = {str(t): next((s for s, v in clock.points if better(v, t)), None) for t in targets}
    result = {"model": cfg.model.net._target_, "data": cfg.data._target_, "device": assemble.device_name(trainer),
              "torch": torch.__version__, "metric": metric, "seconds_to_target": reached,
              "curve": clock.points, "warmup_steps": warmup, "warmup_seconds": warmup_seconds, "overrides": overrides,
              **peak_memory()}
    return result, options.get("out")


if __name__ == "__main__":
    run(main)
