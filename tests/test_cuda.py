"""The CUDA path: the GPU presets train on a GPU, their checkpoints score on the CPU, and the recipe adds no host
synchronisation to a training step. Skipped without a CUDA GPU (CI has none); on a lent GPU `bash benchmarks/gpu.sh`
runs them beside the GPU benchmarks."""
import importlib
import warnings

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

import train as train_module
from benchmarks import throughput
from models import assemble
from generate import generate
from tests.conftest import make_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
eval_script = importlib.import_module("eval")  # eval.py, beside train.py

QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.result_figures=null"]
SENTENCE = "To be, or not to be, that is the question.\n"
SYNC = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") warns


def lstm_preset(text, *overrides: str) -> list[str]:
    """The 2x512 preset on a small corpus, with windows short enough for a few hundred steps of it."""
    return ["experiment=lstm_gpu", f"data.path={text}", "data.seq_len=64", "data.batch_size=64",
            "data.eval_seq_len=256", "callbacks.text_samples.length=40", *overrides]


def test_the_cnn_preset_trains_compiled_in_bf16_on_the_gpu_and_its_checkpoint_scores_on_the_cpu(mnist_dir, tmp_path):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters["inductor"].clear()
    cfg = make_config("experiment=cnn_gpu", "data=mnist", f"paths.data_dir={mnist_dir}", "data.val_size=200",
                      "data.batch_size=100", "trainer.max_epochs=6", *QUIET, output_dir=tmp_path)
    metrics = train_module.train(cfg)
    assert metrics["device"].startswith("cuda") and metrics["test/acc"] >= 0.9, metrics
    assert counters["stats"]["unique_graphs"] > 0  # compiled: dynamo captured the network
    # as CUDA graphs (mode reduce-overhead): none skipped (batch norm's running statistics, updated in place, and
    # dropout's random numbers are what could make inductor skip them), each batch copied into a recorded graph's input
    assert counters["inductor"]["cudagraph_skips"] == 0 and counters["inductor"]["cudagraph_recorded_non_static_inputs"]
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last  # what the preset promises
    assert torch.get_float32_matmul_precision() == "high"  # float32 products on TF32 tensor cores
    on_cpu = eval_script.evaluate(tmp_path / metrics["best_checkpoint"], trainer_options={"accelerator": "cpu"})
    assert on_cpu["test/acc"] == pytest.approx(metrics["test/acc"], abs=0.01)  # bf16 on two devices: near, not equal


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_the_lstm_preset_learns_in_both_precisions_and_generates_on_either_device(precision, tmp_path):
    # bf16-mixed: the LSTM itself in float32 (TF32); 16-mixed: cuDNN's float16 LSTM with Lightning's gradient scaler.
    text = tmp_path / "corpus.txt"
    text.write_text(SENTENCE * 2000)
    cfg = make_config(*lstm_preset(text, f"trainer.precision={precision}", "trainer.max_steps=200",
                                   "trainer.val_check_interval=100"), *QUIET, output_dir=tmp_path / "run")
    metrics = train_module.train(cfg)
    assert metrics["device"].startswith("cuda") and metrics["steps"] == cfg.trainer.max_steps
    assert metrics["test/loss"] < 0.3 * metrics["test/unigram_loss"], metrics  # it learned the sentence
    ckpt = str(tmp_path / "run" / metrics["best_checkpoint"])
    for device in ("cuda", "cpu"):
        assert generate(ckpt, prompt="To be, or", length=60, device=device).startswith("To be, or")
    on_cpu = eval_script.evaluate(ckpt, trainer_options={"accelerator": "cpu"})
    assert on_cpu["test/loss"] == pytest.approx(metrics["test/loss"], rel=0.05, abs=0.01)


def test_the_dnn_trains_on_the_gpu_to_near_the_bayes_auc(tmp_path):
    # The README's CPU run: 0.8126 against the Bayes-optimal 0.8172 after 7 epochs.
    cfg = make_config("model=dnn", "trainer=gpu", f"paths.data_dir={tmp_path / 'data'}", *QUIET, output_dir=tmp_path)
    metrics = train_module.train(cfg)
    assert metrics["device"].startswith("cuda")
    assert metrics["test/auroc"] > metrics["data/bayes_auroc"] - 0.01, metrics


class SyncWatch(L.Callback):
    """CUDA's sync debug mode on from the end of batch `first` to the end of batch `last`: what it warns of in between
    is the host synchronisations of steps first+1 .. last, their batches' fetching and every hook included."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.first:
            torch.cuda.set_sync_debug_mode("warn")
        elif batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")


def count_syncs(run) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(SYNC in str(w.message) for w in caught)


def watched(batches, first: int, last: int):
    """The batches, with the sync watch on from the fetch of batch first+1 to that of batch last+1 (each step ends
    where the next batch is fetched): steps first+1 .. last, as SyncWatch watches the Lightning path."""
    for i, batch in enumerate(batches):
        torch.cuda.set_sync_debug_mode("warn" if first < i <= last else "default")
        yield batch


@pytest.mark.parametrize("preset", [["experiment=cnn_gpu", "model.compile=false", "data=mnist", "data.val_size=200",
                                     "data.batch_size=64"],
                                    ["model=dnn", "trainer=gpu", "data.rows=50000", "data.batch_size=1024"],
                                    "lstm"])
def test_the_recipe_adds_no_host_synchronisation_to_a_training_step(preset, mnist_dir, tmp_path):
    # Steps 3-8 of an epoch, none of them a logging step: the Lightning path may synchronise only where the same
    # steps written by hand do (PyTorch's own kernels may: an embedding's backward reads a count on the host).
    if preset == "lstm":
        (tmp_path / "corpus.txt").write_text(SENTENCE * 2000)
        preset = lstm_preset(tmp_path / "corpus.txt")
    cfg = make_config(*preset, f"paths.data_dir={mnist_dir if 'data=mnist' in preset else tmp_path / 'data'}",
                      "trainer.log_every_n_steps=1000", *QUIET,
                      output_dir=tmp_path / "run")
    first, last = 2, 8
    # The watch sees a sync where there is one (else the comparison below could pass on two zeros):
    assert count_syncs(lambda: (torch.cuda.set_sync_debug_mode("warn"), torch.ones(1, device="cuda").item())) == 1
    L.seed_everything(0)
    datamodule, recipe = assemble.build(cfg)
    trainer = instantiate(cfg.trainer, max_steps=last + 1, max_epochs=-1, limit_val_batches=0, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[SyncWatch(first, last)])
    assert len(datamodule.train_dataloader()) > last + 1  # no epoch boundary inside the watched steps
    lightning = count_syncs(lambda: trainer.fit(recipe, datamodule=datamodule))
    assert next(iter(datamodule.train_dataloader()))[0].device.type == "cuda"  # the data lives on the GPU
    by_hand = assemble.build_recipe(cfg, datamodule).to("cuda")  # the benchmarks' hand-written loop
    by_hand.trainer = trainer  # only for the schedule's length
    batches = watched(datamodule.train_dataloader(), first, last)
    plain = count_syncs(lambda: throughput.plain_loop(by_hand, batches, last + 1, 0, str(trainer.precision),
                                                      cfg.trainer.get("gradient_clip_val")))
    print(f"host syncs in steps {first + 1}-{last}: Lightning path {lightning}, plain loop {plain}")
    assert lightning <= plain, f"the Lightning path synchronised {lightning} times, the plain loop {plain}"


def test_a_profiled_throughput_run_reports_the_gpus_share_of_each_step():
    # profile=N on a GPU: the kernels' milliseconds a step (not the optimizer's record_function span, which the
    # profiler also draws on the GPU's timeline and would count the whole step), within the step's wall time.
    result, _ = throughput.main(["model=dnn", "trainer=gpu", "data.rows=50000", "data.batch_size=1024", "steps=2",
                                 "warmup=2", "repeats=1", "profile=5"])
    for path in ("lightning", "plain"):
        profiled = result["profile"][path]
        assert 0 < profiled["gpu_ms_per_step"] and 0 < profiled["gpu_busy"] <= 1.05, profiled
