"""Accuracy floors on the real data this machine holds: each model, trained briefly through train.py's own path,
must learn its real dataset well above chance. The floors sit below the lowest of seeds 42, 1 and 2 (measured
values in the comments); the full-length figures are the README's.

Fashion-MNIST from Debian's dataset-fashion-mnist, the advertising CSV and tinyshakespeare from ../shared/datasets.
"""
import pytest

import train as train_module
from data import DEBIAN_FASHION_MNIST
from tests.conftest import SHARED, make_config

QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]


def needs(path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (see the README's set-up)")


@needs(DEBIAN_FASHION_MNIST)
def test_the_cnn_learns_fashion_mnist(tmp_path):
    # 10,000 training images, 2 epochs (78 steps, ~14 s of training here); tested on all 10,000 test images.
    metrics = train_module.train(make_config("model=cnn", "data.train_size=10000", "data.val_size=1000",
                                             "trainer.max_epochs=2", "callbacks.result_figures=null", *QUIET,
                                             output_dir=tmp_path))
    assert metrics["test/acc"] > 0.78, metrics  # 0.814-0.821; chance is 0.10 (the full run: 0.927)


@needs(SHARED / "advertising.csv")
def test_the_dnn_learns_who_clicks_on_the_advertising_csv(tmp_path):
    # The data=advertising preset as a user runs it: up to 40 epochs, early stopping (15 epochs, ~3 s of training).
    metrics = train_module.train(make_config("model=dnn", "data=advertising", f"data.path={SHARED / 'advertising.csv'}",
                                             "callbacks.result_figures=null", *QUIET, output_dir=tmp_path))
    assert metrics["test/auroc"] > 0.98 and metrics["test/acc"] > 0.94, metrics  # 0.990-0.991 and 0.970-0.975


@needs(SHARED / "tinyshakespeare.txt")
def test_the_lstm_learns_shakespeares_characters(tmp_path):
    # A 1x128 LSTM, 200 steps of 32 windows of 64 characters (~9 s of training); scored on 10 batches of 64
    # windows of 512 characters.
    metrics = train_module.train(make_config(
        "model=lstm", "data=tinyshakespeare", f"data.path={SHARED / 'tinyshakespeare.txt'}", "data.seq_len=64",
        "model.net.hidden_size=128", "model.net.num_layers=1", "trainer.max_steps=200",
        "trainer.limit_train_batches=200", "trainer.limit_val_batches=10", "trainer.limit_test_batches=10",
        "callbacks.text_samples=null", *QUIET, output_dir=tmp_path))
    # 2.21-2.23 nats/char against 3.36 for the best guess that ignores context (the characters' frequencies)
    assert metrics["test/loss"] < 2.45 < metrics["test/unigram_loss"], metrics


@needs(SHARED / "tinyshakespeare.txt")
def test_the_lstm_gpu_presets_logging_interval_fits_in_an_epoch_of_tinyshakespeare(tmp_path):
    # Lightning warns on every fit whose epoch has fewer batches than log_every_n_steps (its loggers get a point
    # every n steps across epochs all the same): the preset's interval is within the corpus's 30 steps an epoch.
    from models.assemble import instantiate_data
    cfg = make_config("experiment=lstm_gpu", f"data.path={SHARED / 'tinyshakespeare.txt'}", output_dir=tmp_path)
    datamodule = instantiate_data(cfg.data)
    datamodule.setup("fit")
    assert cfg.trainer.log_every_n_steps <= len(datamodule.train_dataloader()) == 30
