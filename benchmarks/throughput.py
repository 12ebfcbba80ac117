"""Training throughput: the project's Lightning path against a plain PyTorch loop, same process, same
network, batches, loss, optimizer and schedule. Prints JSON.

    python benchmarks/throughput.py model=cnn [steps=200] [warmup=20] [repeats=3] [profile=N] [out=FILE] [overrides ...]

Both paths get `warmup` untimed steps, then `steps` timed ones (the GPU is synchronized at both ends), on a fresh
network each time; the two paths take turns `repeats` times and each reports its best run (a shared machine's slow
spells only ever slow a run down) next to all of them.
Validation, checkpoints, logging and the progress bar are off in both: this measures the training step.
Samples are images, table rows or windows of text (and, for a language model, characters are counted too); peak
GPU memory is each path's own (the dataset on the GPU included), peak RSS the process's.
`profile=N` then runs each path once more, N steps after the same warm-up, under torch.profiler: where a step's time
goes (benchmarks/measure.py, profile_summary), in the JSON's "profile". Its wall time counts the profiler's own cost.
"""
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from data import UserInputError  # noqa: E402
from models import assemble  # noqa: E402
from benchmarks.arguments import run, split_options, train_config, whole_option  # noqa: E402
from benchmarks.measure import autocast, peak_memory, profile_summary, profiled_activities, sync  # noqa: E402
from models.recipe import decayed_parameters  # noqa: E402


class Clock(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step (not the run's end: the epoch-end
    metrics of the epoch the step budget cuts short are not a training step, and the plain loop has none). A
    profiler given is started and stopped with the clock."""

    def __init__(self, warmup: int, profiler: torch.profiler.profile | None = None) -> None:
        self.warmup, self.start, self.seconds, self.profiler = warmup, None, None, profiler

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = start_window(pl_module.device, self.profiler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps:
            self.seconds = end_window(pl_module.device, self.start, self.profiler)


def start_window(device: torch.device, profiler: torch.profiler.profile | None) -> float:
    """The timed steps begin: the GPU's queue empty, the profiler (if any) on; the clock's start."""
    sync(device)
    if profiler is not None:
        profiler.start()
    return time.perf_counter()


def end_window(device: torch.device, start: float, profiler: torch.profiler.profile | None) -> float:
    """The timed steps end, their work on the GPU done: their seconds (then the profiler, if any, stops)."""
    sync(device)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.stop()
    return seconds


def plain_loop(recipe, loader, steps: int, warmup: int, precision: str, clip: float | None = None,
               clip_algorithm: str = "norm", profiler: torch.profiler.profile | None = None) -> float:
    """The hand-written loop: the seconds `steps` optimizer steps take after `warmup` untimed ones. It does what
    the recipe's step does (loss, label smoothing, L1 penalty, gradient clipping by norm or by value, optimizer,
    schedule; with 16-mixed, the gradient scaler Lightning adds) and nothing else. Its clock, like Lightning's, covers
    the making of steps - 1 batches: the first timed one is made before it starts, and no batch after the last one."""
    net, device, l1 = recipe.net, recipe.device, recipe.hparams.l1
    decayed = decayed_parameters(net)
    config = recipe.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
    forward = autocast(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=str(precision) == "16-mixed")
    net.train()
    done, start = 0, None
    while done < warmup + steps:
        for *inputs, targets in loader:
            if done == warmup:
                start = start_window(device, profiler)
            # as Lightning does with each batch (nothing to do for a dataset already on the device)
            inputs, targets = [x.to(device, non_blocking=True) for x in inputs], targets.to(device, non_blocking=True)
            with forward:
                logits = net(*inputs)
                loss = recipe.smoothed(recipe.loss(logits, targets)[0], logits)
            if l1:
                loss = loss + l1 * sum(p.abs().sum() for p in decayed)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                if clip_algorithm == "value":
                    torch.nn.utils.clip_grad_value_(net.parameters(), clip)
                else:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            done += 1
            if done == warmup + steps:
                break
    return end_window(device, start, profiler)


def lightning_run(cfg, datamodule, steps: int, warmup: int, profiler: torch.profiler.profile | None = None):
    """`warmup` + `steps` steps of trainer.fit on a fresh network; (timed seconds, trainer). The budget is those
    steps alone: a trainer.max_time guard of the config (model=lstm's 9.5 minutes, experiment=lstm_gpu's 2) would end
    the run before its last step, which the clock would never see."""
    L.seed_everything(cfg.seed)
    recipe, clock = assemble.build_recipe(cfg, datamodule), Clock(warmup, profiler)
    trainer = instantiate(cfg.trainer, max_steps=warmup + steps, max_epochs=-1, max_time=None, limit_val_batches=0,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[clock], plugins=None, _convert_="all")
    trainer.fit(recipe, datamodule=datamodule)
    # Its loader holds its own device copy of the training data: kept, it would count in the next run's peak memory
    trainer.fit_loop._combined_loader = None  # (the plain run needs only the trainer's settings and device)
    return clock.seconds, trainer


def plain_run(cfg, datamodule, trainer, steps: int, warmup: int,
              profiler: torch.profiler.profile | None = None) -> float:
    """The same fresh network (same seed) through the hand-written loop; its timed seconds."""
    L.seed_everything(cfg.seed)
    plain = assemble.build_recipe(cfg, datamodule)
    plain.trainer = trainer  # only for configure_optimizers' schedule length
    plain.to(trainer.strategy.root_device)
    if cfg.model.get("channels_last"):
        plain.net.to(memory_format=torch.channels_last)
    loader = datamodule.train_dataloader()
    loader.epoch = 0  # the Lightning run's epochs from the first, counted by the loader (not the finished trainer)
    # trainer.precision as Lightning normalized it ("bf16" -> "bf16-mixed"): what the Lightning path ran
    return plain_loop(plain, loader, steps, warmup, str(trainer.precision), cfg.trainer.get("gradient_clip_val"),
                      cfg.trainer.get("gradient_clip_algorithm") or "norm", profiler)


def both_paths(cfg, datamodule, steps: int, warmup: int, profile: bool = False) -> tuple[dict, object]:
    """One run of each path on a fresh network, Lightning's first (the plain loop takes its trainer's settings):
    ({path: (timed seconds, peak GPU MiB or None without a GPU, its torch.profiler or None)}, Lightning's trainer)."""
    runs, trainer = {}, None
    for path in ("lightning", "plain"):
        gc.collect()  # the previous run's network, gradients and optimizer state: not in this path's peak
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        profiler = torch.profiler.profile(activities=profiled_activities()) if profile else None
        if path == "lightning":
            timed, trainer = lightning_run(cfg, datamodule, steps, warmup, profiler)
        else:
            timed = plain_run(cfg, datamodule, trainer, steps, warmup, profiler)
        peak = peak_memory()["peak_gpu_mib"] if torch.cuda.is_available() else None
        runs[path] = (timed, peak, profiler)
    return runs, trainer


def main(argv: list[str]) -> tuple[dict, str | None]:
    options, overrides = split_options(argv, ("steps", "warmup", "repeats", "profile", "out"))
    steps, warmup = whole_option(options, "steps", 200, least=1), whole_option(options, "warmup", 20, least=0)
    repeats = whole_option(options, "repeats", 3, least=1)
    profiled_steps = whole_option(options, "profile", 0, least=0)
    cfg = train_config(overrides)
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:  # the plain loop steps after every batch
        raise UserInputError(f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches}: throughput.py "
                             "times optimizer steps of one batch each; leave it at 1 (or give a larger "
                             "data.batch_size)")
    L.seed_everything(cfg.seed)
    datamodule, _ = assemble.build(cfg)  # the data once; every run below gets a fresh network
    seconds = {"lightning": [], "plain": []}
    peak_gpu_mib = {"lightning": 0.0, "plain": 0.0}  # each path's peak, the data on the GPU included
    for _ in range(repeats):  # alternated, so a slow spell of a shared machine hits both paths alike
        runs, trainer = both_paths(cfg, datamodule, steps, warmup)
        for path, (timed, peak, _) in runs.items():
            seconds[path].append(timed)
            if peak is not None:
                peak_gpu_mib[path] = max(peak_gpu_mib[path], peak)

    # What one training batch holds, counted on a batch (a streamed loader's batch_size counts blocks of rows):
    # samples (images, rows, windows of text) and targets (characters, for a language model).
    *_, targets = next(iter(datamodule.train_dataloader()))
    batch = len(targets)

    def rate(per_step, s):
        return round(steps * per_step / s, 1)

    result = {
        "model": cfg.model.net._target_, "data": cfg.data._target_, "device": assemble.device_name(trainer),
        "torch": torch.__version__, "lightning": L.__version__, "precision": str(cfg.trainer.precision),
        "batch_size": batch, "steps": steps, "repeats": repeats,
        # The best of the repeats (the least disturbed run, as timeit reports), and every run's figure.
        "lightning_samples_per_s": rate(batch, min(seconds["lightning"])),
        "plain_samples_per_s": rate(batch, min(seconds["plain"])),
        "lightning_runs": [rate(batch, s) for s in seconds["lightning"]],
        "plain_runs": [rate(batch, s) for s in seconds["plain"]],
        "peak_rss_mib": peak_memory()["peak_rss_mib"],
        "peak_gpu_mib": peak_gpu_mib if torch.cuda.is_available() else None,
    }
    if datamodule.task == "lm":
        result["lightning_chars_per_s"] = rate(targets.numel(), min(seconds["lightning"]))
        result["plain_chars_per_s"] = rate(targets.numel(), min(seconds["plain"]))
    result["ratio"] = round(result["lightning_samples_per_s"] / result["plain_samples_per_s"], 3)
    # Milliseconds a step (best runs), and what Lightning adds to each: a fixed cost, whatever the network, so the
    # ratio any step time would give is plain / (plain + overhead).
    result["lightning_ms_per_step"] = round(min(seconds["lightning"]) / steps * 1e3, 3)
    result["plain_ms_per_step"] = round(min(seconds["plain"]) / steps * 1e3, 3)
    result["overhead_ms_per_step"] = round(result["lightning_ms_per_step"] - result["plain_ms_per_step"], 3)
    if profiled_steps:
        runs, _ = both_paths(cfg, datamodule, profiled_steps, warmup, profile=True)
        result["profile"] = {path: profile_summary(profiler, profiled_steps, timed)
                             for path, (timed, _, profiler) in runs.items()}
    return result, options.get("out")


if __name__ == "__main__":
    run(main)
