"""The benchmark commands run and report what the README's tables are read from; their speed is never asserted."""
import copy
import json
import os
import re
import resource
import subprocess
import sys
import time

import pytest
import torch

from models import assemble
from data import UserInputError
from models.recipe import Recipe
from benchmarks import measure as benchmark_measure
from benchmarks import throughput, time_to_accuracy
from benchmarks.arguments import split_options
from benchmarks.measure import autocast, peak_memory
from data.batches import TensorBatches
from conftest import ROOT, make_config
from tests.cli_process import run_script

SMALL_DNN = ["model=dnn", "data.rows=4000", "data.batch_size=256", "data.eval_batch_size=1000"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])  # bf16: the autocast branch of both paths
def test_throughput_times_both_paths_and_reports_their_ratio(tmp_path, precision):
    out = tmp_path / "throughput.json"
    result, path = throughput.main([*SMALL_DNN, f"trainer.precision={precision}", "steps=4", "warmup=1",
                                    "repeats=2", f"out={out}"])
    assert path == str(out)
    assert result["batch_size"] == 256 and result["steps"] == 4 and result["device"].startswith("cpu")
    assert len(result["lightning_runs"]) == len(result["plain_runs"]) == 2
    assert result["lightning_samples_per_s"] == max(result["lightning_runs"]) > 0  # the best of the repeats
    assert result["plain_samples_per_s"] == max(result["plain_runs"]) > 0
    assert result["ratio"] == round(result["lightning_samples_per_s"] / result["plain_samples_per_s"], 3)
    assert result["lightning_ms_per_step"] == pytest.approx(256e3 / result["lightning_samples_per_s"], rel=1e-2)
    assert result["overhead_ms_per_step"] == pytest.approx(
        result["lightning_ms_per_step"] - result["plain_ms_per_step"], abs=2e-3)
    assert result["peak_rss_mib"] > 100 and result["peak_gpu_mib"] is None and result["precision"] == precision
    assert "lightning_chars_per_s" not in result  # only for a language model


def test_throughput_profiles_each_paths_timed_steps_when_asked(monkeypatch):
    # profile=N: one more run of each path, N steps after the warm-up, under torch.profiler, which starts and stops
    # with the clock: it sees those N optimizer steps alone, in both paths.
    steps = {}
    summary = benchmark_measure.profile_summary

    def counting(profiler, n, seconds, top=10):
        steps[len(steps)] = sum(e.count for e in profiler.key_averages() if e.key.startswith("Optimizer.step#"))
        return summary(profiler, n, seconds, top)

    monkeypatch.setattr(throughput, "profile_summary", counting)
    result, _ = throughput.main([*SMALL_DNN, "steps=2", "warmup=2", "repeats=1", "profile=3"])
    assert steps == {0: 3, 1: 3}  # the Lightning path's, then the plain loop's
    for path in ("lightning", "plain"):
        profiled = result["profile"][path]
        assert profiled["steps"] == 3 and profiled["wall_ms_per_step"] > 0
        assert profiled["gpu_ms_per_step"] is None and profiled["gpu_busy"] is None  # no GPU here
        ops = dict(profiled["host_ms_per_step"])
        assert len(ops) == 10 and "aten::mm" in ops and all(ms > 0 for ms in ops.values())  # the linear layers
    assert "profile" not in throughput.main([*SMALL_DNN, "steps=2", "warmup=1", "repeats=1"])[0]


def test_throughput_counts_a_language_models_characters(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    result, _ = throughput.main(["model=lstm", "data=text", f"data.path={text}", "model.net.hidden_size=16",
                                 "model.net.embedding_dim=8", "data.seq_len=16", "data.batch_size=8", "steps=2",
                                 "warmup=1", "repeats=1"])
    assert result["batch_size"] == 8  # windows of 16 characters
    for path in ("lightning", "plain"):  # both rates rounded to 0.1: 16 x the windows' within 16 x 0.05 + 0.05
        assert result[f"{path}_chars_per_s"] == pytest.approx(16 * result[f"{path}_samples_per_s"], abs=0.85)


def test_measure_autocasts_as_lightning_does_and_reports_memory_in_mib():
    # Pins benchmarks.measure: each mixed precision's dtype, no autocast for 32-true, the weight cache off, MiB.
    cpu = torch.device("cpu")
    with autocast("bf16-mixed", cpu):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and not torch.is_autocast_cache_enabled()
    with autocast("32-true", cpu):
        assert not torch.is_autocast_enabled("cpu")
    assert autocast("16-mixed", cpu).fast_dtype == torch.float16
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak = peak_memory()["peak_rss_mib"]
    assert before - 0.1 <= peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 0.1


def test_the_plain_loop_scales_float16_gradients_as_lightning_does(monkeypatch):
    # 16-mixed is Lightning's float16 autocast with a gradient scaler (CUDA only in Lightning; the loop runs on a CPU).
    scaled, scale = [], torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, loss: scaled.append(self.is_enabled()) or scale(self, loss))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g).float()
    recipe = Recipe(torch.nn.Linear(4, 1), task="binary", lr=0.1, optimizer={"name": "sgd"},
                    scheduler={"name": "none"})
    before = recipe.net.weight.detach().clone()
    throughput.plain_loop(recipe, [(x, y)] * 3, steps=2, warmup=1, precision="16-mixed", clip=1.0)
    assert torch.isfinite(recipe.net.weight).all() and not torch.equal(recipe.net.weight, before)
    assert recipe.net.weight.dtype == torch.float32  # float32 master weights
    assert scaled == [True] * 3  # every step's loss went through an enabled scaler


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_plain_loop_runs_the_memory_layout_the_lightning_path_ran(channels_last, mnist_dir, monkeypatch):
    # model.channels_last: Lightning's fit converts the CNN to NHWC (Recipe.configure_model); the plain path must
    # too, or the ratio compares two layouts. Each path's second conv weight (C > 1), as its loop starts.
    cfg = make_config("model=cnn", "data=mnist", f"paths.data_dir={mnist_dir}", "model.net.widths=[8,16]",
                      "model.net.hidden_size=32", "data.val_size=100", "data.batch_size=64",
                      f"model.channels_last={str(channels_last).lower()}",
                      "paths.output_dir=/tmp/redes-benchmark")
    datamodule, _ = assemble.build(cfg)
    seen = {}

    def nhwc(recipe):
        return recipe.net.features[4].weight.is_contiguous(memory_format=torch.channels_last)

    monkeypatch.setattr(throughput, "plain_loop", lambda recipe, *args: seen.update(plain=nhwc(recipe)) or 0.0)
    _, trainer = throughput.lightning_run(cfg, datamodule, steps=1, warmup=0)
    throughput.plain_run(cfg, datamodule, trainer, steps=1, warmup=0)
    assert nhwc(trainer.lightning_module) == seen["plain"] == channels_last


@pytest.mark.parametrize("overrides", [
    [*SMALL_DNN, "model.l1=1e-4", "model.label_smoothing=0.1"],  # 11 batches an epoch: 14 steps cross into a second
    ["model=lstm", "data=text", "model.net.hidden_size=32", "model.net.embedding_dim=16", "data.seq_len=16",
     "data.batch_size=16", "data.path={text}", "trainer.gradient_clip_val=0.05",  # a clip the gradients exceed
     "model.label_smoothing=0.1"],
    ["model=lstm", "data=text", "model.net.hidden_size=32", "model.net.embedding_dim=16", "data.seq_len=16",
     "data.batch_size=16", "data.path={text}", "trainer.gradient_clip_val=0.01",
     "+trainer.gradient_clip_algorithm=value"],  # by value: each gradient entry within ±0.01
])
def test_the_plain_loop_takes_the_same_steps_as_the_lightning_path(overrides, monkeypatch, tmp_path):
    # What makes the ratio fair: the same network, batches, loss, label smoothing, L1, clipping, optimizer and
    # schedule. Without dropout (whose masks each path would draw at its own point of the RNG stream) both end on the
    # same weights.
    text = tmp_path / "corpus.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 40)
    cfg = make_config(*(o.format(text=text) for o in overrides), "model.net.dropout=0",
                      "paths.output_dir=/tmp/redes-benchmark")
    datamodule, _ = assemble.build(cfg)
    built, build_recipe = [], assemble.build_recipe  # each path's recipe, and its weights before training

    def recording(*args):
        recipe = build_recipe(*args)
        built.append((recipe, copy.deepcopy(recipe.net.state_dict())))
        return recipe

    made, clocks, batches = [0], [], TensorBatches.__iter__  # batches made so far, at each clock's start and stop

    def counted(loader):
        for batch in batches(loader):
            made[0] += 1
            yield batch

    monkeypatch.setattr(assemble, "build_recipe", recording)
    monkeypatch.setattr(TensorBatches, "__iter__", counted)
    monkeypatch.setattr(throughput, "sync", lambda device: clocks.append(made[0]))
    _, trainer = throughput.lightning_run(cfg, datamodule, steps=12, warmup=2)
    throughput.plain_run(cfg, datamodule, trainer, steps=12, warmup=2)
    (lightning, start), (plain, plain_start) = built
    assert trainer.global_step == 14 and trainer.current_epoch >= 1
    assert clocks[1] - clocks[0] == clocks[3] - clocks[2] == 11  # both clocks: the same batch making
    for name, value in lightning.net.state_dict().items():
        assert torch.equal(start[name], plain_start[name]), name  # one seed, one initialization
        assert torch.allclose(value, plain.net.state_dict()[name], atol=1e-5), name
    assert not all(torch.equal(value, start[name]) for name, value in lightning.net.state_dict().items())  # trained


def test_a_max_time_guard_of_the_config_does_not_cut_the_lightning_path_short():
    # model=lstm's trainer.max_time (9.5 minutes; experiment=lstm_gpu's 2) ended the Lightning run before its last
    # step when the steps took longer: its clock never stopped, and the benchmark ended in a TypeError.
    cfg = make_config(*SMALL_DNN, "trainer.max_time=00:00:00:00", "paths.output_dir=/tmp/redes-benchmark")
    datamodule, _ = assemble.build(cfg)
    seconds, trainer = throughput.lightning_run(cfg, datamodule, steps=3, warmup=1)
    assert trainer.global_step == 4 and seconds > 0


def test_time_to_accuracy_records_the_test_metric_after_every_epoch(tmp_path):
    out = tmp_path / "tta.json"
    result, path = time_to_accuracy.main([*SMALL_DNN, "trainer.max_epochs=3", "targets=[0.0,1.01]", f"out={out}"])
    assert path == str(out) and result["metric"] == "test/auroc"
    seconds = [s for s, _ in result["curve"]]
    assert len(seconds) == 3 and seconds == sorted(seconds) and seconds[0] > 0  # training time, accumulated
    assert result["seconds_to_target"] == {"0.0": seconds[0], "1.01": None}  # reached at once; never
    assert 0.5 < result["curve"][-1][1] <= 1  # learned something from 2,880 rows
    assert result["warmup_steps"] == 0 and result["warmup_seconds"] == 0
    assert result["peak_rss_mib"] > 100 and result["peak_gpu_mib"] is None  # no GPU here
    json.dumps(result)  # what the command prints
    # A warm-up (where torch.compile would compile) trains a throwaway network: the timed one learns the same.
    warmed, _ = time_to_accuracy.main([*SMALL_DNN, "trainer.max_epochs=3", "targets=[0.0]", "warmup=3"])
    assert warmed["warmup_steps"] == 3 and warmed["warmup_seconds"] > 0
    assert [value for _, value in warmed["curve"]] == [value for _, value in result["curve"]]


def test_time_to_accuracy_leaves_the_test_scoring_off_both_clocks(monkeypatch):
    # Lightning's Timer (trainer.max_time) counted the scoring, so a benchmark stopped before train.py would.
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer
    timer = Timer(duration="00:01:00:00")
    clock = time_to_accuracy.TestClock(SimpleNamespace(setup=lambda stage: None, test_dataloader=lambda: None),
                                       "test/acc")
    module = SimpleNamespace(device=torch.device("cpu"), eval=lambda: None, train=lambda: None,
                             score=lambda loader: (time.sleep(0.3), {"test/acc": 0.5})[1])
    trainer = SimpleNamespace(callbacks=[timer], precision="32-true")
    timer.on_train_start(trainer, module)
    clock.on_train_start(trainer, module)
    clock.on_train_epoch_end(trainer, module)
    clock.on_train_epoch_end(trainer, module)
    assert timer.time_elapsed() < 0.1 and all(seconds < 0.1 for seconds, _ in clock.points)


def test_the_gpu_script_runs_its_steps_and_gathers_their_results(tmp_path):
    # benchmarks/gpu.sh's plumbing, in SMOKE mode (the same commands, tiny and on the CPU): each step's exit code,
    # seconds and JSON (a benchmark's, or a run's metrics.json) in results.json, and a summary line each.
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 400)
    env = {**os.environ, "SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "TEXT": str(tmp_path / "corpus.txt")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "lstm_run", "dnn_tta"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results) == ["lstm_run", "dnn_tta"] and all(step["rc"] == 0 for step in results.values())
    assert results["lstm_run"]["metrics"]["steps"] == 3 and results["lstm_run"]["metrics"]["test/loss"] > 0
    assert results["dnn_tta"]["dnn_tta"]["metric"] == "test/auroc"
    summary = done.stdout.splitlines()[-2:]
    assert summary[0].startswith("lstm_run: exit 0") and "test/loss" in summary[0]
    assert summary[1].startswith("dnn_tta: exit 0") and "test/auroc reached" in summary[1]
    assert "=== lstm_run" in (tmp_path / "out" / "log.txt").read_text()


@pytest.mark.parametrize("script, args, message", [
    ("throughput.py", ["model=cnn", "steps=abc"], "error: steps=abc: give a whole number >= 1"),
    ("time_to_accuracy.py", ["model=cnnn"], "error: In 'train': Could not find 'model/cnnn'"),
    ("time_to_accuracy.py", ["model=dnn", "targets=abc"], "error: targets=abc: give a list of numbers"),
    ("throughput.py", ["model=dnn", "trainer.accumulate_grad_batches=4"],  # a Trainer argument configs/ lacks, as in
     "error: trainer.accumulate_grad_batches=4: throughput.py times optimizer steps of one batch each"),  # train.py
    ("throughput.py", ["model=dnn", "steps"], "error: steps: give key=value arguments, the benchmark's own"),
    ("time_to_accuracy.py", ["model=dnn", "-x"], "error: -x: give key=value arguments"),  # (Hydra's page)
    # bf16-true: Lightning trains bfloat16 weights, the plain loop would run float32 ones (time_to_accuracy crashed)
    ("throughput.py", ["model=dnn", "trainer.precision=bf16-true"], "error: trainer.precision=bf16-true: the "
     "benchmarks' plain-PyTorch loop runs 32-true, bf16-mixed, 16-mixed as Lightning does; give one of those"),
    ("criteo_prepare.py", ["--gb", "-1"], "error: argument --gb: '-1': give a number > 0"),
    ("lstm_windows.py", ["--steps", "0"], "error: argument --steps: '0': give a whole number >= 1"),
])
def test_a_bad_benchmark_argument_is_one_error_line(script, args, message, tmp_path):
    done = run_script(f"benchmarks/{script}", *args, *(
        ["--dir", str(tmp_path / "criteo")] if script == "criteo_prepare.py" else []))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "criteo").exists()  # refused before any file is written


@pytest.mark.parametrize("script, out, message", [
    ("throughput.py", "missing/x.json", "no folder"),
    ("time_to_accuracy.py", ".", "is a folder"),
    ("throughput.py", "run/metrics.json", "is a file train.py wrote for the run"),
])
def test_a_benchmarks_out_is_checked_before_it_measures(script, out, message, tmp_path):
    # It was written after the measurement: a traceback minutes later, or a run's metrics.json replaced by the JSON.
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run" / "metrics.json").write_text('{"test/acc": 0.9}\n')
    own = ["steps=1", "warmup=0", "repeats=1"] if script == "throughput.py" else ["trainer.max_epochs=1"]
    done = run_script(f"benchmarks/{script}", *SMALL_DNN, *own, f"out={tmp_path / out}")
    assert done.returncode == 2 and "Traceback" not in done.stderr and not done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: out={tmp_path / out}")
    assert message in done.stderr
    assert (tmp_path / "run" / "metrics.json").read_text() == '{"test/acc": 0.9}\n'


def test_a_misspelt_benchmark_option_is_named_with_the_one_meant():
    # step=5 got Hydra's advice, "To append to your config use +step=5", which train.py then refused.
    names = ("steps", "warmup", "repeats", "out")
    for arg, meant in (("step=5", "steps"), ("+warmups=2", "warmup")):
        refused = f"^{re.escape(arg)}: .* is neither this benchmark's option nor train.py's; did you mean {meant}\\?$"
        with pytest.raises(UserInputError, match=refused):
            split_options(["model=dnn", arg], names)
    assert split_options(["model=dnn", "seed=3", "steps=4"], names) == ({"steps": "4"}, ["model=dnn", "seed=3"])


@pytest.mark.parametrize("script", ["throughput.py", "time_to_accuracy.py"])
def test_a_benchmarks_help_is_its_usage(script):
    done = run_script(f"benchmarks/{script}", "--help")
    assert done.returncode == 0 and f"python benchmarks/{script}" in done.stdout and not done.stderr, done.stderr


@pytest.mark.parametrize("content, message", [
    ("to be or not " * 30, "has 390 characters; it needs 10,260 at least"),  # carried mode looped without end
    (b"caf\xe9", "is not UTF-8 text (byte 3)"),
    (None, "corpus.txt: a folder; give a text file"),  # it said "no such file", and all three exited 1
])
def test_lstm_windows_refuses_a_text_it_cannot_use_in_one_line(content, message, tmp_path):
    path = tmp_path / "corpus.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = run_script("benchmarks/lstm_windows.py", "--path", str(path), "--steps", "1", "--hidden", "8", timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: --path {path}" in done.stderr.strip().splitlines()[-1] and message in done.stderr, done.stderr


def test_criteo_prepare_never_deletes_a_folder_it_did_not_fill(tmp_path):
    # Without --keep it deletes --dir when done: a folder holding anything else is refused, and so is a file.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    (tmp_path / "a_file").write_text("keep me too")
    for folder, message in [("mine", "holds files this benchmark did not write (precious.txt)"),
                            ("a_file", "is a file")]:
        done = run_script("benchmarks/criteo_prepare.py", "--gb", "0.001", "--dir", str(tmp_path / folder))
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me" and (tmp_path / "a_file").is_file()


def test_criteo_prepare_refuses_a_dir_it_cannot_make_in_one_line(tmp_path):
    # --dir /sys/kernel/x ended in a PermissionError traceback (a folder under a file: NotADirectoryError).
    (tmp_path / "a_file").write_text("kept")
    done = run_script("benchmarks/criteo_prepare.py", "--gb", "0.001", "--dir", str(tmp_path / "a_file" / "x"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"error: --dir {tmp_path / 'a_file' / 'x'}: cannot make it "
                                                         "(Not a directory): give a folder you can write to")


def test_criteo_prepare_refuses_a_training_that_would_not_stream(tmp_path):
    # Its training is there to show streamed rows in bounded memory: training and validation rows within
    # --max-in-memory-gb are read into memory (the test rows are read apart), and the JSON did not say so. Also
    # with a limit below the whole cache: the 10% test rows do not count.
    from benchmarks.criteo_prepare import fitted_rows_bytes, write_file
    from data.criteo import CriteoDataModule, prepare

    write_file(tmp_path / "criteo.txt", 0.002)  # the same rows the script writes for --gb 0.002
    cache = prepare(tmp_path / "criteo.txt", tmp_path / "cache")
    held, whole = fitted_rows_bytes(cache), sum(f.stat().st_size for f in cache.glob("*.npy"))
    assert held < whole
    between = (held + whole) / 2 / 2**30
    data = CriteoDataModule(path=tmp_path / "criteo.txt", cache_dir=tmp_path / "cache", max_in_memory_gb=between)
    data.setup("fit")
    assert isinstance(data.train[0], torch.Tensor)  # held in memory, as the script now says
    done = run_script("benchmarks/criteo_prepare.py", "--gb", "0.002", "--train-steps", "1",
                      "--max-in-memory-gb", f"{between!r}", "--dir", str(tmp_path / "c"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr  # bad input: 2 (it was 1)
    assert "holds the training and validation rows" in done.stderr.strip().splitlines()[-1]


def test_criteo_prepare_prints_json_alone_on_stdout(tmp_path):
    # The conversion's progress bar went to stdout, before the JSON: `> result.json` was not JSON.
    done = run_script("benchmarks/criteo_prepare.py", "--gb", "0.001", "--dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] > 0 and "preparing" in done.stderr


@pytest.mark.parametrize("flag, value", [("--max-in-memory-gb", "0"), ("--hash-buckets", "10")])
def test_criteo_prepare_refuses_a_training_setting_without_training(flag, value, tmp_path):
    # Without --train-steps there is no training: the setting was ignored, the file written and converted anyway.
    done = run_script("benchmarks/criteo_prepare.py", "--gb", "0.001", flag, value, "--dir", str(tmp_path / "c"))
    assert done.returncode == 2 and not done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(f"error: {flag} sets the training: add --train-steps N, or "
                                                         "leave it out")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("where, args, message", [
    ("none", [], "error: --memory-limit-gb: no memory cgroup here (needs {v2}, cgroup v1 or v2): leave the option out"),
    ("taken", [], "error: --memory-limit-gb: cannot create {v2}/redes_bench_{pid} (File exists): run as root, or"),
    ("none", ["--train-steps", "0"], "error: --memory-limit-gb sets the training: add --train-steps N"),
])
def test_criteo_prepare_refuses_a_memory_limit_it_cannot_apply_with_exit_2(where, args, message, tmp_path,
                                                                           monkeypatch, capsys):
    # A cgroup it could not make was sys.exit("...") after the file was written and converted: exit 1, no
    # `error:`; without --train-steps the limit was ignored.
    from benchmarks import criteo_prepare

    v2 = tmp_path / "cgroup"  # a stand-in for /sys/fs/cgroup: the test makes no real cgroup
    if where == "taken":  # cgroup v2, where the group's name is taken (mkdir fails as it would without root)
        v2.mkdir()
        (v2 / "cgroup.controllers").write_text("memory\n")
        (v2 / f"redes_bench_{os.getpid()}").write_text("")
    monkeypatch.setattr(criteo_prepare.MemoryCgroup, "V2", v2)
    monkeypatch.setattr(sys, "argv", ["criteo_prepare.py", "--gb", "0.001", "--train-steps", "1", *args,
                                      "--memory-limit-gb", "1", "--dir", str(tmp_path / "criteo")])
    with pytest.raises(SystemExit) as exit:
        criteo_prepare.main()
    assert exit.value.code == 2
    assert message.format(v2=v2, pid=os.getpid()) in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "criteo").exists()  # refused before any file is written
