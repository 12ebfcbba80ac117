"""Datasets as LightningDataModules. Each one tells the model what it needs to know (`net_kwargs`)."""
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


def class_names(datamodule, num_classes: int) -> list[str]:
    """The names a DataModule gives its classes (`classes`, e.g. Fashion-MNIST's "T-shirt/top"), else "0", "1", ..."""
    return [str(name) for name in getattr(datamodule, "classes", range(num_classes))]
