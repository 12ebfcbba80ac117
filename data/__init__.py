"""Datasets as LightningDataModules. Each one tells the model what it needs to know (`net_kwargs`)."""
import os
import stat
import tempfile
from pathlib import Path

# Real Fashion-MNIST offline: the .gz IDX files of Debian's `dataset-fashion-mnist` (apt-get install -y ...).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class UserInputError(Exception):
    """Bad user input (missing file, wrong column, corrupt data): train.py prints it as one line."""


def check_folder(setting: str, folder: Path) -> Path:
    """A folder that is there or can be made: a file in the way is a one-line error (not NotADirectoryError).
    Returns the deepest part of the path that exists: the folder, or where it would be made."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserInputError(f"{setting}={folder}: {existing} is a file, not a folder; give a folder")
    return existing


def write_problem(folder: Path) -> str | None:
    """Make `folder` and see that files can be written in it: None, or why not (a file in the way, or a place where
    folders cannot be made or written: /sys, /proc, a read-only disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=folder))  # writable? (os.access says yes to root on a read-only file system)
    except OSError as err:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        return f"{existing} is a file" if not existing.is_dir() else err.strerror
    return None


def make_folder(setting: str, value, folder: Path) -> None:
    """Make `folder` (the one `setting`=value names, or one inside it) to write files into: a file in the way, or a
    place where folders cannot be made or written (/sys, /proc, a read-only disk), is a one-line error."""
    if why := write_problem(folder):
        named = "it" if folder == Path(value) else folder
        raise UserInputError(f"{setting}={value}: cannot make or write {named} ({why}); choose a folder you can "
                             f"write to: {setting}=DIR")


def not_a_file(path: Path) -> str | None:
    """Why `path` is not a data file to read ("no such file", "a folder", the special file it is: /dev/null reads as
    empty, /dev/zero without end, a pipe once), or None for a regular file (or a link to one)."""
    if path.is_file():
        return None
    if path.is_dir():
        return "a folder"
    if not path.exists():
        return "no such file"
    mode = path.stat().st_mode
    kind = next((k for test, k in [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                                   (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")] if test(mode)), "special")
    return f"{kind}, not a regular file"


def count(n: int, noun: str, spec: str = "") -> str:
    """`n` with `noun`, plural unless n is 1: "1 row", "0 rows", "1,200 rows" (spec ",")."""
    return f"{n:{spec}} {noun}{'' if n == 1 else 's'}"


def class_names(datamodule, num_classes: int) -> list[str]:
    """The names a DataModule gives its classes (`classes`, e.g. Fashion-MNIST's "T-shirt/top"), else "0", "1", ..."""
    return [str(name) for name in getattr(datamodule, "classes", range(num_classes))]
