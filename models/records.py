"""The files a run writes about itself, and reading them back: metrics.json (written whole or not at all, so a kill
mid-write never leaves half a record) and Hydra's .hydra/overrides.yaml. A damaged one is a one-line error naming
it, not a traceback."""
import errno
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from data import UserInputError


def stdout_closed() -> int:
    """After a BrokenPipeError (the reader of stdout, `| head`, has gone): stop quietly, as other command-line tools
    do, with exit code 1. Later writes, and Python's flush at exit, go to /dev/null instead of raising again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk, a full quota, a file larger than allowed


@contextmanager
def writes_reported(where: str, advice: str = "make room, or write elsewhere") -> Iterator[None]:
    """A write to `where` that fails for want of room (`WRITE_FAILURES`) as one error line, not a traceback."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_FAILURES:
            raise
        raise UserInputError(f"{where}: cannot write to it ({err.strerror}); {advice}") from None


def descriptor(path: str | Path) -> int | None:
    """N for a path that names this process's open file descriptor N: /dev/stdout (1), /dev/stderr (2), /dev/fd/N,
    /proc/self/fd/N, each a link to whatever the descriptor has open; else None. Where that is a regular file (a
    shell's `> log` or `>> log`, a batch job's output file), the path resolves to the file, and replacing the file
    or opening it anew would write over what the shell wrote there before and lose what it writes after."""
    folders = {Path("/dev/fd"), Path("/proc/self/fd"), Path(f"/proc/{os.getpid()}/fd")}
    link = Path(os.path.abspath(Path(path).expanduser()))
    for _ in range(40):  # (a loop of links ends here)
        if link.parent in folders and link.name.isdigit():
            return int(link.name)
        if not link.is_symlink():
            return None
        link = Path(os.path.abspath(link.parent / os.readlink(link)))
    return None


@contextmanager
def written_whole(path: str | Path, newline: str | None = None) -> Iterator[TextIO]:
    """A text file to write `path` through, whole or not at all: a temporary file beside it, renamed over it when the
    block ends without an error (an error or Ctrl-C halfway leaves an earlier `path` as it was; a full disk is one
    error line, `writes_reported`). A symlink's target is
    replaced, the link kept. What is not a regular file (a pipe, a device) is written to directly: renaming over it
    would put a file in its place; /dev/stdout, /dev/fd/N (`descriptor`) through the open descriptor."""
    path = Path(path).expanduser()
    if (fd := descriptor(path)) is not None:  # /dev/stdout, /dev/fd/N: through the descriptor, where it has got to
        sys.stdout.flush()  # (what was printed before comes first)
        sys.stderr.flush()
        with writes_reported(str(path)), open(fd, "w", newline=newline, closefd=False) as f:
            yield f
        return
    if path.exists() and not path.is_file():
        with writes_reported(str(path)), open(path, "w", newline=newline) as f:
            yield f
        return
    path = path.resolve()
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with writes_reported(str(path)):
            with open(partial, "w", newline=newline) as f:
                yield f
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON in `path`, whole or not at all (`written_whole`)."""
    with written_whole(path) as f:
        f.write(json.dumps(data, indent=2) + "\n")


def logged_step(trainer) -> int:
    """The step Lightning logs scalars at now (its logger connector's count of optimizer steps): what figures,
    text and the hparams tab are logged at, beside the scalars of the same validation or test. At a validation's
    end that is one less than `trainer.global_step`, which would put them a step later, and past the purge of a
    run resumed from the checkpoint written at that validation (TensorBoard's purge_step): lost for good."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def graph_written(trainer: L.Trainer) -> None:
    """After fit: the network's graph (`+logger.log_graph=true`) is in TensorBoard. Lightning writes it at the start
    of every stage, so trainer.test wrote a second, the same network traced again, which TensorBoard overwrites the
    first with, warning "Found more than one graph event per run"."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger._log_graph = False  # (Lightning's switch, the argument log_graph)


@rank_zero_only
def log_hparams_tab(logger: Logger, settings: dict, metrics: dict, logged: set, step: int) -> None:
    """TensorBoard's hparams tab: the run's settings and `metrics`, so runs can be compared there. Those `logged`
    already (the test's, at `step`) are only named, the others logged at `step`: Lightning's
    log_hyperparams(settings, metrics) would log them all, a second point on each test chart."""
    if not isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(settings)
        return
    from torch.utils.tensorboard.summary import hparams

    logger.hparams.update(settings)  # also in its hparams.yaml
    logger.log_metrics({k: v for k, v in metrics.items() if k not in logged}, step)
    writer = logger.experiment._get_file_writer()
    for summary in hparams(settings, metrics):
        writer.add_summary(summary, step)


def read_metrics(run: str | Path) -> dict:
    """The run's metrics.json."""
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: give a run directory written by train.py")
    try:
        metrics = json.loads(path.read_text())
    except (ValueError, OSError) as err:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise UserInputError(f"{path} is not the JSON train.py writes ({err}): restore it, or delete it and "
                             f"score the run's best checkpoint again with `python eval.py ckpt_path=...`") from None
    if not isinstance(metrics, dict):
        raise UserInputError(f"{path} is not the JSON train.py writes (no mapping of metric names to values)")
    return metrics


def read_overrides(run: str | Path) -> list[str]:
    """The run's command-line overrides as Hydra saved them (.hydra/overrides.yaml), e.g. ["model.lr=0.01"]."""
    saved = Path(run) / ".hydra" / "overrides.yaml"
    if not saved.exists():
        return []
    try:
        overrides = yaml.safe_load(saved.read_text()) or []
    except (yaml.YAMLError, ValueError, OSError) as err:
        raise UserInputError(f"{saved} is not the list of overrides Hydra writes ({type(err).__name__}): restore "
                             "it, or give the run's settings on the command line") from None
    if not isinstance(overrides, list):
        raise UserInputError(f"{saved} is not the list of overrides Hydra writes (a list of KEY=VALUE lines)")
    return [str(o) for o in overrides]


def read_checkpoint(path: str | Path) -> dict:
    """Tensors and plain containers only (weights_only). Memory-mapped: a tensor's bytes are read when used, so
    reading a checkpoint's hyperparameters (resume checks, configs) costs milliseconds even for gigabytes of
    embeddings and optimizer state. Files in torch's pre-1.6 format cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def verify_checksums(path: str | Path) -> None:
    """A checkpoint's bytes against the CRC-32 that torch.save records for each of its parts (the zip format's): a
    bit flipped on a disk or in a copy, in a tensor's bytes, is read by torch.load without a word (weights of NaN or
    noise, scored and predicted with). A file in torch's pre-1.6 format, or saved without checksums (torch's
    set_crc32_options(False) records 0 for every part), is not checked."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        for part in archive.infolist():
            if part.CRC == 0:  # none recorded
                continue
            try:
                with archive.open(part) as f:  # zipfile checks the CRC-32 when the part is read to its end
                    while f.read(1 << 24):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                why = "its bytes fail the CRC-32 check the file records" if "CRC" in str(err) else str(err)
                raise UserInputError(f"{path} is not a readable checkpoint ({part.filename} is damaged: {why}, e.g. "
                                     "a bad copy or disk): copy it again, or use the run's other checkpoint") from None
