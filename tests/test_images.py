"""Image datasets: the real torchvision loaders on files in the exact on-disk formats, batching, augmentation."""
import gzip
import pickle
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from data import DEBIAN_FASHION_MNIST, UserInputError
from data.batches import TensorBatches, loader_args, split_indices
from data.images import DATASETS, IDX_FILES, ImageDataModule, random_affine
from tests.cli_process import SERVER
from tests.conftest import pattern_images, write_idx


def test_mnist_loader_reads_idx_files(mnist_dir):
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train[0].shape == (1000, 1, 28, 28) and dm.val[0].shape == (200, 1, 28, 28)
    assert dm.test is None  # the test split is read only for trainer.test
    dm.setup("test")
    images, labels = dm.test
    raw = (mnist_dir / "MNIST/raw/t10k-labels-idx1-ubyte").read_bytes()[8:]
    assert images.shape == (300, 1, 28, 28) and labels.tolist() == list(raw)
    assert dm.net_kwargs == {"in_channels": 1, "num_classes": 10, "image_size": (28, 28)}


def test_validation_images_are_held_out_and_never_augmented(mnist_dir):
    augment = {"enabled": True, "translate": 2, "hflip": True}
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, augment=augment, eval_batch_size=64)
    dm.setup("fit")
    file_images = (mnist_dir / "MNIST/raw/train-images-idx3-ubyte").read_bytes()[16:]
    every = {file_images[i * 784:(i + 1) * 784] for i in range(1200)}  # noise images: all distinct
    train, val = ({bytes(x.numpy()) for x in split[0]} for split in (dm.train, dm.val))
    assert len(train) == 1000 and len(val) == 200 and not train & val and train | val == every
    x = dm.train[0].double() / 255  # normalization statistics from the training split alone
    assert torch.allclose(dm.mean.double(), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(dm.std.double(), x.std((0, 2, 3)), atol=1e-6)
    served = torch.cat([inputs for inputs, _ in dm.val_dataloader()])  # in order, plainly normalized
    assert torch.allclose(served, (dm.val[0].float() / 255 - dm.mean.view(1, -1, 1, 1)) / dm.std.view(1, -1, 1, 1))
    other = ImageDataModule("mnist", str(mnist_dir), val_size=200, split_seed=1)
    other.setup("fit")
    assert {bytes(x.numpy()) for x in other.val[0]} != val  # data.split_seed draws another validation split


def test_cifar_loader_reads_pickled_batches(cifar_dir):
    dm = ImageDataModule("cifar10", str(cifar_dir), val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.train[0].shape == (400, 3, 32, 32) and dm.test[0].shape == (100, 3, 32, 32)
    with open(cifar_dir / "cifar-10-batches-py/test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    first = torch.as_tensor(batch["data"][0].reshape(3, 32, 32))  # planes R, G, B of 32x32
    assert torch.equal(dm.test[0][0], first) and dm.test[1].tolist() == batch["labels"]
    assert dm.net_kwargs["in_channels"] == 3 and dm.classes[1] == "automobile"
    x = dm.train[0].double() / 255  # one mean and deviation per colour channel, from the training images
    assert dm.mean.shape == dm.std.shape == (3,) and torch.allclose(dm.mean.double(), x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(dm.std.double(), x.std((0, 2, 3)), atol=1e-6)


def test_a_corrupt_cifar_batch_is_named(cifar_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (cifar_dir / "cifar-10-batches-py").iterdir():
        folder.joinpath(f.name).write_bytes(f.read_bytes()[: 1000] if f.name == "data_batch_3" else f.read_bytes())
    with pytest.raises(UserInputError, match=r"could not read cifar10: .*/data_batch_3 does not unpickle to a batch "
                                             r"with images \(\w+\): a cut-short copy\?: put .* there, or set paths"):
        dm = ImageDataModule("cifar10", str(tmp_path), val_size=100, download=False)
        dm.prepare_data()
        dm.setup("fit")


def rewrite_cifar_batch(cifar_dir, tmp_path, name: str, change) -> Path:
    """A copy of the CIFAR folder whose batch `name` is `change(batch)`; its data_dir."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (cifar_dir / "cifar-10-batches-py").iterdir():
        folder.joinpath(f.name).write_bytes(f.read_bytes())
    with open(folder / name, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    with open(folder / name, "wb") as f:
        pickle.dump(change(batch), f, protocol=2)
    return tmp_path


@pytest.mark.parametrize("change, message", [
    # floats in 0..1 (a batch saved from a notebook): were divided by 255 again, in place, on every pass
    (lambda b: {**b, "data": b["data"] / 255}, r"the test images are float64 numbers, not the 0-255 bytes"),
    (lambda b: {**b, "labels": [str(y) for y in b["labels"]]}, r"the test labels are not whole class numbers \(the "
                                                               r"first: '\d'\)"),
])
def test_a_cifar_batch_of_other_types_is_refused_before_training(change, message, cifar_dir, tmp_path):
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, "test_batch", change)
    with pytest.raises(UserInputError, match=message):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch"])
def test_a_cifar_batch_of_images_in_another_layout_is_refused(name, cifar_dir, tmp_path):
    # images as (N, 32, 32, 3): torchvision reshaped them to (N, 3, 32, 32) and trained on the scrambled pixels
    hwc = lambda b: {**b, "data": b["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()}  # noqa: E731
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, name, hwc)
    with pytest.raises(UserInputError, match=rf"could not read cifar10: .*{name} holds images shaped 32x32x3, not "
                                             r"rows of 3072 \(3x32x32\): the batch was saved in another layout: "):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


def test_cifar_images_as_channels_first_arrays_read_as_the_rows_do(cifar_dir, tmp_path):
    chw = lambda b: {**b, "data": b["data"].reshape(-1, 3, 32, 32)}  # noqa: E731
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, "test_batch", chw)
    expected, read = ImageDataModule("cifar10", str(cifar_dir)), ImageDataModule("cifar10", str(data_dir))
    assert torch.equal(expected._load(train=False)[0], read._load(train=False)[0])


def test_too_few_cifar_class_names_are_named_as_the_other_suspect(cifar_dir, tmp_path):
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, "batches.meta",
                                   lambda meta: {**meta, "label_names": meta["label_names"][:5]})
    with pytest.raises(UserInputError, match=r"not a class 0-4 .*; the labels file is corrupt, or batches.meta names "
                                             r"5 classes, too few"):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


def test_a_cifar_100_batches_meta_is_named_by_the_key_it_lacks(cifar_dir, tmp_path):
    # batches.meta holds class names, not images: its problem is the key it lacks, not "a batch without images"
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, "batches.meta",
                                   lambda meta: {"fine_label_names": meta["label_names"]})  # CIFAR-100's key
    with pytest.raises(UserInputError, match=r"could not read cifar10: .*cifar-10-batches-py/batches.meta holds no "
                                             r"label_names, CIFAR-10's class names: .*: put data_batch_1..5"):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


def test_a_cut_short_batches_meta_is_named(cifar_dir, tmp_path):
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, "data_batch_1", lambda batch: batch)  # a copy
    meta = data_dir / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(meta.read_bytes()[:20])
    with pytest.raises(UserInputError, match=r"could not read cifar10: .*/batches.meta does not unpickle to the class "
                                             r"names \(\w+\): a cut-short copy\?: put"):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


@pytest.mark.parametrize("name", ["data_batch_4", "test_batch"])
@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, "labels": b["labels"][:-1]}, r"holds 100 images but 99 labels: a damaged copy\?"),
    (lambda b: {"data": b["data"], "fine_labels": b["labels"]},  # CIFAR-100's key
     r"holds images but no labels \(CIFAR-10's key \"labels\"\): is it another dataset's batch\?"),
])
def test_a_cifar_batch_without_a_label_for_each_image_is_named_before_training(name, change, message, cifar_dir,
                                                                              tmp_path):
    # torchvision reads one label fewer without a word: the test batch's was found only after training
    data_dir = rewrite_cifar_batch(cifar_dir, tmp_path, name, change)
    with pytest.raises(UserInputError, match=rf"could not read cifar10: .*/{name} {message}: put data_batch_1..5"):
        ImageDataModule("cifar10", str(data_dir), val_size=100, download=False).prepare_data()


def test_test_images_of_another_size_are_refused_before_training(mnist_dir, tmp_path):
    from conftest import pattern_images, write_idx
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        raw.joinpath(f.name).write_bytes(f.read_bytes())
    write_idx(raw / "t10k-images-idx3-ubyte", pattern_images(300, 32, 1, seed=1)[0][..., 0])  # 32x32, not 28x28
    with pytest.raises(UserInputError, match=r"the test images are 32x32, the training images 28x28: the files are "
                                             r"from different datasets"):
        ImageDataModule("mnist", str(tmp_path), download=False).prepare_data()


def test_missing_files_give_one_clear_error(tmp_path):
    dm = ImageDataModule("mnist", str(tmp_path), download=False)
    with pytest.raises(UserInputError, match=r"MNIST/raw/ .*train-images-idx3-ubyte"):
        dm.prepare_data()


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_a_data_dir_the_download_cannot_write_is_named_as_such(name, folder, tmp_path, monkeypatch):
    # It was "not found ... and not downloadable (FileNotFoundError)", as if offline.
    if Path("/proc/self").is_dir():  # Linux: nobody, root included, makes folders in /proc
        with pytest.raises(UserInputError, match=rf"^{name} not found in /proc/self/x/{folder}/, and paths.data_dir="
                                                 r"/proc/self/x is not writable for the download \(No such file or "
                                                 r"directory\): give a writable paths.data_dir=DIR, or put .* in "
                                                 rf"/proc/self/x/{folder}/$"):
            ImageDataModule(name, "/proc/self/x").prepare_data()
    # A disk mounted read-only (which root cannot write either); no download is tried.
    monkeypatch.setattr("data.tempfile.mkdtemp", mock.Mock(side_effect=OSError(30, "Read-only file system")))
    monkeypatch.setattr(DATASETS[name].dataset, "download", mock.Mock(side_effect=OSError(30, "Read-only file system")))
    with pytest.raises(UserInputError, match=rf"paths.data_dir={tmp_path} is not writable for the download "
                                             r"\(Read-only file system\)"):
        ImageDataModule(name, str(tmp_path)).prepare_data()


def test_a_partly_copied_dataset_names_the_missing_files(mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        if f.name != "t10k-labels-idx1-ubyte":
            raw.joinpath(f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserInputError, match=r"mnist in .*MNIST/raw/ lacks t10k-labels-idx1-ubyte: put"):
        ImageDataModule("mnist", str(tmp_path), download=False).prepare_data()
    with pytest.raises(UserInputError, match="data.train_size=-100: give a number of training images >= 1"):
        ImageDataModule("mnist", str(tmp_path), train_size=-100)


def test_a_training_size_beyond_the_images_there_are_is_refused_with_the_most_it_can_be(mnist_dir):
    # data.train_size=100000 trained on Fashion-MNIST's 55,000 without a word.
    with pytest.raises(UserInputError, match=r"^data.train_size=1001: mnist has 1,000 training images \(1,200 less "
                                             r"data.val_size=200 for validation\): give at most 1000, or null for "
                                             r"all$"):
        ImageDataModule("mnist", str(mnist_dir), val_size=200, train_size=1001).setup("fit")
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, train_size=1000)
    dm.setup("fit")
    assert len(dm.train[0]) == 1000


def label_200(data: bytes) -> bytes:
    return data[:8] + bytes([200]) + data[9:]  # the first label, after the IDX header's 8 bytes


@pytest.mark.parametrize("name, corrupt, message", [
    ("train-images-idx3-ubyte", lambda data: data[:100],
     r"could not read mnist: .*MNIST/raw/train-images-idx3-ubyte is 100 bytes where its header says 940,816: put"),
    ("t10k-images-idx3-ubyte", lambda data: data[:100], "t10k-images-idx3-ubyte is 100 bytes"),  # before training
    ("train-labels-idx1-ubyte", gzip.compress, "train-labels-idx1-ubyte is still gzip-compressed: decompress it"),
    ("train-labels-idx1-ubyte", lambda data: data[:3] + bytes([3]) + data[4:],  # an images header (files swapped)
     "train-labels-idx1-ubyte has 3 dimensions where an IDX file of labels has 1: is it the other file?"),
    ("t10k-labels-idx1-ubyte", label_200, r"the test labels hold 200, not a class 0-9 \(1 such\); the labels file"),
    ("t10k-labels-idx1-ubyte", lambda data: data[:8] + bytes([10]) + data[9:], r"the test labels hold 10, not a class"),
    ("train-images-idx3-ubyte", lambda data: data[:10], r"train-images-idx3-ubyte is shorter than its header: put"),
])
def test_corrupt_idx_file_is_named(name, corrupt, message, mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        raw.joinpath(f.name).write_bytes(corrupt(f.read_bytes()) if f.name == name else f.read_bytes())
    dm = ImageDataModule("mnist", str(tmp_path), download=False)
    with pytest.raises(UserInputError, match=message):
        dm.prepare_data()


@pytest.mark.parametrize("download", [False, True])
def test_idx_files_left_gzip_compressed_are_named_not_reported_missing(download, mnist_dir, tmp_path):
    # They were "mnist not found in DIR/MNIST/raw/": torchvision extracts a .gz only when it is its own download
    # (its md5), and never with data.download=false. (Offline here: the download of the others fails.)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        packed = f.name.startswith("t10k")  # the training files decompressed, the test ones not
        raw.joinpath(f.name + ".gz" * packed).write_bytes(gzip.compress(f.read_bytes()) if packed else f.read_bytes())
    with mock.patch.object(DATASETS["mnist"].dataset, "mirrors", ["http://127.0.0.1:9/"]):  # nothing answers
        with pytest.raises(UserInputError, match=rf"^mnist in {raw}/ has t10k-images-idx3-ubyte.gz, "
                                                 r"t10k-labels-idx1-ubyte.gz, still gzip-compressed: decompress them "
                                                 rf"\(gunzip -k {raw}/\*.gz\)$"):
            ImageDataModule("mnist", str(tmp_path), download=download).prepare_data()
        cut = raw / "t10k-labels-idx1-ubyte.gz"
        cut.write_bytes(cut.read_bytes()[:20])  # gunzip would fail on it: a cut-short download
        with pytest.raises(UserInputError, match=rf"^could not read mnist: {cut} is a cut-short or damaged gzip file: "
                                                 r"delete it, and put the four uncompressed IDX files"):
            ImageDataModule("mnist", str(tmp_path), download=download).prepare_data()


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_images_without_their_labels_or_an_empty_folder_are_named_before_training(split, mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"mnist not found in .*MNIST/raw/ and not downloadable"):
        ImageDataModule("mnist", str(tmp_path), download=False).prepare_data()
    for f in (mnist_dir / "MNIST" / "raw").iterdir():  # one label fewer than images, its header saying so
        data = f.read_bytes()
        n = int.from_bytes(data[4:8], "big")
        raw.joinpath(f.name).write_bytes(data[:4] + (n - 1).to_bytes(4, "big") + data[8:-1]
                                         if f.name == f"{split}-labels-idx1-ubyte" else data)
    n = {"train": 1200, "t10k": 300}[split]
    with pytest.raises(UserInputError, match=rf"mnist in .*MNIST/raw/: {split}-images-idx3-ubyte holds {n:,} images "
                                             rf"but {split}-labels-idx1-ubyte {n - 1:,} labels: the two files are "
                                             r"from different releases; put the four"):
        ImageDataModule("mnist", str(tmp_path), download=False).prepare_data()  # the test files too: not after fit


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs `apt-get install -y dataset-fashion-mnist`")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"left by an interrupted copy")  # only the missing ones are copied
    (raw / "train-labels-idx1-ubyte.part").write_bytes(b"half")
    dm = ImageDataModule("fashion_mnist", str(tmp_path), download=False)
    with pytest.raises(UserInputError, match=r"could not read fashion_mnist: .*train-images-idx3-ubyte does not start "
                                             r"as an IDX file .* \(delete it: it is copied again from the Debian"):
        dm.prepare_data()
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                                     "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    (raw / "train-images-idx3-ubyte").unlink()
    dm.prepare_data()  # decompresses into tmp_path/FashionMNIST/raw/
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train[0]) + len(dm.val[0]) == 60_000 and len(dm.test[0]) == 10_000
    assert dm.classes[0] == "T-shirt/top" and torch.bincount(dm.test[1]).tolist() == [1000] * 10


def test_a_data_dir_where_the_copy_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    # The Debian copy into paths.data_dir ended in PermissionError (/sys), FileNotFoundError (/proc) or
    # NotADirectoryError (a file where FashionMNIST/ goes) tracebacks.
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in IDX_FILES:
        (debian / f"{name}.gz").write_bytes(gzip.compress(b"never read"))
    monkeypatch.setattr("data.images.DEBIAN_FASHION_MNIST", debian)
    data = tmp_path / "data"
    data.mkdir()
    (data / "FashionMNIST").write_text("a file")
    with pytest.raises(UserInputError, match=rf"^paths.data_dir={data}: cannot make or write {data}/FashionMNIST/raw "
                                             rf"\({data}/FashionMNIST is a file\); choose a folder you can write to: "
                                             r"paths.data_dir=DIR$"):
        ImageDataModule("fashion_mnist", str(data), download=False).prepare_data()
    if Path("/proc/self").is_dir():  # Linux: nobody, root included, makes folders in /proc
        with pytest.raises(UserInputError, match=r"^paths.data_dir=/proc/self: cannot make or write "
                                                 r"/proc/self/FashionMNIST/raw \(No such file or directory\)"):
            ImageDataModule("fashion_mnist", "/proc/self", download=False).prepare_data()


def _prepare_fashion_mnist(debian: str, data_dir: str, pause: float) -> None:
    """A run's prepare_data, in a process of its own, from the package copy `debian`; `pause`: seconds to hold its
    first copy half-written, after saying so in DATA_DIR/started."""
    import data.images

    data.images.DEBIAN_FASHION_MNIST = Path(debian)
    copy = shutil.copyfileobj
    if pause:
        def held(src, dst, *args):
            shutil.copyfileobj = copy  # the first file only
            dst.write(src.read(64))
            dst.flush()
            (Path(data_dir) / "started").touch()
            time.sleep(pause)
            copy(src, dst, *args)

        shutil.copyfileobj = held
    ImageDataModule("fashion_mnist", data_dir, download=False).prepare_data()


def test_two_runs_filling_a_new_data_dir_from_the_debian_package_at_once_both_succeed(tmp_path):
    # A parallel sweep, or two terminals, on a new paths.data_dir: both copied into the same NAME.part, the second
    # truncating the first's file and renaming it away, and the first then failed (FileNotFoundError).
    debian, files = tmp_path / "debian", {}
    debian.mkdir()
    for split, n in (("train", 60), ("t10k", 20)):
        images, labels = pattern_images(n, 28, 1, seed=0)
        for name, array in ((f"{split}-images-idx3-ubyte", images[..., 0]), (f"{split}-labels-idx1-ubyte", labels)):
            write_idx(tmp_path / name, array)
            files[name] = (tmp_path / name).read_bytes()
            (debian / f"{name}.gz").write_bytes(gzip.compress(files[name]))
    data = tmp_path / "data"
    first = SERVER.Process(target=_prepare_fashion_mnist, args=(str(debian), str(data), 3.0))
    first.start()
    deadline = time.monotonic() + 120
    while not (data / "started").exists() and first.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = SERVER.Process(target=_prepare_fashion_mnist, args=(str(debian), str(data), 0.0))
    second.start()
    second.join(120)
    first.join(120)
    assert (first.exitcode, second.exitcode) == (0, 0)
    raw = data / "FashionMNIST" / "raw"
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == files  # whole, and no NAME.part left


def test_batches_cover_every_row_once_per_epoch_in_a_seeded_order():
    rows = torch.arange(103)
    loader = TensorBatches(rows, rows * 2, batch_size=10, shuffle=True, seed=7)
    first, second = [torch.cat([b[0] for b in loader]) for _ in range(2)]
    assert sorted(first.tolist()) == list(range(103)) and not torch.equal(first, second)
    again = TensorBatches(rows, rows * 2, batch_size=10, shuffle=True, seed=7, epoch=1)
    assert torch.equal(torch.cat([b[0] for b in again]), second)  # epoch 1 of a resumed run = epoch 1
    batches = TensorBatches(rows, batch_size=10, drop_last=True)
    assert len(batches) == 10 == len(list(batches))
    # Rows stay with their labels, and the order follows the run's seed (a seed sweep also varies the data order).
    assert all(torch.equal(y, 2 * x) for x, y in TensorBatches(rows, rows * 2, batch_size=10, shuffle=True))
    orders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        orders.append(next(iter(TensorBatches(rows, batch_size=103, shuffle=True, **loader_args(None))))[0])
    assert not torch.equal(*orders)


def test_a_runs_training_images_come_shuffled_anew_each_epoch_in_an_order_of_its_seed(mnist_dir, monkeypatch):
    # Through the DataModule, as a run reads them (a Trainer's epoch, seed_everything's PL_GLOBAL_SEED): not in the
    # split's order, another order every epoch, and another for another seed. The loader's own test above builds
    # TensorBatches by hand, so the DataModule's shuffle=train and loader_args' seed were never asserted.
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, batch_size=1000, on_device=False)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=0, num_training_batches=float("inf"),
                                 strategy=SimpleNamespace(root_device=torch.device("cpu")))

    def labels(epoch: int, seed: int) -> list[int]:  # one batch of all 1000 training images
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        dm.trainer.current_epoch = epoch
        return torch.cat([y for _, y in dm.train_dataloader()]).tolist()

    first = labels(0, seed=1)
    assert sorted(first) == sorted(dm.train[1].tolist()) and first != dm.train[1].tolist()  # 1000 labels: shuffled
    assert labels(1, seed=1) != first and labels(0, seed=2) != first and labels(0, seed=1) == first


def test_epochs_shortened_by_a_batch_limit_go_on_through_one_order():
    """limit_train_batches=3 of 10 batches: epochs 0-2 serve rows 0-89 of the first order, epoch 3 its last 10 and
    then the first 20 of the next order; every row once per 10 batches, as with whole epochs."""
    rows = torch.arange(100)

    def served(epoch: int, limit: int | None = 3, start: int = 0) -> list[list[int]]:
        loader = TensorBatches(rows, batch_size=10, shuffle=True, drop_last=True, seed=7, epoch=epoch,
                               epoch_batches=limit)
        if start:
            loader.load_state_dict({"epoch": epoch, "batches": start})
        return [batch[0].tolist() for batch in loader]

    whole = [served(epoch, limit=None) for epoch in range(2)]  # two whole epochs: two orders
    shortened = [b for epoch in range(7) for b in served(epoch)]  # 21 batches
    assert len(served(0)) == 3 and shortened[:20] == whole[0] + whole[1]
    assert sorted(sum(shortened[10:20], [])) == list(range(100))
    assert served(3, start=2) == served(3)[2:]  # a resume mid-epoch goes on in the same order
    assert served(0, limit=float("inf")) == whole[0]  # Lightning's count before it has counted: whole epochs


def test_a_saved_position_resumes_its_own_epoch_once():
    # Pins state_dict (batches served mid-epoch; the next epoch after a whole one) and load_state_dict: the position
    # applies to the epoch it was saved in, once, whether the epoch is counted here or read from the trainer.
    rows, now = torch.arange(50), {"epoch": 1}

    def loader(**kwargs):
        return TensorBatches(rows, batch_size=10, shuffle=True, seed=7, **kwargs)

    def served(batches):
        return [b.tolist() for (b,) in batches]

    counted = loader(epoch=lambda: now["epoch"])
    whole, batches = served(counted), iter(counted)
    next(batches), next(batches)
    assert counted.state_dict() == {"epoch": 1, "batches": 2}
    list(batches)
    assert counted.state_dict() == {"epoch": 2, "batches": 0}
    resumed = loader(epoch=lambda: now["epoch"])
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert served(resumed) == whole[2:] and served(resumed) == whole  # once: the next pass serves all
    other = loader(epoch=lambda: now["epoch"])
    other.load_state_dict({"epoch": 0, "batches": 2})  # saved in another epoch than the one in progress
    assert served(other) == whole
    numbered = loader()  # epochs counted by the loader itself, from the saved one
    numbered.load_state_dict({"epoch": 1, "batches": 2})
    assert served(numbered) == whole[2:]


def test_augmentation_draws_anew_every_pass_and_alike_in_every_run():
    # Pins the transform's generator seed: it follows (seed, pass, batch), not (seed, batch) alone.
    def draw(rows, generator):
        return (torch.rand(len(rows), generator=generator),)

    loader = TensorBatches(torch.arange(20), batch_size=10, seed=7, transform=draw)
    first, second = (torch.cat([b for (b,) in loader]) for _ in range(2))
    assert not torch.equal(first, second)
    again = TensorBatches(torch.arange(20), batch_size=10, seed=7, transform=draw, epoch=1)
    assert torch.equal(torch.cat([b for (b,) in again]), second)


def test_a_datamodules_augmentation_follows_its_batches_own_seed_not_the_global_generator(mnist_dir):
    # What makes a resumed run's augmented batches those of the uninterrupted run, whatever else drew from torch's
    # generator in between (a network built, dropout masks): the DataModule hands random_affine the batch's generator.
    augment = {"enabled": True, "translate": 2, "degrees": 10.0}
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, batch_size=100, augment=augment, on_device=False)
    dm.setup("fit")
    first = [x for x, _ in dm.train_dataloader()]
    torch.rand(1000)  # the global generator moves on
    again = [x for x, _ in dm.train_dataloader()]  # a new loader: epoch 0 again, the same order
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    plain = ImageDataModule("mnist", str(mnist_dir), val_size=200, batch_size=100, on_device=False)
    plain.setup("fit")
    assert not torch.equal(next(iter(plain.train_dataloader()))[0], first[0])  # (augmented: else this proves nothing)


def test_validation_split_is_fixed_and_disjoint():
    train, val = split_indices(100, 20, seed=0)
    assert len(val) == 20 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, split_indices(100, 20, seed=0)[1])
    assert len(split_indices(100, 0.1, seed=0)[1]) == 10
    with pytest.raises(UserInputError, match="data.val_size=0 leaves no training or no validation rows out of 100"):
        split_indices(100, 0, seed=0)
    assert len(split_indices(100, 30.0, seed=0)[1]) == 30  # a whole float is a count (data.val_size=30.0)
    for neither in (1.5, 1.0, -0.2):  # 1.5 was read as one row
        with pytest.raises(UserInputError, match=f"data.val_size={neither}: give a count of rows"):
            split_indices(100, neither, seed=0)


def test_a_shift_as_wide_as_the_image_is_refused_once_its_size_is_known(mnist_dir):
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, augment={"enabled": True, "translate": 28})
    with pytest.raises(UserInputError, match="data.augment.translate=28 is as wide as the 28x28 mnist images"):
        dm.setup("fit")  # a shift drawn from [-28, 28] on each axis: most images mostly off the canvas
    off = ImageDataModule("mnist", str(mnist_dir), val_size=200, augment={"enabled": False, "translate": 28})
    off.setup("fit")  # augmentation off: the setting is never used


def test_augmentation_translates_whole_pixels_and_mirrors():
    images = torch.rand(64, 1, 8, 8)
    assert torch.allclose(random_affine(images, 0, 0, hflip=False), images, atol=1e-6)
    mirrored = random_affine(images, 0, 0, hflip=True)
    is_flip = torch.isclose(mirrored, images.flip(3), atol=1e-6).flatten(1).all(1)
    is_same = torch.isclose(mirrored, images, atol=1e-6).flatten(1).all(1)
    assert (is_flip | is_same).all() and 10 < is_flip.sum() < 54
    shifted = random_affine(torch.ones(64, 1, 8, 8), 0, 2, hflip=False)
    assert ((shifted - shifted.round()).abs() < 1e-5).all()  # whole pixels: no pixel is blended with its neighbour
    blank_columns = (shifted.sum(2) == 0).sum(-1)  # a shift of k pixels leaves k black columns
    blank_rows = (shifted.sum(3) == 0).sum(-1)      # and k black rows, vertically
    for blank in (blank_columns, blank_rows):
        assert set(blank.flatten().tolist()) <= {0, 1, 2} and blank.max() == 2
    moved = random_affine(torch.arange(64.0).reshape(1, 1, 8, 8).expand(64, 1, 8, 8), 0, 2, hflip=False)
    inside = moved[..., 2:6, 2:6]  # away from the borders every pixel is some pixel of the original, exactly
    assert ((inside - inside.round()).abs() < 1e-4).all() and (inside.round() != moved[:1, ..., 2:6, 2:6]).any()


def test_augmentation_shifts_both_ways_and_rotates_both_ways_without_losing_the_image():
    dot = torch.zeros(256, 1, 9, 9)
    dot[..., 4, 4] = 1.0  # one pixel in the centre: where it lands is the shift
    moved = random_affine(dot, 0, 2, hflip=False, generator=torch.Generator().manual_seed(0)).flatten(1).argmax(1)
    assert set((moved % 9).tolist()) == set((moved // 9).tolist()) == {2, 3, 4, 5, 6}  # -2..+2, across and down
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disk = (((y - 7.5) ** 2 + (x - 7.5) ** 2) <= 9).float().expand(64, 1, 16, 16)
    turned = random_affine(disk, 30, 0, hflip=False, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(turned.sum((1, 2, 3)), disk.sum((1, 2, 3)), rtol=0.05)  # a rotation keeps the area
    bar = torch.zeros(64, 1, 16, 16)
    bar[..., 7:9, 9:16] = 1.0  # from the centre to the right: a turn moves it up or down
    turned = random_affine(bar, 30, 0, hflip=False, generator=torch.Generator().manual_seed(0))
    tilt = turned[..., :8, :].sum((1, 2, 3)) - turned[..., 8:, :].sum((1, 2, 3))
    assert (tilt > 1).any() and (tilt < -1).any()  # both ways: angles of either sign


@pytest.mark.parametrize("degrees", [10, 30])
def test_augmentation_turns_by_up_to_the_degrees_given_and_no_further(degrees):
    # data.augment.degrees is in degrees: a bar from the centre rightwards turns by up to that angle either way, its
    # centre of mass with it. (Taken as radians, degrees=10 turned digits by any angle, upside down too, and the
    # other augmentation tests, which ask only for turns both ways that keep the area, still passed.)
    bar = torch.zeros(256, 1, 33, 33)
    bar[..., 16, 16:] = 1.0
    turned = random_affine(bar, degrees, 0, hflip=False, generator=torch.Generator().manual_seed(0))[:, 0]
    y, x = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")
    angles = torch.rad2deg(torch.atan2((turned * y).sum((1, 2)), (turned * x).sum((1, 2))))  # (256,)
    assert degrees - 1 < angles.max() < degrees + 0.5 and -degrees - 0.5 < angles.min() < -degrees + 1


def test_mirroring_with_a_rotation_mirrors_the_rotated_image():
    images = torch.rand(64, 1, 8, 8)
    plain, mixed = (random_affine(images, 30, 1, hflip, torch.Generator().manual_seed(0)) for hflip in (False, True))
    # The same angles and shifts (the mirror is drawn after them): a mirrored image is the rotated one, flipped.
    is_flip = torch.isclose(mixed, plain.flip(3), atol=1e-5).flatten(1).all(1)
    is_same = torch.isclose(mixed, plain, atol=1e-5).flatten(1).all(1)
    assert (is_flip | is_same).all() and 10 < is_flip.sum() < 54  # never sheared


def test_training_drops_the_last_short_batch_and_validation_serves_every_row(mnist_dir):
    dm = ImageDataModule("mnist", str(mnist_dir), val_size=200, batch_size=64, eval_batch_size=64)
    dm.setup("fit")
    train = [len(y) for _, y in dm.train_dataloader()]  # 1000 images: 15 x 64 and 40 left over
    val = [len(y) for _, y in dm.val_dataloader()]
    assert train == [64] * 15 and val == [64, 64, 64, 8]
