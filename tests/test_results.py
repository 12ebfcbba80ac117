"""Results you can see: TensorBoard figures, the analysis notebooks, eval.py and predict.py, on one small sweep."""
import base64
import importlib
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import train as train_module
from data import UserInputError
from data.batches import TensorBatches
from models import plots, runs
from models.figures import ResultFigures, gather_rows
from models.recipe import Recipe, load_recipe
from tests.conftest import make_config, pattern_images, write_idx

eval_script, predict_script = importlib.import_module("eval"), importlib.import_module("predict")

# A small, fast CNN; two epochs so the learning curves have two points.
SMALL = ["model=cnn", "data=mnist", "trainer.max_epochs=2", "data.val_size=100", "data.batch_size=64",
         "data.eval_batch_size=100", "model.net.widths=[8,16]", "model.net.hidden_size=32",
         "trainer.log_every_n_steps=2", "callbacks.progress_bar=null", "callbacks.model_summary=null",
         "callbacks.result_figures.max_images=16"]


@pytest.fixture(scope="module")
def noisy_mnist_dir(tmp_path_factory):
    """conftest's pattern images with 10% of the labels changed: the network learns the rest, and makes mistakes."""
    root = tmp_path_factory.mktemp("noisy_mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n, seed in (("train", 500, 0), ("t10k", 200, 1)):
        images, labels = pattern_images(n, 28, 1, seed)
        rng = np.random.default_rng(seed + 100)
        flip = rng.random(n) < 0.1
        labels[flip] = (labels[flip] + rng.integers(1, 10, flip.sum())) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", images[..., 0])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="module")
def sweep(noisy_mnist_dir, tmp_path_factory):
    """A learning-rate sweep of two runs laid out as `python train.py --multirun` lays them out: DIR/0, DIR/1, each
    with .hydra/config.yaml, checkpoints, events and metrics.json. train() in-process: no second `import lightning`."""
    out = tmp_path_factory.mktemp("sweep")
    for i, lr in enumerate((0.003, 0.01)):
        cfg = make_config(*SMALL, f"paths.data_dir={noisy_mnist_dir}", f"model.lr={lr}", output_dir=out / str(i))
        train_module.train(cfg)
        (out / str(i) / ".hydra").mkdir()
        OmegaConf.save(cfg, out / str(i) / ".hydra" / "config.yaml")  # what Hydra's CLI saves
    assert [p.name for p in runs.find_runs(out)] == ["0", "1"]
    return out


def test_generate_refuses_a_checkpoint_of_another_model(sweep):
    # generate.py samples characters: a CNN's checkpoint is named as what it is, in one line.
    from generate import generate

    with pytest.raises(UserInputError, match="holds a ConvNet, not a character language model; train one with"):
        generate(str(sweep / "0" / "checkpoints" / "best.ckpt"))


STEPPED = SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=0))  # a fake trainer's logging step


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_holds_scalars_hyperparameters_and_figures(sweep):
    tb = events(sweep / "0" / "tensorboard")
    tags = tb.Tags()
    for tag in ("train/loss", "train/acc", "train/grad_norm", "val/loss", "val/acc", "test/acc", "test/loss"):
        assert tag in tags["scalars"]
    assert any(tag.startswith("lr-") for tag in tags["scalars"]), tags["scalars"]
    assert "_hparams_/experiment" in tb.PluginTagToContent("hparams")  # train.py's hparams tab
    # The hparams tab's metrics at the test's step, each test metric once: its chart had a second point at step 0.
    assert [e.step for tag in ("test/acc", "test/loss", "val/acc_best") for e in tb.Scalars(tag)] == [
        tb.Scalars("train/loss")[-1].step + 1] * 3
    tab = HParamsPluginData.FromString(tb.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert {"test/acc", "test/loss", "val/acc_best"} <= {info.name.tag for info in tab.metric_infos}
    assert "model.lr" in {info.name for info in tab.hparam_infos}
    for tag in ("val/confusion_matrix", "test/confusion_matrix", "test/predictions", "test/confident_mistakes",
                "test/first_conv_filters"):
        image = Image.open(io.BytesIO(tb.Images(tag)[-1].encoded_image_string))
        assert image.width > 100 and image.height > 100, tag
        # beside the scalars of the same validation or test: a step later, a resume's purge dropped one for good
        assert [e.step for e in tb.Images(tag)] == [e.step for e in tb.Scalars(f"{tag.split('/')[0]}/acc")], tag
    assert len(tb.Images("val/confusion_matrix")) == 2  # one per epoch


def test_figures_count_every_test_example_and_the_worst_mistakes(sweep, tmp_path):
    ckpt = runs.best_checkpoint(sweep / "0")
    recipe = load_recipe(str(ckpt))
    figures = ResultFigures(max_images=8)
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="tb", version=""), callbacks=[figures],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    datamodule = runs.build_datamodule(recipe.hparams.config["data"])
    metrics = trainer.test(recipe, datamodule=datamodule, verbose=False)[0]
    confusion = figures.results["confusion"]
    assert confusion.sum() == 200 and np.trace(confusion) / 200 == pytest.approx(metrics["test/acc"], abs=1e-6)
    # The gallery holds the most confident mistakes of the whole split, most confident first.
    images, targets, probs = figures.results["mistakes"]
    assert len(images) == 8 and (probs.argmax(1) != targets).all()
    predicted = runs.predict_split(ckpt)
    p, t = predicted["probs"], predicted["targets"]
    worst = p.amax(1)[p.argmax(1) != t].sort(descending=True).values[:8]
    torch.testing.assert_close(probs.amax(1), worst)
    torch.testing.assert_close(figures.results["samples"][0], predicted["inputs"][:8])
    # Without a TensorBoard logger the callback does nothing at all.
    quiet = ResultFigures()
    L.Trainer(logger=False, callbacks=[quiet], enable_progress_bar=False, enable_model_summary=False).test(
        recipe, datamodule=datamodule, verbose=False)
    assert quiet.results == {} and quiet._hook is None


def test_figures_gather_every_ddp_ranks_rows():
    # Rank 0's view of two ranks with shards of 5 and 4 rows: all_gather wants equal shapes, so each pads to the
    # longest, and the padding is dropped again. (tests/test_scale.py runs the real thing over gloo.)
    mine, theirs = torch.arange(10.0).view(5, 2), torch.arange(100.0, 108.0).view(4, 2)

    class TwoRanks:  # DDPStrategy.all_gather: every rank's tensor, stacked in rank order
        calls = 0

        def all_gather(self, tensor):
            self.calls += 1
            other = torch.tensor([len(theirs)]) if self.calls == 1 else torch.cat([theirs, torch.zeros(1, 2)])
            return torch.stack([tensor, other])

    gathered = gather_rows(SimpleNamespace(world_size=2, strategy=TwoRanks()), mine)
    assert torch.equal(gathered, torch.cat([mine, theirs]))
    assert gather_rows(SimpleNamespace(world_size=1), mine) is mine


def test_figures_count_rows_by_true_class_and_show_only_real_mistakes(monkeypatch):
    # Pins ResultFigures' bookkeeping: confusion rows are the true class, the mistakes gallery holds wrong answers
    # only, the validation epoch draws the confusion matrix alone, and the hook is gone after the epoch.
    drawn = []
    writer = SimpleNamespace(add_figure=lambda tag, figure, step: drawn.append(tag))
    monkeypatch.setattr(ResultFigures, "_writer", staticmethod(lambda trainer: writer))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(task="multiclass"), world_size=1, fit_loop=STEPPED,
                              sanity_checking=True, current_epoch=0)
    module, figures = SimpleNamespace(net=torch.nn.Linear(2, 3)), ResultFigures(max_images=4)
    figures.on_validation_epoch_start(trainer, module)
    assert figures._hook is None  # not during Lightning's sanity check
    trainer.sanity_checking = False
    figures.on_validation_epoch_start(trainer, module)
    figures._logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [4.0, 0.0, 0.0]])  # predicts 0, 1, 0
    figures._update(trainer, (torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 2])), examples=True)
    figures.on_validation_epoch_end(trainer, module)
    assert drawn == ["val/confusion_matrix"] and not module.net._forward_hooks
    assert figures.results["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]  # true 2 predicted as 0
    figures._draw(trainer, module, "test")
    images, targets, probs = figures.results["mistakes"]
    assert targets.tolist() == [2] and probs.argmax(1).tolist() == [0]  # not the two right answers
    assert drawn[1:] == ["test/confusion_matrix", "test/predictions", "test/confident_mistakes"]
    with pytest.raises(ValueError, match="val_every_n_epochs=-1"):
        ResultFigures(val_every_n_epochs=-1)


def test_figures_keep_the_first_examples_across_batches_and_validate_every_nth_epoch(monkeypatch):
    # Batches smaller than max_images: the predictions grid holds the split's first max_images examples, in order,
    # not the last batch's. val_every_n_epochs=2 draws the confusion matrix at epochs 1 and 3 (the 2nd and 4th:
    # Lightning's count, as check_val_every_n_epoch=2 validates there), not 0 and 2.
    # The default grid size is the one configs/callbacks/default.yaml asks for, and a negative size is refused.
    writer = SimpleNamespace(add_figure=lambda tag, figure, step: None)
    monkeypatch.setattr(ResultFigures, "_writer", staticmethod(lambda trainer: writer))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(task="multiclass"), world_size=1, fit_loop=STEPPED,
                              sanity_checking=False, current_epoch=0)
    module, figures = SimpleNamespace(net=torch.nn.Linear(2, 3)), ResultFigures(max_images=5, val_every_n_epochs=2)
    figures.on_test_epoch_start(trainer, module)
    for start in range(0, 9, 3):  # three batches of 3 images, numbered 0..8 by their pixels
        images = torch.arange(start, start + 3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4)
        figures._logits = torch.zeros(3, 3)
        figures._update(trainer, (images, torch.tensor([0, 1, 2])), examples=True)
    figures.on_test_epoch_end(trainer, module)
    images, targets, _ = figures.results["samples"]
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4] and targets.tolist() == [0, 1, 2, 0, 1]
    drawn = []
    for epoch in range(4):
        trainer.current_epoch = epoch
        figures.on_validation_epoch_start(trainer, module)
        drawn.append(figures._hook is not None)
        figures.on_validation_epoch_end(trainer, module)
    assert drawn == [False, True, False, True]
    configured = OmegaConf.load(Path(__file__).parents[1] / "configs" / "callbacks" / "default.yaml").result_figures
    assert ResultFigures().max_images == configured.max_images == 32
    with pytest.raises(ValueError, match="max_images=-1"):
        ResultFigures(max_images=-1)


def test_figures_under_ddp_show_the_most_confident_mistakes_of_every_rank(monkeypatch):
    # Two ranks, each with its own top max_images mistakes: rank 0's gallery is the top max_images of both, and its
    # confusion matrix the sum. The second rank's rows come from a second callback run on its own shard.
    writer = SimpleNamespace(add_figure=lambda tag, figure, step: None)
    monkeypatch.setattr(ResultFigures, "_writer", staticmethod(lambda trainer: writer))
    ranks = []
    for logits, targets in (([[5.0, 0, 0], [2.0, 0, 0]], [1, 1]), ([[4.0, 0, 0], [0.0, 0, 3]], [2, 1])):
        figures = ResultFigures(max_images=2)
        figures._acc, figures._logits = {}, torch.tensor(logits)
        figures._update(SimpleNamespace(datamodule=SimpleNamespace(task="multiclass")),
                        (torch.zeros(2, 1, 4, 4), torch.tensor(targets)), examples=True)
        ranks.append(figures)
    rank0, rank1 = ranks
    theirs = iter(t for rows in rank1._acc["mistakes"] for t in (torch.tensor([len(rows)]), rows))

    class TwoRanks:
        all_gather = staticmethod(lambda tensor: torch.stack([tensor, next(theirs)]))
        reduce = staticmethod(lambda tensor, reduce_op: tensor + rank1._acc["confusion"])

    trainer = SimpleNamespace(datamodule=SimpleNamespace(task="multiclass"), world_size=2, fit_loop=STEPPED,
                              strategy=TwoRanks())
    rank0._draw(trainer, SimpleNamespace(net=torch.nn.Linear(2, 3)), "test")
    _, targets, probs = rank0.results["mistakes"]
    assert targets.tolist() == [1, 2] and probs.argmax(1).tolist() == [0, 0]  # logits 5 (rank 0), then 4 (rank 1)
    assert rank0.results["confusion"].sum() == 4


def test_confusion_figure_colours_each_true_row_by_its_share():
    # Pins plots.confusion_matrix_figure and per_class_accuracy: rows true, columns predicted, shares of the row.
    confusion = np.array([[3, 1], [0, 4]])
    ax = plots.confusion_matrix_figure(confusion, ["a", "b"], "test split").axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert ax.get_title() == "test split: accuracy 87.50% of 8"
    assert sorted(text.get_text() for text in ax.texts) == ["1", "3", "4"]  # counts, none for an empty cell
    assert plots.per_class_accuracy(confusion).tolist() == [0.75, 1.0]


def test_roc_and_calibration_figures_plot_what_they_name():
    # Pins the curves' data: ROC x = false positive rate, calibration = mean probability vs share of positives.
    probs, targets = np.array([0.05, 0.15, 0.9, 1.0]), np.array([0, 1, 1, 1])
    roc = plots.roc_figure(probs, targets).axes[0]
    fpr, tpr = roc.lines[0].get_data()
    assert ((fpr == 0) & (tpr == 1)).any() and roc.get_xlabel() == "false positive rate"  # every positive first
    top, bottom = plots.calibration_figure(probs, targets, bins=2).axes
    x, y = top.lines[1].get_data()
    np.testing.assert_allclose(x, [0.1, 0.95])
    np.testing.assert_allclose(y, [0.5, 1.0])
    assert [bar.get_height() for bar in bottom.patches] == [2, 2]  # a probability of 1 in the last bin


def test_prediction_grid_titles_colours_and_every_image():
    # Pins prediction_grid_figure: each image shown, titled by its predicted class, green right and red wrong.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    fig = plots.prediction_grid_figure(np.zeros((3, 1, 4, 4)), np.array([0, 1, 1]), probs, ["a", "b"])
    ax = fig.axes[0]
    assert [(t.get_text(), t.get_color()) for t in ax.texts] == [
        ("a (90%)", "tab:green"), ("a (80%)\ntrue: b", "tab:red"), ("b (70%)", "tab:green")]
    assert (ax.images[0].get_array() == 0).sum() == 3 * 16  # every image drawn
    two_columns = plots.image_grid_figure(np.zeros((3, 1, 4, 4)), ["a", "b", "c"], columns=2).axes[0]
    assert (two_columns.images[0].get_array() == 0).sum() == 3 * 16  # the third one on a row of its own


def test_filters_and_displayable_images_keep_their_colours_and_normalization():
    # Pins filters_figure (an RGB kernel drawn in colour, each scaled to [0, 1]) and displayable (mean/std undone).
    weight = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    assert plots.filters_figure(weight).axes[0].images[0].get_array().ndim == 3
    grey = plots.filters_figure(weight[:, :1]).axes[0].images[0].get_array()  # grey: drawn as computed, unclipped
    assert grey.ndim == 2 and grey.min() == 0 and grey.max() == 1
    shown = plots.displayable(torch.tensor([[[[0.0, 4.0]]]]), torch.tensor([0.5]), torch.tensor([0.25]))
    assert shown.tolist() == [[[[0.5, 1.0]]]]
    assert plots.displayable(torch.tensor([[[[1.0, 3.0]]]]), None, None).tolist() == [[[[0.0, 1.0]]]]


def test_figures_gather_a_shorter_ranks_rows_before_its_padding():
    # Pins gather_rows on the rank that pads: its 2 rows first, then the padding that is dropped again.
    mine, theirs = torch.tensor([[1.0], [2.0]]), torch.tensor([[7.0], [8.0], [9.0]])
    # DDPStrategy.all_gather on rank 0 of two: the shard sizes (a long tensor), then the padded shards
    strategy = SimpleNamespace(all_gather=lambda t: torch.tensor([[2], [3]]) if t.dtype == torch.long
                               else torch.stack([t, theirs]))
    assert gather_rows(SimpleNamespace(world_size=2, strategy=strategy), mine).tolist() == [[1], [2], [7], [8], [9]]


def test_eval_reproduces_the_runs_test_metrics(sweep, capsys):
    run = sweep / "0"
    assert eval_script.main([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    trained, evaluated = runs.read_metrics(run), json.loads((run / "metrics_eval.json").read_text())
    for key in ("test/acc", "test/loss"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-3) and printed[key] == evaluated[key]
    assert eval_script.main([f"ckpt_path={run}/nothing.ckpt"]) == 2
    assert capsys.readouterr().err.startswith("error: no checkpoint at")
    if not torch.cuda.is_available():
        assert eval_script.main([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=gpu"]) == 2
        assert capsys.readouterr().err.startswith("error: trainer options {'accelerator': 'gpu'}: No supported gpu")
    if importlib.util.find_spec("torch_xla") is None:  # Lightning's ImportError for a package it lacks: one line
        assert eval_script.main([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=tpu"]) == 2
        assert capsys.readouterr().err.startswith("error: trainer options {'accelerator': 'tpu'}: ")


def test_only_rank_0_writes_the_hparams_tab_and_every_rank_knows_the_logged_step(monkeypatch):
    # Under DDP every process runs train(): the others' loggers have no file writer (their hparams tab was a
    # traceback after the run), and each needs the step its figures are logged at.
    from lightning.pytorch.utilities import rank_zero_only

    from models.records import log_hparams_tab, logged_step

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert logged_step(SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
        _batches_that_stepped=7)))) == 7
    log_hparams_tab(None, {"seed": 0}, {"test/acc": 0.5}, set(), 7)  # on rank 0 a None logger would fail


def test_eval_says_a_ddp_runs_fraction_of_the_test_split_is_not_reproduced_exactly(sweep, tmp_path, capsys):
    # Each DDP process took trainer.limit_test_batches=0.5 of its own shard's batches, rounding down: eval.py's one
    # process takes half of the whole split, up to a batch a process more. A count is reproduced exactly.
    checkpoint = torch.load(sweep / "0" / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["world_size"] = 2
    checkpoint["hyper_parameters"]["config"]["trainer"]["limit_test_batches"] = 0.5
    torch.save(checkpoint, tmp_path / "ddp.ckpt")
    eval_script.evaluate(tmp_path / "ddp.ckpt")
    assert capsys.readouterr().err.startswith("note: the run's 2 DDP processes each scored "
                                              "trainer.limit_test_batches=0.5 of their own shard")
    eval_script.evaluate(tmp_path / "ddp.ckpt", trainer_options={"limit_test_batches": 2})  # given: no note
    assert "note:" not in capsys.readouterr().err
    for strategy in ("ddp_spawn", "ddp_fork"):  # was an IndexError once the spawned processes had scored
        with pytest.raises(UserInputError, match=f"^trainer.strategy={strategy}: use trainer.strategy=ddp for"):
            eval_script.evaluate(tmp_path / "ddp.ckpt", trainer_options={"strategy": strategy, "devices": 2,
                                                                         "accelerator": "cpu"})
    with pytest.raises(UserInputError, match=r"^trainer.limit_test_batches=1e-05 of the test split's \d+ batch"):
        eval_script.evaluate(tmp_path / "ddp.ckpt", trainer_options={"limit_test_batches": 0.00001})  # Lightning's


def test_eval_writes_out_file_with_the_checkpoint_and_overrides_and_tests_in_the_runs_precision(sweep, tmp_path,
                                                                                                  monkeypatch):
    ckpt = sweep / "0" / "checkpoints" / "best.ckpt"
    default = sweep / "0" / "metrics_eval.json"

    def default_json():
        return default.read_text() if default.exists() else None

    before, out = default_json(), tmp_path / "m.json"
    assert eval_script.main([f"ckpt_path={ckpt}", "data.eval_batch_size=50", f"out={out}"]) == 0
    saved = json.loads(out.read_text())
    assert saved["checkpoint"] == str(ckpt) and saved["data_overrides"] == ["data.eval_batch_size=50"]
    assert "test/acc" in saved and default_json() == before  # out= instead of RUN/metrics_eval.json
    # out= as zsh passes ~ (unexpanded), and a symlink: its target written, the link kept
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    for given, written in (("~/home.json", tmp_path / "home.json"), (tmp_path / "link.json", tmp_path / "target.json")):
        assert eval_script.main([f"ckpt_path={ckpt}", "data.eval_batch_size=50", f"out={given}"]) == 0
        assert json.loads(written.read_text())["test/acc"] == saved["test/acc"]
    assert (tmp_path / "link.json").is_symlink()
    # A run trained in bf16 is tested in bf16, as train.py tested it.
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["config"]["trainer"]["precision"] = "bf16-mixed"
    torch.save(checkpoint, tmp_path / "bf16.ckpt")
    built = {}

    def no_trainer(**options):
        built.update(options)
        raise RuntimeError("built")

    monkeypatch.setattr(eval_script.L, "Trainer", no_trainer)
    with pytest.raises(RuntimeError, match="built"):
        eval_script.evaluate(tmp_path / "bf16.ckpt")
    assert built["precision"] == "bf16-mixed"


def test_runs_are_found_newest_first_and_data_overrides_are_data_settings_only(tmp_path):
    for name, when in (("old", 1000), ("new", 2000), ("older", 500)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text("{}")
        os.utime(tmp_path / name / "metrics.json", (when, when))
    assert runs.newest_run(tmp_path) == tmp_path / "new"
    config = {"_target_": "data.tabular.CSVDataModule", "path": str(tmp_path / "a.csv"), "label_column": "y"}
    for override in ("model.lr=0.1", "data.path"):  # not data's; no value (it would set the path to None)
        with pytest.raises(UserInputError, match=f"'{override}': only data.KEY=VALUE and paths.data_dir=DIR change"):
            runs.instantiate_datamodule(config, [override])
    assert runs.fitted_differences({"mean": torch.tensor([0.0])}, {"mean": torch.tensor([1.0])}) == (
        "mean fitted on the training split")


def test_a_checkpoints_fitted_encoders_are_used_without_reading_the_data(tmp_path):
    from data.tabular import CSVDataModule
    for name, cities in (("a", "abc"), ("b", "qrs")):
        pd.DataFrame({"x": np.arange(60.0), "city": list(cities) * 20, "y": [0, 1] * 30}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    trained = CSVDataModule(str(tmp_path / "b.csv"), "y", ["x"], ["city"], min_count=1)
    trained.setup("fit")
    config = {"_target_": "data.tabular.CSVDataModule", "path": str(tmp_path / "a.csv"), "label_column": "y",
              "numeric_columns": ["x"], "categorical_columns": ["city"], "min_count": 1}
    checkpoint = {"hyper_parameters": {"config": {"data": config}}, "CSVDataModule": trained.state_dict()}
    assert sorted(runs.fitted_datamodule(checkpoint).ids.vocab["city"]) == ["q", "r", "s"]  # not a.csv's a, b, c


def test_predict_classifies_a_folder_of_images(sweep, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    images, labels = pattern_images(20, 28, 1, seed=7)  # clean labels
    for i, image in enumerate(images):  # RGB and twice the size: predict.py greyscales and resizes
        Image.fromarray(image[..., 0]).convert("RGB").resize((56, 56)).save(folder / f"{i:02d}.png")
    out = tmp_path / "predictions.csv"
    ckpt = sweep / "0" / "checkpoints" / "best.ckpt"
    assert predict_script.main([f"ckpt_path={ckpt}", f"input={folder}", f"out={out}"]) == 0
    table = pd.read_csv(out)
    classes = [f"{k} - {name}" for k, name in enumerate("zero one two three four five six seven eight nine".split())]
    assert list(table.columns) == ["file", "class", "probability", *classes] and len(table) == 20
    np.testing.assert_allclose(table[classes].sum(1), 1.0, atol=1e-4)
    assert (table["class"] == [classes[k] for k in labels]).mean() >= 0.9  # it learned the patterns
    # The checkpoint holds the training split's normalization and class names: no dataset is read.
    elsewhere = tmp_path / "predictions_without_data.csv"
    assert predict_script.main([f"ckpt_path={ckpt}", f"input={folder}", f"out={elsewhere}",
                                f"paths.data_dir={tmp_path / 'nowhere'}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(elsewhere), table)
    assert predict_script.main([f"ckpt_path={ckpt}", f"input={tmp_path / 'rows.csv'}"]) == 2  # no such file
    monkeypatch.setattr(predict_script, "IMAGE_CHUNK", 3)  # read and predicted 3 files at a time: the same table
    assert predict_script.main([f"ckpt_path={ckpt}", f"input={folder}", f"out={elsewhere}"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(elsewhere), table)


def test_predict_inverts_grey_images_on_a_light_background_and_says_so(sweep, tmp_path, capsys, monkeypatch):
    # The training images are light on black: the same images dark on white were misread (a photo, a scan).
    folder, negatives = tmp_path / "images", tmp_path / "negatives"
    for path in (folder, negatives):
        path.mkdir()
    images, _ = pattern_images(8, 28, 1, seed=7)
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
        Image.fromarray(255 - image[..., 0]).save(negatives / f"{i}.png")
    ckpt = sweep / "0" / "checkpoints" / "best.ckpt"
    as_trained = predict_script.predict(ckpt, folder)
    assert "note:" not in capsys.readouterr().err  # noise below 60 around the squares: a dark background
    monkeypatch.setattr(predict_script, "IMAGE_CHUNK", 3)  # read 3 at a time: still one note for the folder
    inverted = predict_script.predict(ckpt, negatives)
    note, = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: 8 of 8 images ({negatives / '0.png'}, ...) are dark on a light or transparent "
                           "background and were inverted to light on black")
    pd.testing.assert_frame_equal(inverted.drop(columns="file"), as_trained.drop(columns="file"))
    kept = predict_script.predict(ckpt, negatives, invert="false")
    assert (kept["class"] != as_trained["class"]).any()  # read as they are: not the same answers
    both = predict_script.predict(ckpt, folder, invert="true")  # every image inverted: these, too
    assert (both["class"] != as_trained["class"]).any() and "note:" not in capsys.readouterr().err
    for argument, message in [("invert=yes", "error: invert=yes: give auto (images dark on a light or "
                                             "transparent background), true or false"),
                              ("invert=true", "error: invert=true is for images; input=")]:
        source = folder if argument == "invert=yes" else tmp_path / "rows.csv"
        if argument == "invert=true":
            source.write_text("x\n1\n")
        assert predict_script.main([f"ckpt_path={ckpt}", f"input={source}", argument]) == 2
        assert capsys.readouterr().err.startswith(message)


def test_read_images_scales_16_bit_and_lays_transparency_over_black(tmp_path):
    shape = np.zeros((8, 8), dtype=np.uint8)
    shape[2:6, 2:6] = 200  # a light square on black, as Fashion-MNIST draws its items
    Image.fromarray(shape).save(tmp_path / "grey.png")
    Image.fromarray(shape.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit: 200 * 257
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)  # white where transparent: convert() alone would show it
    rgba[..., 3] = (shape > 0) * 255
    rgba[..., :3] = np.where(shape[..., None] > 0, 200, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    grey_with_key = Image.fromarray(np.where(shape > 0, 200, 255).astype(np.uint8))
    grey_with_key.save(tmp_path / "keyed.png", transparency=255)  # grey, one colour marked transparent
    Image.fromarray(np.where(shape > 0, 200 * 257, 65535).astype(np.uint16)).save(tmp_path / "deep_keyed.png",
                                                                                    transparency=65535)  # 16-bit too
    Image.fromarray(np.where(shape > 0, 200 * 257, 1000).astype(np.uint16)).save(tmp_path / "deep_odd_key.png",
                                                                                   transparency=1000)  # not v * 257
    files = [tmp_path / f"{name}.png" for name in ("grey", "deep", "cutout", "keyed", "deep_keyed", "deep_odd_key")]
    images = predict_script.read_images(files, channels=1, size=(8, 8))
    assert images.shape == (6, 1, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images[0, 0], torch.from_numpy(shape))  # 8x8 resized to 8x8: the square as drawn
    for image in images[1:]:
        assert torch.equal(image, images[0])
    rgb = predict_script.read_images(files, channels=3, size=(8, 8))
    assert rgb.shape == (6, 3, 8, 8) and (rgb == images).all()  # grey made RGB: three equal channels


def test_read_images_keeps_a_32_bit_grey_image_of_bytes_and_names_images_it_cannot_read(tmp_path, monkeypatch):
    shape = np.zeros((8, 8), dtype=np.uint8)
    shape[2:6, 2:6] = 200
    Image.fromarray(shape.astype(np.int32)).save(tmp_path / "int32.tif")  # mode I, 0..255: was divided by 257
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    assert torch.equal(predict_script.read_images([tmp_path / "int32.tif"], 1, (8, 8))[0, 0], torch.from_numpy(shape))
    Image.new("LAB", (8, 8), (50, 0, 0)).save(tmp_path / "lab.tif")  # PIL's ValueError was a traceback
    with pytest.raises(UserInputError, match=r"input .*lab.tif: a LAB image, which predict.py cannot turn into grey"):
        predict_script.read_images([tmp_path / "lab.tif"], 1, (8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a decompression bomb: more than twice as many pixels
    with pytest.raises(UserInputError, match=r"input .*int32.tif: not a readable image \(Image size"):
        predict_script.read_images([tmp_path / "int32.tif"], 1, (8, 8))


def test_read_images_scales_float_grey_and_turns_images_upright(tmp_path):
    shape = np.zeros((8, 8), dtype=np.uint8)
    shape[1:7, 1:3] = 200  # a bar on the left: not the same turned
    Image.fromarray(shape).save(tmp_path / "grey.png")
    Image.fromarray(shape.astype(np.float32) / 255).save(tmp_path / "unit.tif")  # numpy's 0..1 floats (mode F)
    Image.fromarray(shape.astype(np.float32)).save(tmp_path / "bytes.tif")  # 0..255 floats
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: viewers turn it 90 degrees clockwise
    Image.fromarray(np.rot90(shape).copy()).save(tmp_path / "phone.png", exif=exif)  # stored turned the other way
    files = [tmp_path / name for name in ("grey.png", "unit.tif", "bytes.tif", "phone.png")]
    images = predict_script.read_images(files, channels=1, size=(8, 8))
    assert torch.equal(images[0, 0], torch.from_numpy(shape))  # the bar on the left, as drawn
    for image in images[1:]:
        assert torch.equal(image, images[0])  # was black (0..1 rounded) and turned


def test_read_images_fits_an_image_of_another_shape_as_the_training_images_were_made(tmp_path):
    # Grey (Fashion-MNIST: an item scaled by its longest side, centred on black): a wide light bar stays a wide bar
    # between black rows; stretched to the square it filled it (a tall or wide item was misread). RGB (CIFAR-10):
    # scaled to cover, the overhang cropped evenly.
    Image.fromarray(np.full((10, 20), 200, dtype=np.uint8)).save(tmp_path / "wide.png")
    grey = predict_script.read_images([tmp_path / "wide.png"], channels=1, size=(8, 8), invert="false")[0, 0]
    assert (grey[:2] == 0).all() and (grey[6:] == 0).all() and (grey[2:6] == 200).all()
    rgb = np.zeros((8, 16, 3), dtype=np.uint8)
    rgb[:, :4, 0] = rgb[:, 12:, 0] = 255  # red at both ends, cropped off
    rgb[:, 4:12, 1] = 255  # the green middle fills the square
    Image.fromarray(rgb).save(tmp_path / "wide_colour.png")
    colour = predict_script.read_images([tmp_path / "wide_colour.png"], channels=3, size=(8, 8))[0]
    assert (colour[0] == 0).all() and (colour[1] == 255).all() and (colour[2] == 0).all()


def test_a_dark_cut_out_is_made_light_on_black(tmp_path):
    # A dark item on a transparent background: its shades are inverted, the background laid over black after (it
    # was inverted to white with the item). invert=auto does so too (it judged the image over black, where a dark
    # cut-out vanished: a drawing from a canvas was all black), and leaves a light cut-out as it is.
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2:6, 2:6] = (30, 30, 30, 255)  # a dark square; elsewhere fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    keyed = np.full((8, 8), 255, dtype=np.uint8)
    keyed[2:6, 2:6] = 30
    Image.fromarray(keyed).save(tmp_path / "keyed.png", transparency=255)  # grey, white marked transparent
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[2:6, 2:6] = 225
    for name in ("cutout.png", "keyed.png"):
        for invert in ("true", "auto"):
            inverted = []
            image = predict_script.read_images([tmp_path / name], 1, (8, 8), invert=invert, inverted=inverted)[0, 0]
            assert torch.equal(image, torch.from_numpy(expected)), (name, invert)
            assert inverted == ([tmp_path / name] if invert == "auto" else []), (name, invert)  # the note counts it
        assert predict_script.read_images([tmp_path / name], 1, (8, 8), invert="false")[0, 0].max() == 30
    rgba[2:6, 2:6] = (225, 225, 225, 255)  # a light item cut out: already light on black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "light.png")
    assert torch.equal(predict_script.read_images([tmp_path / "light.png"], 1, (8, 8))[0, 0],
                       torch.from_numpy(expected))
    rgba[..., 3] = 255  # opaque: a light square on black, judged by its border as before
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert predict_script.read_images([tmp_path / "opaque.png"], 1, (8, 8))[0, 0].max() == 225
    # A light stroke on an opaque black tile with a transparent margin (or a round avatar): light on black already,
    # though its visible pixels are dark on average; it was inverted to dark on a white square.
    tile = np.zeros((12, 12, 4), dtype=np.uint8)
    tile[2:10, 2:10, 3] = 255  # the opaque black tile
    tile[3:9, 5:7] = (255, 255, 255, 255)  # its stroke: 12 of the tile's 64 pixels
    Image.fromarray(tile, "RGBA").save(tmp_path / "tile.png")
    inverted = []
    image = predict_script.read_images([tmp_path / "tile.png"], 1, (12, 12), inverted=inverted)[0, 0]
    assert inverted == [] and image[5, 5] == 255 and image[5, 3] == 0


def test_read_images_names_a_file_whose_header_pil_cannot_read(tmp_path):
    # Image.open itself raises ValueError for a damaged PNG header: was an UnboundLocalError traceback.
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "good.png")
    data = bytearray((tmp_path / "good.png").read_bytes())
    data[11] = 0  # the IHDR chunk's length: "Truncated IHDR chunk"
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=r"input .*bad.png: not a readable image \("):
        predict_script.read_images([tmp_path / "bad.png"], 1, (8, 8))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "bad_exif.png", exif=b"garbage!")
    with pytest.raises(UserInputError, match=r"input .*bad_exif.png: not a readable image \("):  # a SyntaxError
        predict_script.read_images([tmp_path / "bad_exif.png"], 1, (8, 8))


def test_read_images_at_the_edges_of_each_format_and_of_another_shape(tmp_path):
    wide = np.zeros((8, 16), dtype=np.uint8)  # 8 rows, 16 columns: a network of image_size (8, 16)
    wide[2:6, 1:12] = 255  # white at full scale
    Image.fromarray(wide).save(tmp_path / "A.PNG")  # a suffix in capitals is an image too
    Image.fromarray(wide.astype(np.float32) / 255).save(tmp_path / "unit.tif")  # 0..1 floats reaching 1.0
    Image.fromarray(wide.astype(np.int32)).save(tmp_path / "int32.tif")  # 32-bit 0..255 reaching 255
    files = predict_script.image_files(tmp_path)
    assert [f.name for f in files] == ["A.PNG", "int32.tif", "unit.tif"]
    images = predict_script.read_images(files, channels=1, size=(8, 16))
    for image in images:
        assert torch.equal(image[0], torch.from_numpy(wide))  # not 1/255 or 255/257 of it, nor turned on its side


def test_predicted_rows_of_a_classifier_of_several_classes_name_the_most_likely(tmp_path):
    # A DataModule of the user's that encodes rows for a three-class network: class and probability per row.
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 5.0]])

    class ThreeClasses:  # a recipe whose row i gets logits[i]
        hparams = SimpleNamespace(task="multiclass")

        def __call__(self, rows):
            return logits[rows[:, 0].long()]

    rows = SimpleNamespace(classes=["cat", "dog", "bird"], read_frames=lambda path, n: iter([pd.read_csv(path)]),
                           encode_frame=lambda frame, where: (torch.tensor(frame[["row"]].to_numpy()),))
    (tmp_path / "rows.csv").write_text("row\n0\n1\n2\n")
    table = next(predict_script.predict_rows(ThreeClasses(), rows, tmp_path / "rows.csv"))
    assert table["class"].tolist() == ["dog", "cat", "bird"]
    np.testing.assert_allclose(table["probability"], logits.softmax(-1).amax(1).numpy(), rtol=1e-6)


def test_notebooks_execute_and_draw(sweep):
    nbformat = pytest.importorskip("nbformat")  # the dev extras: nbformat, nbclient, ipykernel
    pytest.importorskip("nbclient")
    run_notebook = importlib.import_module("notebooks.run").execute
    analyzed = run_notebook("analyze_run", sweep / "0")
    assert analyzed == sweep / "0" / "analyze_run.ipynb"
    outputs = [o for cell in nbformat.read(analyzed, as_version=4).cells for o in cell.get("outputs", [])]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4  # learning curves, confusion matrix, accuracy per class, mistakes
    assert all(Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))).width > 200 for o in pngs)
    text = "".join(o.get("text", "") for o in outputs)
    recomputed, recorded = re.search(r"from best.ckpt: ([\d.]+) \(metrics.json: ([\d.]+)\)", text).groups()
    assert float(recomputed) == pytest.approx(float(recorded), abs=1.5e-4)  # printed to 4 decimals

    # Per-epoch curves hold epoch values only: the gradient norm, logged every log_every_n_steps, is not one.
    assert "train/grad_norm" in set(runs.scalars(sweep / "0").tag)
    assert "train/grad_norm" not in runs.epoch_curves(sweep / "0") and "val/acc" in runs.epoch_curves(sweep / "0")

    table, varying = runs.compare(sweep)
    assert varying == ["model.lr"] and list(table["model.lr"]) == [0.003, 0.01]
    config = sweep / "1" / ".hydra" / "config.yaml"
    saved = config.read_text()
    try:  # a job continued with resume=RUN_DIR has ckpt_path=last: no setting of its own ("2 settings vary")
        config.write_text(saved.replace("ckpt_path: null", "ckpt_path: last"))
        assert runs.compare(sweep)[1] == ["model.lr"]
        # A callback's setting is a choice (callbacks.early_stopping.patience=1,6), its checkpoints' folder none
        config.write_text(saved.replace("patience: 5", "patience: 1").replace("/checkpoints", "/elsewhere"))
        assert runs.compare(sweep)[1] == ["callbacks.early_stopping.patience", "model.lr"]
    finally:
        config.write_text(saved)
    failed = sweep / "2" / ".hydra"  # a job that ended with an error: Hydra's folder, no metrics.json
    failed.mkdir(parents=True)
    (failed / "overrides.yaml").write_text("- model.lr=-1\n")
    try:
        assert runs.failed_runs(sweep) == {"2": ["model.lr=-1"]}
        compared = run_notebook("compare_runs", sweep)
    finally:
        shutil.rmtree(sweep / "2")
    outputs = [o for cell in nbformat.read(compared, as_version=4).cells for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # results, curves, result against lr
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 runs under" in text and "failed (no metrics.json): 2  model.lr=-1" in text


# -- CSV rows: a minimal tabular DataModule with the `encode_frame` the DNN's must provide ----------------------
class TinyClicks(L.LightningDataModule):
    """Rows (a, b, c) -> clicked; encode_frame turns a table of new rows into the network's inputs."""

    task = "binary"
    columns = ["a", "b", "c"]

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(600, 3, generator=g)
        y = (x @ torch.tensor([2.0, -1.0, 0.5]) + 0.5 * torch.randn(600, generator=g) > 0).float()
        self.splits = {"train": (x[:400], y[:400]), "val": (x[400:500], y[400:500]), "test": (x[500:], y[500:])}

    @property
    def net_kwargs(self) -> dict:
        return {"in_features": 3, "out_features": 1}

    def encode_frame(self, frame: pd.DataFrame, where: str) -> tuple[torch.Tensor, ...]:
        if missing := [c for c in self.columns if c not in frame]:
            raise UserInputError(f"{where}: missing columns {missing}")
        numbers = frame[self.columns].apply(pd.to_numeric)  # predict.py reads every cell as text, as training does
        return (torch.tensor(numbers.to_numpy(), dtype=torch.float32),)

    def train_dataloader(self):
        return TensorBatches(*self.splits["train"], batch_size=50, shuffle=True)

    def val_dataloader(self):
        return TensorBatches(*self.splits["val"], batch_size=100)

    def test_dataloader(self):
        return TensorBatches(*self.splits["test"], batch_size=100)


def test_predict_appends_a_click_probability_to_csv_rows(tmp_path):
    config = {"model": {"net": {"_target_": "torch.nn.Linear", "_partial_": True}},
              "data": {"_target_": "tests.test_results.TinyClicks", "seed": 0}, "trainer": {"precision": "32-true"}}
    datamodule = TinyClicks()
    recipe = Recipe(torch.nn.Linear(3, 1), task="binary", lr=0.1, optimizer={"name": "adam"},
                    scheduler={"name": "none"}, net_kwargs=datamodule.net_kwargs, config=config)
    figures = ResultFigures()
    trainer = L.Trainer(max_epochs=5, logger=TensorBoardLogger(tmp_path, name="tb", version=""), callbacks=[figures],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(recipe, datamodule=datamodule)
    metrics = trainer.test(recipe, datamodule=datamodule, verbose=False)[0]
    trainer.save_checkpoint(tmp_path / "clicks.ckpt")
    assert {"test/roc", "test/calibration"} <= set(events(tmp_path / "tb").Tags()["images"])
    from torchmetrics.functional.classification import binary_auroc
    auroc = binary_auroc(torch.as_tensor(figures.results["probs"]), torch.as_tensor(figures.results["targets"]).long())
    assert float(auroc) == pytest.approx(metrics["test/auroc"], abs=1e-6) and metrics["test/auroc"] > 0.9

    rows = pd.DataFrame({"id": [10, 11, 12, 13], "a": [2.0, -2.0, 0.1, 0.0], "b": [-1.0, 1.0, 0.0, 0.0],
                         "c": [0, 0, 0, 5]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert predict_script.main([f"ckpt_path={tmp_path / 'clicks.ckpt'}", f"input={tmp_path / 'rows.csv'}",
                                f"out={tmp_path / 'scored.csv'}"]) == 0
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert list(scored.columns) == ["id", "a", "b", "c", "click_probability"]
    pd.testing.assert_frame_equal(scored[rows.columns], rows, check_dtype=False)  # the rows, unchanged, in order
    expected = recipe.net(torch.tensor(rows[["a", "b", "c"]].to_numpy(), dtype=torch.float32)).sigmoid().view(-1)
    np.testing.assert_allclose(scored["click_probability"], expected.detach().numpy(), rtol=1e-5)
    assert scored["click_probability"][0] > 0.9 > 0.1 > scored["click_probability"][1]  # it learned the sign


def test_out_that_is_a_pipe_is_written_to_not_replaced(tmp_path):
    # out=/dev/stdout, a named pipe or a device: renamed over, a temporary file took its place (a pipe's reader got
    # nothing, /dev/null became a file), and checking it before the work ended the reader's input.
    import threading

    from models.records import write_json

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    runs.parse_arguments(["ckpt_path=x.ckpt", f"out={fifo}"], "usage", required=("ckpt_path",), optional=("out",))
    write_json(fifo, {"test/acc": 0.5})
    reader.join(timeout=10)
    assert received == ['{\n  "test/acc": 0.5\n}\n'] and fifo.is_fifo()


def test_out_that_names_an_open_descriptor_writes_through_it_where_a_log_file_has_got_to(tmp_path):
    # out=/dev/stdout with stdout a file (`> log`, `>> log`, a batch job's output): the path resolves to the file,
    # which was replaced by the output alone: what the shell wrote before was gone, and what it wrote after went to
    # the replaced file, deleted. /dev/fd/N is the same link for descriptor N.
    from models.records import write_json

    log = tmp_path / "job.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"training...\n")
        out = f"/dev/fd/{fd}" if Path("/dev/fd").is_dir() else f"/proc/self/fd/{fd}"
        if not Path(out).exists():
            pytest.skip("no /dev/fd or /proc/self/fd here")
        runs.parse_arguments(["ckpt_path=x.ckpt", f"out={out}"], "usage", required=("ckpt_path",), optional=("out",))
        inode = log.stat().st_ino
        write_json(out, {"test/acc": 0.5})
        with predict_script.output(out) as f:
            f.write("file,class\n")
        os.write(fd, b"done\n")
    finally:
        os.close(fd)
    assert log.read_text() == 'training...\n{\n  "test/acc": 0.5\n}\nfile,class\ndone\n' and log.stat().st_ino == inode
    from models.records import descriptor

    assert descriptor(out) == fd and descriptor(log) is None
    if Path("/dev/stdout").is_symlink():  # Linux: a link to /proc/self/fd/1
        assert descriptor("/dev/stdout") == 1 and descriptor("/dev/stderr") == 2
    closed = os.open(log, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(UserInputError, match=f"out={out.rsplit('/', 1)[0]}/{closed}: cannot write there"):
        runs.parse_arguments(["ckpt_path=x.ckpt", f"out={out.rsplit('/', 1)[0]}/{closed}"], "usage",
                             required=("ckpt_path",), optional=("out",))


def test_out_in_a_missing_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserInputError, match=r"out=.*m.json: no folder .*/no/dir; create it first"):
        runs.parse_arguments(["ckpt_path=x.ckpt", f"out={tmp_path}/no/dir/m.json"], "usage", required=("ckpt_path",),
                             optional=("out",))
    with pytest.raises(UserInputError, match=r"out=.* is a folder; give a file name in it"):
        runs.parse_arguments(["ckpt_path=x.ckpt", f"out={tmp_path}"], "usage", required=("ckpt_path",),
                             optional=("out",))


def test_out_never_writes_over_the_files_the_command_reads_nor_a_checkpoint(tmp_path):
    for name in ("best.ckpt", "rows.csv", "other.ckpt", "scores.csv"):
        (tmp_path / name).write_text(name)
    arguments = {"required": ("ckpt_path", "input"), "optional": ("out",)}
    read = [f"ckpt_path={tmp_path / 'best.ckpt'}", f"input={tmp_path / 'rows.csv'}"]
    for out, what in (("best.ckpt", "the ckpt_path this command reads"), ("rows.csv", "the input this command reads"),
                      ("other.ckpt", "a checkpoint")):
        with pytest.raises(UserInputError, match=f"out={tmp_path / out} is {what}: give another file name"):
            runs.parse_arguments([*read, f"out={tmp_path / out}"], "usage", **arguments)
    runs.parse_arguments([*read, f"out={tmp_path / 'scores.csv'}"], "usage", **arguments)  # an earlier output
    assert all((tmp_path / name).read_text() == name for name in ("best.ckpt", "rows.csv", "other.ckpt"))
    # A training run's own files: its metrics.json is its record. Its folder holds other outputs all the same.
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name in (".hydra/config.yaml", "metrics.json", "train.log", "metrics_eval.json"):
        (run / name).write_text(name)
    for name in ("metrics.json", "train.log", ".hydra/config.yaml"):  # the advice names what this command writes
        with pytest.raises(UserInputError, match=f"out={run / name} is a file train.py wrote for the run in {run} "
                                                 rf"\(.*\): give another file name, e.g. out={run}/predictions.csv$"):
            runs.parse_arguments([*read, f"out={run / name}"], "usage", **arguments, out_name="predictions.csv")
    with pytest.raises(UserInputError, match=f"out={run} is a folder; give a file name in it, e.g. "
                                             f"out={run}/metrics_eval.json$"):  # eval.py's (it said out.csv)
        runs.parse_arguments([f"out={run}"], "usage", ("out",), out_name="metrics_eval.json")
    runs.parse_arguments([*read, f"out={run / 'metrics_eval.json'}"], "usage", **arguments,
                         out_name="metrics_eval.json")  # eval.py rewrites its own record; predict.py did, as a CSV:
    with pytest.raises(UserInputError, match=f"out={run / 'metrics_eval.json'} is a file eval.py wrote"):
        runs.parse_arguments([*read, f"out={run / 'metrics_eval.json'}"], "usage", **arguments,
                             out_name="predictions.csv")
    runs.parse_arguments([*read, f"out={run / 'new.csv'}"], "usage", **arguments)
    assert not (run / "new.csv").exists()  # tried for writing, and removed: the command writes it when done
    if Path("/proc/self").is_dir():  # Linux: nobody, root included, writes a new file in /proc
        with pytest.raises(UserInputError, match="out=/proc/p.csv: cannot write there"):
            runs.parse_arguments([*read, "out=/proc/p.csv"], "usage", **arguments)


def test_evals_default_output_in_a_folder_it_cannot_write_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # eval.py without out= writes RUN/metrics_eval.json: in a run folder it may not write (a colleague's run, a
    # read-only copy) it scored the whole test split, then ended in a PermissionError traceback.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_bytes(b"")
    real_open = open

    def read_only_run(path, mode="r", *args, **kwargs):
        if Path(path).parent == tmp_path / "run" and mode[0] in "wax":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_run)
    monkeypatch.setattr(eval_script, "evaluate", lambda *args: pytest.fail("scored before the output was checked"))
    assert eval_script.main([f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'run' / 'metrics_eval.json'}: cannot write there "
                                       "(Permission denied), where eval.py writes the metrics of a checkpoint in "
                                       "RUN/checkpoints/: give out=FILE in a folder you can write\n")
    assert not list((tmp_path / "run").glob("*.json"))


def test_out_null_means_the_default_output(tmp_path, monkeypatch):
    # out=null wrote the metrics, or the predictions, to a file named "null" in the working directory.
    monkeypatch.chdir(tmp_path)
    for null in ("null", "NULL", "~"):
        options, _, _ = runs.parse_arguments(["ckpt_path=x.ckpt", f"out={null}"], "usage", required=("ckpt_path",),
                                             optional=("out",))
        assert options == {"ckpt_path": "x.ckpt"}
    assert not list(tmp_path.iterdir())
    options, _, _ = runs.parse_arguments(["ckpt_path=x.ckpt", "out=nullity.json"], "usage", required=("ckpt_path",),
                                         optional=("out",))
    assert options["out"] == "nullity.json"


def test_a_full_disk_is_one_error_line_and_keeps_the_earlier_output(tmp_path, monkeypatch):
    # eval.py out=, predict.py's CSV (to out= or stdout) and generate.py's text on a full disk: OSError tracebacks.
    from models.records import write_json

    (tmp_path / "m.json").write_text('{"test/acc": 0.5}\n')
    real_open = open

    def full(path, *args, **kwargs):  # the partial file beside it: written to a full disk
        f = real_open(path, *args, **kwargs)
        if ".partial" in str(path):
            f.write = lambda text: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return f
    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(UserInputError, match=r"m.json: cannot write to it \(No space left on device\); make room, or"):
        write_json(tmp_path / "m.json", {"test/acc": 0.9})
    monkeypatch.undo()
    assert (tmp_path / "m.json").read_text() == '{"test/acc": 0.5}\n' and len(list(tmp_path.iterdir())) == 1
    if Path("/dev/full").exists():  # Linux: every write fails with ENOSPC
        with pytest.raises(UserInputError, match=r"^/dev/full: cannot write to it \(No space left on device\)"):
            write_json("/dev/full", {"test/acc": 0.9})
        monkeypatch.setattr("sys.stdout", open("/dev/full", "w"))  # (`> FILE` on a full disk)
        with pytest.raises(UserInputError, match=r"^stdout: cannot write to it \(No space left on device\)"):
            with predict_script.output(None) as f:
                f.write("row\n")
        monkeypatch.setattr(sys.stdout, "close", lambda: None)  # its unwritten row would fail again when closed
    with pytest.raises(FileNotFoundError):  # any other failure (no such folder) is not a full disk: as it was
        write_json(tmp_path / "no" / "m.json", {})


def test_evals_printed_metrics_on_a_full_disk_or_a_closed_pipe(tmp_path, monkeypatch, capsys):
    # eval.py prints the test metrics before it writes them: on a full disk behind `> FILE` an OSError traceback, and
    # with a reader that had gone (`| grep -q acc`) a BrokenPipeError traceback, metrics_eval.json never written.
    monkeypatch.setattr(eval_script, "evaluate", lambda *args: {"test/acc": 0.5})
    arguments = [f"ckpt_path={tmp_path / 'best.ckpt'}", f"out={tmp_path / 'm.json'}"]
    if Path("/dev/full").exists():  # Linux: every write fails with ENOSPC
        monkeypatch.setattr("sys.stdout", open("/dev/full", "w"))
        assert eval_script.main(arguments) == 2
        assert capsys.readouterr().err == ("error: stdout: cannot write to it (No space left on device); make room, "
                                           "or write elsewhere\n")
        monkeypatch.setattr(sys.stdout, "close", lambda: None)  # what it holds would fail again when closed
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    monkeypatch.setattr("sys.stdout", open(write, "w"))
    try:
        assert eval_script.main(arguments) == 0
    finally:
        sys.stdout.close()
    assert json.loads((tmp_path / "m.json").read_text())["test/acc"] == 0.5
    assert capsys.readouterr().err == f"written to {tmp_path / 'm.json'}\n"
