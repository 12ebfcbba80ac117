"""Shared fixtures: the real Hydra config, and small datasets written in the exact on-disk formats."""
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def pytest_configure(config) -> None:
    """Under pytest-xdist (pyproject's addopts: two workers), one thread per worker and per process it starts, set
    before any test module imports torch. Two threads each on two cores ran many tests 2-4x slower than alone (the
    suite: 12:24 against one process's 15:10 on the EPYC); one thread each: 3:45-4:05 against 6:17 on the Xeon."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_config(*overrides: str, output_dir: Path | None = None) -> DictConfig:
    """Compose configs/train.yaml as the CLI would, with `overrides`."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def pattern_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose class k shows a bright square at a class-specific place: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size, channels)).astype(np.uint8)
    for k in range(10):
        r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
        images[labels == k, r:r + 6, c:c + 6] = 255
    return images, labels


def damaged_copy(checkpoint: Path, out: Path) -> str:
    """`checkpoint` copied to `out` with 8 bytes inside its largest tensor overwritten (a bad disk or copy, which
    torch.load reads without a word); the name of the damaged part in the zip archive torch.save writes."""
    import zipfile

    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        part = max(archive.infolist(), key=lambda info: info.file_size)  # a weight matrix's bytes
    names, extra = struct.unpack("<HH", data[part.header_offset + 26:part.header_offset + 30])
    start = part.header_offset + 30 + names + extra  # where the part's bytes begin, after its local header
    data[start + part.file_size // 2:start + part.file_size // 2 + 8] = b"\xff" * 8
    out.write_bytes(data)
    return part.filename


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (big-endian): magic 0x0000 08 <ndim>, each dimension as int32, then the uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """DIR/MNIST/raw/ with the four uncompressed IDX files: 1200 training and 300 test images."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n, seed in (("train", 1200, 0), ("t10k", 300, 1)):
        images, labels = pattern_images(n, 28, 1, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images[..., 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """DIR/cifar-10-batches-py/ in CIFAR's python-pickle format: 5 training batches of 100, a test batch of 100."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 100, "num_vis": 3072}, f, protocol=2)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        images, labels = pattern_images(100, 32, 3, seed=10 + i)
        rows = images.transpose(0, 3, 1, 2).reshape(100, 3072)  # CIFAR rows: 1024 red, 1024 green, 1024 blue
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": rows,
                         "filenames": [f"{j}.png" for j in range(100)]}, f, protocol=2)
    return root
