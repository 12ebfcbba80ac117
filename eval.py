"""Evaluate a trained checkpoint on its test split: `python eval.py ckpt_path=RUN/checkpoints/best.ckpt`.

The network comes from the checkpoint alone (`models.recipe.load_recipe`), the data from the config stored in it,
so this reproduces the test metrics train.py wrote to RUN/metrics.json, on as much of the test split as the run
scored: its trainer.limit_test_batches, unless given here. A count is multiplied by the run's DDP processes and
shared among this command's (trainer.devices=N); a count of batches, debug=fast's 2, covers other examples with
another data.eval_batch_size; a fraction of a DDP run's test split is near, not exact (a note says so).
`paths.data_dir=DIR` or `data.KEY=VALUE` change the data (the dataset moved; a larger eval batch), never its test
split nor what its training split fits (models.runs.SPLIT_SETTINGS); `trainer.KEY=VALUE` the Trainer
(`trainer.accelerator=cpu`).
Prints the test metrics and writes them to RUN/metrics_eval.json, or to `out=FILE`.
"""
import json
import sys
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from data import UserInputError
from models.checks import check_batch_limit, fraction_of_a_batch_refused
from models.recipe import load_recipe
from models.records import stdout_closed, write_json, writes_reported
from models.runs import build_datamodule, load_checkpoint, parse_arguments, reference_metrics, unwritable
from models.signatures import check_trainer_args

USAGE = ("python eval.py ckpt_path=RUN/checkpoints/best.ckpt [out=FILE] [paths.data_dir=DIR] [data.KEY=VALUE ...] "
         "[trainer.KEY=VALUE ...]")


def evaluate(ckpt_path: str | Path, data_overrides: list[str] = (), trainer_options: dict | None = None) -> dict:
    """The checkpoint's test metrics (plus the data's reference metrics, as in metrics.json)."""
    trainer_options = trainer_options or {}
    check_trainer_args(OmegaConf.create(trainer_options))  # as train.py checks them: a name, then the type
    if trainer_options.get("limit_test_batches") == 0:
        raise UserInputError("trainer.limit_test_batches=0 scores nothing: give a fraction or a number of batches > 0")
    if trainer_options.get("limit_test_batches") is not None:
        check_batch_limit("test", trainer_options["limit_test_batches"])
    checkpoint = load_checkpoint(ckpt_path)  # a missing or foreign file is a one-line error, before anything is built
    recipe = load_recipe(str(ckpt_path))
    config = recipe.hparams.config
    datamodule = build_datamodule(config["data"], data_overrides, trained_on=checkpoint)
    # The precision it was trained and tested with, and the part of the test split it was scored on
    # (trainer.limit_test_batches, debug=fast's); the device wherever this runs.
    limit, processes = config["trainer"].get("limit_test_batches"), checkpoint.get("world_size", 1)
    if isinstance(limit, int):  # a count of batches per process; each of a DDP run's processes scored its own shard
        limit *= processes  # of batch-interleaved rows: as many batches from the split's start
    elif limit is not None and 0 < limit < 1 and processes > 1 and "limit_test_batches" not in trainer_options:
        # each process took the fraction of its own shard's batches, rounding down: not the split's first rows
        print(f"note: the run's {processes} DDP processes each scored trainer.limit_test_batches={limit} of their "
              "own shard; this scores that fraction of the whole split, which differs by up to a batch a process: "
              "give trainer.limit_test_batches=N (a count) to compare exactly", file=sys.stderr)
    options = {"accelerator": "auto", "devices": 1, "precision": config["trainer"].get("precision", "32-true"),
               **({"limit_test_batches": limit} if limit else {}),
               "logger": False, "enable_checkpointing": False, "enable_model_summary": False,
               "enable_progress_bar": False, **trainer_options}
    try:  # fails e.g. for accelerator=gpu without a GPU, or accelerator=tpu without torch_xla (an ImportError)
        trainer = L.Trainer(**options)
    except (TypeError, ValueError, MisconfigurationException, ImportError) as err:
        raise UserInputError(f"trainer options {trainer_options}: {err}") from err
    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):  # ddp_spawn, ddp_fork
        raise UserInputError(f"trainer.strategy={trainer_options.get('strategy')}: use trainer.strategy=ddp for "
                             "several processes (the scores of spawned or forked ones never come back to eval.py)")
    if isinstance(limit, int) and "limit_test_batches" not in trainer_options and trainer.world_size > 1:
        # this command's processes share the run's batches (each would score the count, world_size times as many)
        trainer.limit_test_batches = -(-limit // trainer.world_size)
        if limit % trainer.world_size and trainer.global_rank == 0:
            print(f"note: the run scored {limit} test batches; {trainer.world_size} processes score "
                  f"{trainer.limit_test_batches} each, {trainer.limit_test_batches * trainer.world_size} in all: give "
                  "a trainer.devices that divides it to compare exactly", file=sys.stderr)
    with fraction_of_a_batch_refused():
        metrics = trainer.test(recipe, datamodule=datamodule, verbose=False)[0]
    return {**metrics, **reference_metrics(datamodule, trainer)}


def output_path(ckpt_path: Path) -> Path:
    """RUN/metrics_eval.json beside RUN/metrics.json, for a checkpoint in RUN/checkpoints/."""
    run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return run / "metrics_eval.json"


def main(argv: list[str]) -> int:
    try:
        options, data, trainer = parse_arguments(argv, USAGE, required=("ckpt_path",), optional=("out",),
                                                 out_name="metrics_eval.json")
        ckpt_path = Path(options["ckpt_path"])
        out = Path(options.get("out") or output_path(ckpt_path)).expanduser()
        if "out" not in options and ckpt_path.is_file() and (why := unwritable(out)):  # (out= is checked so too)
            raise UserInputError(f"{out}: cannot write there ({why}), where eval.py writes the metrics of a "
                                 "checkpoint in RUN/checkpoints/: give out=FILE in a folder you can write")
        metrics = evaluate(ckpt_path, data, trainer)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if rank_zero_only.rank != 0:  # trainer.devices=N: the other processes leave the output to the first
        return 0
    saved = {**metrics, "checkpoint": str(ckpt_path), "data_overrides": data}
    try:
        try:
            with writes_reported("stdout"):  # (a full disk behind `> FILE`)
                print(json.dumps({k: v for k, v in metrics.items() if k.startswith("test/")}, indent=2),
                      flush=True)  # first: out= may fail
        except BrokenPipeError:  # the reader of stdout has gone (`| grep -q acc`): the file is written all the same
            stdout_closed()
        write_json(out, saved)
    except UserInputError as err:  # a full disk
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
