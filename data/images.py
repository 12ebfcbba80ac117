"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's own dataset classes, held whole in memory.

The decoded uint8 images (60k x 28 x 28 is 47 MB) move to the training device once; each batch is an index
slice, converted to float and augmented there as one batched op (`random_affine`). Offline, Fashion-MNIST
comes from Debian's `dataset-fashion-mnist` package, decompressed into torchvision's `FashionMNIST/raw/`.
"""
import gzip
import math
import os
import pickle
import shutil
import zlib
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import datasets

from data import DEBIAN_FASHION_MNIST, UserInputError, check_folder, make_folder, write_problem
from data.batches import SplitLoaders, TensorBatches, data_device, loader_args, split_indices

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


class _CIFAR10(datasets.CIFAR10):
    # torchvision checks each extracted file's md5 (the downloaded archive's md5 still is): we only need the
    # files to exist and unpickle, so CIFAR-format files made elsewhere (tests, re-exports) load too.
    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def whole_gzip(file: Path) -> bool:
    """Whether a .gz file decompresses to its end (not a cut-short download)."""
    try:
        with gzip.open(file) as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error):  # not gzip (BadGzipFile), cut short, corrupt data
        return False
    return True


def cifar_problem(file: Path) -> str | None:
    """What is wrong with a CIFAR batch, or None when its images are the release's rows of 3072 bytes (1024 red,
    1024 green, 1024 blue), one label each. torchvision reshapes any data to (N, 3, 32, 32): images saved as
    (N, 32, 32, 3), as image libraries hold them, would be read with their channels and rows scrambled."""
    try:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = batch["data"]
    except Exception as err:
        return f"does not unpickle to a batch with images ({type(err).__name__}): a cut-short copy?"
    shape = tuple(getattr(data, "shape", ()))
    if shape[1:] not in ((3072,), (3, 32, 32)):  # (3, 32, 32) is the same bytes in the same order
        return (f"holds images shaped {'x'.join(map(str, shape[1:])) or type(data).__name__}, not rows of 3072 "
                "(3x32x32): the batch was saved in another layout")
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not hasattr(labels, "__len__"):
        return "holds images but no labels (CIFAR-10's key \"labels\"): is it another dataset's batch?"
    if len(labels) != shape[0]:  # torchvision would pair the first labels with the first images, silently
        return f"holds {shape[0]:,} images but {len(labels):,} labels: a damaged copy?"
    return None


def cifar_meta_problem(file: Path) -> str | None:
    """What is wrong with CIFAR-10's batches.meta (its class names), or None."""
    try:
        with open(file, "rb") as f:
            names = pickle.load(f, encoding="latin1")["label_names"]
    except KeyError:
        return "holds no label_names, CIFAR-10's class names: is it another dataset's (CIFAR-100's)?"
    except Exception as err:
        return f"does not unpickle to the class names ({type(err).__name__}): a cut-short copy?"
    return None if isinstance(names, (list, tuple)) else f"holds class names as {type(names).__name__}, not a list"


def file_problem(file: Path) -> str | None:
    """What is wrong with one of a dataset's files (named by `DATASETS`), or None."""
    if file.name in IDX_FILES:
        return idx_problem(file)
    return cifar_problem(file) if file.name != "batches.meta" else cifar_meta_problem(file)


class Source(NamedTuple):
    dataset: type[datasets.VisionDataset]  # the torchvision class that reads (or downloads) the files
    subdir: str                            # where its files live under data_dir
    offline_hint: str                      # what to put there when offline
    files: list[str]


DATASETS = {
    "mnist": Source(datasets.MNIST, "MNIST/raw", "the four uncompressed IDX files " + ", ".join(IDX_FILES), IDX_FILES),
    "fashion_mnist": Source(datasets.FashionMNIST, "FashionMNIST/raw",
                            "the four uncompressed IDX files (or run `apt-get install -y dataset-fashion-mnist`)",
                            IDX_FILES),
    "cifar10": Source(_CIFAR10, "cifar-10-batches-py",
                      "data_batch_1..5, test_batch and batches.meta from cifar-10-python.tar.gz", CIFAR_FILES),
}


def idx_problem(file: Path) -> str | None:
    """What is wrong with an IDX file of bytes (MNIST's format: 0, 0, type 0x08, the number of dimensions, each
    dimension as a big-endian int32, then the bytes), or None when its header and size agree."""
    with open(file, "rb") as f:
        head = f.read(4)
        if head[:2] == b"\x1f\x8b":
            return "is still gzip-compressed: decompress it (gunzip)"
        if len(head) < 4 or head[:3] != b"\x00\x00\x08":
            return "does not start as an IDX file of bytes does (00 00 08)"
        kind, dimensions = ("labels", 1) if "idx1" in file.name else ("images", 3)  # as the file names say
        if head[3] != dimensions:  # the images and labels files swapped, say: the sizes could still agree
            return f"has {head[3]} dimensions where an IDX file of {kind} has {dimensions}: is it the other file?"
        dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        return "is shorter than its header"
    expected = 4 + len(dims) + math.prod(int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4))
    size = file.stat().st_size
    return None if size == expected else f"is {size:,} bytes where its header says {expected:,}"


AUGMENT_SETTINGS = ("enabled", "degrees", "translate", "hflip")


def check_augment(augment: dict) -> None:
    """data.augment: known keys, booleans where booleans go, and sizes >= 0 (degrees 0-180, whole pixels)."""
    for key, value in augment.items():
        if key not in AUGMENT_SETTINGS:
            raise UserInputError(f"data.augment.{key} is not an augmentation setting; choose from "
                                 f"{', '.join(AUGMENT_SETTINGS)}")
        switch = isinstance(value, bool)  # (True is also an int to Python, not a number of pixels or degrees)
        if key in ("enabled", "hflip"):
            ok, want = switch, "true or false"
        elif key == "translate":
            ok, want = not switch and isinstance(value, int) and value >= 0, "whole pixels >= 0"
        else:  # degrees
            ok, want = not switch and isinstance(value, (int, float)) and 0 <= value <= 180, "degrees between 0 and 180"
        if not ok:
            raise UserInputError(f"data.augment.{key}={value!r}: give {want}")


def random_affine(images: Tensor, degrees: float, translate: int, hflip: bool,
                  generator: torch.Generator | None = None) -> Tensor:
    """Rotate by up to ±degrees, shift by up to ±translate whole pixels, mirror each image with probability 0.5:
    one grid_sample."""
    b, _, h, w = images.shape
    rand = dict(device=images.device, generator=generator)
    angle = (torch.rand(b, **rand) * 2 - 1) * math.radians(degrees)
    shift = torch.randint(-translate, translate + 1, (b, 2), **rand).float()
    mirror = torch.where(torch.rand(b, **rand) < 0.5, -1.0, 1.0) if hflip else torch.ones(b, device=images.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0] * 2 / w], 1),   # grid units: 2/w per pixel
                         torch.stack([sin * mirror, cos, shift[:, 1] * 2 / h], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def missing_from_debian(folder: Path) -> list[str]:
    """The IDX files Debian's Fashion-MNIST package has and `folder` lacks."""
    return [name for name in IDX_FILES
            if (DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() and not (folder / name).exists()]


def copy_debian_fashion_mnist(folder: Path) -> None:
    """Decompress into `folder` the files it lacks from Debian's package. One run at a time: two runs
    starting on a new paths.data_dir (a parallel sweep, two terminals) wrote into the same NAME.part, the second
    truncating the first's, and the first's rename then failed. The second now waits on a lock of the folder (Linux's
    flock; the package is Debian's), then copies what is still missing: nothing."""
    import fcntl

    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for name in missing_from_debian(folder):
            part = folder / f"{name}.part"  # renamed when whole: an interrupted copy is redone
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            part.rename(folder / name)
    finally:
        os.close(handle)  # and the lock with it


class ImageDataModule(SplitLoaders, L.LightningDataModule):
    task = "multiclass"
    kind = "images"  # what the network must read (its `reads`)

    def __init__(self, name: str, data_dir: str, batch_size: int = 256, eval_batch_size: int = 1000,
                 val_size: int | float = 5000, split_seed: int = 0, download: bool = True,
                 augment: dict | None = None, on_device: bool = True, train_size: int | None = None) -> None:
        super().__init__()
        if name not in DATASETS:
            raise UserInputError(f"unknown image dataset {name!r}; choose one of {sorted(DATASETS)}")
        self.name, self.root, self.download = name, Path(data_dir).expanduser(), download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.augment = {"degrees": 0.0, "translate": 0, "hflip": False, "enabled": False, **(augment or {})}
        check_augment(self.augment)
        self.on_device, self.train_size = on_device, train_size
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)
                                       or train_size < 1):
            raise UserInputError(f"data.train_size={train_size!r}: give a number of training images >= 1, "
                                 "or null for all")
        self.train = self.val = self.test = None  # (uint8 images (N, C, H, W), int64 labels (N,))
        self.classes: list[str] = []  # the class names, read with the files
        self.mean = self.std = None   # per channel, of the training split (setup), or from a checkpoint

    # -- files ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        check_folder("paths.data_dir", self.root)
        folder = self.root / DATASETS[self.name].subdir
        if self.name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
            # Debian recompressed them: the IDX inside is standard. Only the missing ones are copied: a read-only
            # data_dir that holds them all is fine.
            if missing_from_debian(folder):
                make_folder("paths.data_dir", self.root, folder)
                copy_debian_fashion_mnist(folder)
        train = self._open(train=True, download=self.download)
        test = self._open(train=False, download=False)  # checked now, not after training (read only by test)
        if train.data.shape[1:] != test.data.shape[1:]:  # the network would fail on the first test batch
            sizes = ["x".join(map(str, ds.data.shape[1:])) for ds in (test, train)]  # HxW, or HxWxC
            raise UserInputError(f"{self.name} in {folder}/: the test images are {sizes[0]}, the training images "
                                 f"{sizes[1]}: the files are from different datasets; put "
                                 f"{DATASETS[self.name].offline_hint} there")

    def _open(self, train: bool, download: bool) -> datasets.VisionDataset:
        cls, subdir, hint, files = DATASETS[self.name]
        folder = self.root / subdir
        try:
            ds = cls(self.root, train=train, download=download)  # torchvision decodes the files here
        except Exception as err:
            missing = [name for name in files if not (folder / name).is_file()]
            # torchvision extracts a NAME.gz only when it is its own download (its md5): any other copy (Debian's, a
            # re-compressed one), or one with data.download=false, was reported "not found" while lying right there.
            packed = [f"{name}.gz" for name in missing if (folder / f"{name}.gz").is_file()]
            broken = {} if missing else {name: why for name in files if (why := file_problem(folder / name))}
            if damaged := [name for name in packed if not whole_gzip(folder / name)]:  # gunzip would fail on it
                raise UserInputError(f"could not read {self.name}: {folder / damaged[0]} is a cut-short or damaged "
                                     f"gzip file: delete it, and put {hint} there") from err
            if packed:
                them = "it" if len(packed) == 1 else "them"
                raise UserInputError(f"{self.name} in {folder}/ has {', '.join(packed)}, still gzip-compressed: "
                                     f"decompress {them} (gunzip -k {folder}/*.gz)") from err
            if broken:  # name the file that is wrong
                name, why = next(iter(broken.items()))
                again = (" (delete it: it is copied again from the Debian package)"
                         if self.name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir() else "")
                problem = f"could not read {self.name}: {folder / name} {why}{again}"
            elif folder.is_dir() and len(missing) < len(files):  # some files there: name the others
                problem = (f"{self.name} in {folder}/ lacks {', '.join(missing)}" if missing else
                           f"could not read {self.name} from {folder}/ ({type(err).__name__}: {err})")
            elif download and (why := write_problem(folder)):  # torchvision's download could not make or write it
                raise UserInputError(f"{self.name} not found in {folder}/, and paths.data_dir={self.root} is not "
                                     f"writable for the download ({why}): give a writable paths.data_dir=DIR, or put "
                                     f"{hint} in {folder}/") from err
            else:
                problem = f"{self.name} not found in {folder}/ and not downloadable ({type(err).__name__})"
            raise UserInputError(f"{problem}: put {hint} there, or set paths.data_dir") from err
        split = "training" if train else "test"
        if self.name == "cifar10":  # read without error even when scrambled: each batch's layout is checked
            for name, _ in ds.train_list if train else ds.test_list:
                if why := cifar_problem(folder / name):
                    raise UserInputError(f"could not read {self.name}: {folder / name} {why}: put {hint} there")
        if torch.as_tensor(ds.data[:0]).dtype != torch.uint8:  # a CIFAR pickle of floats: scaled and read otherwise
            raise UserInputError(f"{self.name} in {folder}/: the {split} images are {ds.data.dtype} numbers, not the "
                                 f"0-255 bytes of the release: put {hint} there")
        try:
            labels = torch.as_tensor(ds.targets)
        except (TypeError, ValueError, RuntimeError):
            labels = torch.zeros(0, dtype=torch.float32)  # refused below
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.ndim != 1:
            raise UserInputError(f"{self.name} in {folder}/: the {split} labels are not whole class numbers (the "
                                 f"first: {ds.targets[0]!r}); the labels file is corrupt: put {hint} there")
        if len(labels) != len(ds.data):  # CIFAR's batches are checked one by one above: an IDX pair disagrees
            images_file, labels_file = IDX_FILES[:2] if train else IDX_FILES[2:]
            raise UserInputError(f"{self.name} in {folder}/: {images_file} holds {len(ds.data):,} images but "
                                 f"{labels_file} {len(labels):,} labels: the two files are from different releases; "
                                 f"put {hint} there")
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(ds.classes):  # corrupt: a crash mid-training
            bad = labels[(labels < 0) | (labels >= len(ds.classes))]
            meta = f", or batches.meta names {len(ds.classes)} classes, too few" if self.name == "cifar10" else ""
            raise UserInputError(f"{self.name} in {folder}/: the {split} labels hold "
                                 f"{bad[0].item()}, not a class 0-{len(ds.classes) - 1} ({len(bad)} such); the "
                                 f"labels file is corrupt{meta}: put {hint} there")
        return ds

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        ds = self._open(train, download=False)
        images = torch.as_tensor(ds.data)  # MNIST-like: (N, H, W) tensor; CIFAR: (N, H, W, C) numpy
        labels = torch.as_tensor(ds.targets, dtype=torch.long)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
        self.classes = list(ds.classes)
        return images, labels

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train is None:
            images, labels = self._load(train=True)
            train_idx, val_idx = split_indices(len(labels), self.val_size, self.split_seed)
            if self.augment["enabled"] and (shift := self.augment["translate"]) >= min(images.shape[-2:]):
                raise UserInputError(f"data.augment.translate={shift} is as wide as the {images.shape[-2]}x"
                                     f"{images.shape[-1]} {self.name} images: most shifted images would lose most "
                                     "of their content; give fewer pixels than the side (a few: 2 for 28x28, 4 for "
                                     "32x32)")
            if self.train_size is not None and self.train_size > len(train_idx):  # [:train_size] would take them all
                raise UserInputError(f"data.train_size={self.train_size}: {self.name} has {len(train_idx):,} training "
                                     f"images ({len(labels):,} less data.val_size={self.val_size} for validation): "
                                     f"give at most {len(train_idx)}, or null for all")
            train_idx = train_idx[: self.train_size]  # a small training set makes overfitting visible
            self.train, self.val = (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
            # Normalization statistics per channel, from the training split only.
            x = self.train[0].float() / 255
            self.mean, self.std = x.mean((0, 2, 3)), x.std((0, 2, 3))
        if stage == "test" and self.test is None:  # the official test split is read only here
            self.test = self._load(train=False)

    @property
    def net_kwargs(self) -> dict:
        c, h, w = self.train[0].shape[1:]
        return {"in_channels": c, "num_classes": len(self.classes), "image_size": (h, w)}

    # The normalization statistics and class names travel in every checkpoint (Lightning saves a DataModule's
    # state_dict beside the weights): predict.py prepares new images as in training without the dataset.
    def state_dict(self) -> dict:
        return {} if self.train is None else {"mean": self.mean, "std": self.std, "classes": self.classes}

    def load_state_dict(self, state: dict) -> None:
        if self.train is None and state:  # set up on its data, it keeps the statistics it computed: the same ones
            self.mean, self.std, self.classes = state["mean"], state["std"], list(state["classes"])

    # -- batches ----------------------------------------------------------------------------------
    def _batches(self, split: tuple[Tensor, Tensor], batch_size: int, train: bool) -> TensorBatches:
        device = data_device(self.trainer, self.on_device)
        augment = train and self.augment["enabled"]
        # On the data's device once: a copy from the CPU on every batch would wait for the GPU (a host sync).
        mean, std = self.mean.to(device).view(1, -1, 1, 1), self.std.to(device).view(1, -1, 1, 1)

        def to_inputs(images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            x = images.float().div_(255)  # (B, C, H, W) in [0, 1]; zero padding below is the black background
            if augment:
                x = random_affine(x, self.augment["degrees"], self.augment["translate"], self.augment["hflip"],
                                  generator)
            return (x - mean) / std, labels

        return TensorBatches(*(t.to(device) for t in split), batch_size=batch_size, shuffle=train, drop_last=train,
                             transform=to_inputs, **loader_args(self.trainer))
