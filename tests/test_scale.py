"""Scaling out and searching: DDP shards, two CPU processes against one, sweeps (a grid and an Optuna study)."""
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from unittest import mock

import lightning as L
import optuna
import pytest
import torch
from hydra.types import RunMode
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train as train_module
from data import UserInputError
from data.batches import TensorBatches
from models.signatures import check_trainer_args
from models.cli import check_overrides, distributed_arguments, flags_first
from models.sweeps import SweepSummary
from models.runs import prepare_data_once
from tests.conftest import ROOT, make_config
from tests.cli_process import run_cli

eval_script = importlib.import_module("eval")  # eval.py, beside train.py

QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.result_figures=null"]
COMPARED = ("test/auroc", "test/acc", "test/loss", "val/auroc_best")


@pytest.mark.parametrize("preset, strategy", [("ddp", "ddp"), ("ddp_cpu", "DDPStrategy")])
def test_ddp_presets_compose_into_trainer_arguments(preset, strategy, tmp_path):
    trainer = make_config("model=cnn", f"trainer={preset}", output_dir=tmp_path).trainer
    check_trainer_args(trainer)  # every key a Trainer argument of the right type
    assert strategy in str(trainer.strategy) and trainer.devices >= 2 and trainer.num_nodes == 1


def test_training_shards_are_disjoint_equal_and_rebuild_the_single_process_batches():
    rows = torch.arange(1003)
    one = list(TensorBatches(rows, batch_size=64, shuffle=True, drop_last=True, seed=7))
    ranks = [TensorBatches(rows, batch_size=32, shuffle=True, drop_last=True, seed=7, num_replicas=2, rank=r)
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 15  # every rank takes the same number of steps
    for (single,), (first,), (second,) in zip(one, *ranks, strict=True):
        assert not set(first.tolist()) & set(second.tolist())
        assert torch.equal(torch.stack([first, second], 1).reshape(-1), single)  # rows interleaved: the same batch


def test_each_rank_draws_its_own_augmentation():
    def draw(rows, generator):
        return (torch.rand(len(rows), generator=generator),)  # an augmentation's random numbers
    def batches(**ddp):
        return [b for (b,) in TensorBatches(torch.arange(64), batch_size=16, seed=7, transform=draw, **ddp)]
    single, first, second = batches(), batches(num_replicas=2, rank=0), batches(num_replicas=2, rank=1)
    assert all(torch.equal(a, b) for a, b in zip(first, single))  # rank 0 draws what one process draws
    assert not any(torch.equal(a, b) for a, b in zip(first, second))


def test_evaluation_shards_serve_every_row_exactly_once():
    rows = torch.arange(1001)
    ranks = [TensorBatches(rows, batch_size=100, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [6, 5]  # 501 and 500 rows: no padding, no repeated row
    served = torch.cat([b for r in ranks for (b,) in r])
    assert torch.equal(served.sort().values, rows)


@pytest.mark.parametrize("train", [False, True])
def test_a_split_smaller_than_the_ranks_is_refused_not_left_to_hang(train):
    # A rank with no rows would skip the epoch-end gathers the others wait in (training: no rank would train).
    with pytest.raises(UserInputError, match="3 processes"):
        TensorBatches(torch.arange(2), batch_size=100, drop_last=train, num_replicas=3, rank=2)


def test_a_training_split_smaller_than_a_batch_still_gives_one_batch_per_rank():
    # drop_last drops a short last batch, never the only one: data.train_size < data.batch_size still trains.
    def shard(rank):
        return TensorBatches(torch.arange(7), batch_size=100, drop_last=True, num_replicas=2, rank=rank)

    assert [len(shard(rank)) for rank in (0, 1)] == [1, 1]
    assert [len(b[0]) for rank in (0, 1) for b in shard(rank)] == [3, 3]  # equal shards: row 6 sits out
    assert len(TensorBatches(torch.arange(250), batch_size=100, drop_last=True)) == 2


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    # Without dropout and batch norm (each DDP rank would draw its own masks and normalize over its own 128 rows),
    # 2 x 128 rows with averaged gradients is the same step as 256 rows on one process, up to float rounding.
    # 20007 rows and eval batches of 400 give the ranks unequal evaluation shards: val 801/800 rows, 3/2 batches.
    common = ["model=dnn", "data.rows=20007", "data.eval_batch_size=400", "trainer.max_epochs=2",
              "model.net.dropout=0", "model.net.batch_norm=false", *QUIET]
    figures_on = [a for a in common if a != "callbacks.result_figures=null"]  # ROC and calibration: gathered shards
    # Each rank tests 2 batches of its shard, interleaved by batch: the split's first 4 batches, as one process's 4.
    ddp = run_cli(*figures_on, "trainer=ddp_cpu", "data.batch_size=128", "trainer.limit_test_batches=2",
                  f"paths.log_dir={tmp_path}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    runs = list((tmp_path / "dnn").iterdir())
    assert len(runs) == 1, runs  # rank 1 wrote into rank 0's run directory, not a timestamped one of its own
    run = runs[0]
    assert (run / "train_ddp_process_1.log").is_file() and list(run.rglob("metrics.json")) == [run / "metrics.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert ddp.stdout.count('"test/auroc"') == 1  # only rank 0 prints the result
    assert "is deprecated" not in ddp.stderr  # torch's deprecation of the all_gather Lightning gathers figures with
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.*")).parent)).Reload()
    assert {"test/roc", "test/calibration"} <= set(events.Tags()["images"])
    parallel = json.loads((run / "metrics.json").read_text())
    assert parallel["device"].endswith("x 2 processes (DDP)")

    # eval.py, one process, scores as many test batches as the run's two did (the Bayes figure: of the same rows).
    rescored = eval_script.evaluate(run / parallel["best_checkpoint"])
    assert rescored["data/bayes_auroc"] == parallel["data/bayes_auroc"]
    assert {k: rescored[k] for k in COMPARED[:3]} == pytest.approx({k: parallel[k] for k in COMPARED[:3]}, abs=1e-3)

    single = train_module.train(make_config(*common, "data.batch_size=256", "trainer.limit_test_batches=4",
                                            output_dir=tmp_path / "one"))
    # eval.py on two processes scores as many test batches as the run's one did, 2 a process (each scored the
    # run's 4: 8 in all, other metrics), and prints and writes them once.
    rescored = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt_path={tmp_path}/one/checkpoints/best.ckpt",
                               "trainer.accelerator=cpu", "trainer.devices=2", f"out={tmp_path}/eval2.json"],
                              capture_output=True, text=True, timeout=300)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert rescored.stdout.count('"test/auroc"') == 1 and rescored.stderr.count("written to") == 1
    evaluated = json.loads((tmp_path / "eval2.json").read_text())
    assert {k: evaluated[k] for k in COMPARED[:3]} == pytest.approx({k: single[k] for k in COMPARED[:3]}, abs=1e-3)
    assert (parallel["steps"], parallel["epochs"]) == (single["steps"], single["epochs"]) == (112, 2)
    assert parallel["test/auroc"] > 0.74  # learned: 0.5 is chance, the Bayes optimum of this data 0.81
    # Measured: differences of at most 8e-4; 2e-2 when both ranks trained on the same shard.
    assert {k: parallel[k] for k in COMPARED} == pytest.approx({k: single[k] for k in COMPARED}, abs=3e-3)
    # The per-step training loss: both processes' mean, the loss their averaged gradient follows (rank 0's half of
    # the batch alone was up to 1e-2 off).
    curves = [{e.step: e.value for e in EventAccumulator(str(folder)).Reload().Scalars("train/loss_step")}
              for folder in (events.path, next((tmp_path / "one" / "tensorboard").rglob("events.*")).parent)]
    assert len(curves[0]) >= 3 and curves[0] == pytest.approx(curves[1], abs=2e-3)


class DrawProbe(L.Callback):
    """Appends a draw of its process's generator (dropout's) to `path`.RANK at each training batch. (Hydra imports
    this as tests.test_scale.)"""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        with open(f"{self.path}.{trainer.global_rank}", "a") as f:
            f.write(f"{trainer.global_step} {torch.rand(1).item()!r}\n")


def test_each_ddp_process_draws_its_own_dropout_masks_and_resumes_with_its_own(tmp_path):
    # Seeded alike, the two processes drew the same masks: rank 1's rows got the masks of rank 0's. And a resume
    # must give each process its own generator back (the checkpoint held rank 0's alone).
    common = ["model=dnn", "data.rows=3000", "data.batch_size=128", "trainer=ddp_cpu", "scheduler=none",
              "callbacks.early_stopping=null", "trainer.limit_test_batches=1", *QUIET,
              "+callbacks.probe._target_=tests.test_scale.DrawProbe"]

    def run(out, epochs, *more):
        result = run_cli(*common, f"+callbacks.probe.path={out}/draws", f"trainer.max_epochs={epochs}",
                         f"hydra.run.dir={out}", *more)
        assert result.returncode == 0, result.stderr[-3000:]
        return [(out / f"draws.{rank}").read_text().splitlines() for rank in (0, 1)]

    whole = run(tmp_path / "whole", 2)
    run(tmp_path / "broken", 1)
    resumed = run(tmp_path / "broken", 2, "ckpt_path=last")  # the draws of both segments, as the whole run's
    assert len(whole[0]) == len(whole[1]) > 4 and whole[0][-1].split()[0] != "0"
    assert [line.split()[1] for line in whole[0]] != [line.split()[1] for line in whole[1]]
    assert resumed == whole
    weights = [torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for out in (tmp_path / "whole", tmp_path / "broken")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_learning_rate_finder_under_ddp_leaves_each_process_its_own_dropout_masks(tmp_path):
    # The finder's trial checkpoint, saved from its on_fit_start before the processes reseeded, held their alike
    # states as each one's own; restoring it made on_fit_start skip the reseed: every process drew rank 0's masks.
    result = run_cli("model=dnn", "data.rows=3000", "data.batch_size=128", "trainer=ddp_cpu", "scheduler=none",
                     "trainer.max_epochs=1", "callbacks.early_stopping=null", "trainer.limit_test_batches=1", *QUIET,
                     "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateFinder",
                     "+callbacks.lr.num_training_steps=5", "+callbacks.probe._target_=tests.test_scale.DrawProbe",
                     f"+callbacks.probe.path={tmp_path}/draws", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    draws = [[line.split()[1] for line in (tmp_path / f"draws.{rank}").read_text().splitlines()] for rank in (0, 1)]
    assert len(draws[0]) == len(draws[1]) > 4 and draws[0][-1] != draws[1][-1]


def test_an_error_under_ddp_is_one_line_not_one_per_process(tmp_path):
    # Known only once each process has read the data: every rank raised it, and every rank printed it.
    result = run_cli("model=dnn", "trainer=ddp_cpu", "data.rows=2000", "trainer.limit_train_batches=0.0001", *QUIET,
                     f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and result.stderr.count("error: trainer.limit_train_batches=0.0001") == 1, \
        result.stderr[-3000:]


def test_a_sweep_refuses_ddp_processes(tmp_path):
    result = run_cli("-m", "model=dnn", "trainer=ddp_cpu", "data.rows=2000", "seed=0,1", *QUIET,
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: -m with 2 DDP processes per run is not supported")
    assert not list(tmp_path.iterdir())  # refused before the first job: no job directory, no data generated


def test_a_search_without_its_flag_is_checked_as_a_sweep_before_its_study(tmp_path):
    # hparams_search=NAME sets hydra.mode: MULTIRUN itself. Without -m the sweep's checks were skipped: the study
    # started, its first trial failed on DDP (study.db, a FAIL trial), and an empty run folder was claimed.
    result = run_cli("hparams_search=dnn_optuna", "trainer=ddp_cpu", "data.rows=2000", "hydra.sweeper.n_trials=1",
                     *QUIET, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: -m with 2 DDP processes per run is not supported")
    assert not list(tmp_path.iterdir())  # no study, no trial, no run folder
    assert flags_first(["hparams_search=dnn_optuna", "seed=1"]) == ["--multirun", "hparams_search=dnn_optuna", "seed=1"]
    for argv in (["hparams_search=dnn_optuna", "--cfg", "job"], ["hparams_search=dnn_optuna", "--cfg=job"],
                 ["hparams_search=dnn_optuna", "hydra.mode=RUN"],
                 ["hparams_search=null"], ["-m", "hparams_search=dnn_optuna"]):
        assert flags_first(argv)[0] != "--multirun"  # Hydra's other modes, a run asked for, no search; -m given


def test_a_search_refuses_a_model_that_cannot_read_its_data_before_its_study():
    # Checked as a sweep, hparams_search=NAME without -m lost the up-front refusal of a model for data it does not
    # read (a grid's mismatched job fails alone): the study started and its first trial failed on it (study.db).
    for argv in (["hparams_search=dnn_optuna"], ["-m", "hparams_search=dnn_optuna"]):
        with pytest.raises(UserInputError, match=r"^model=dnn reads tables, and data=fashion_mnist is images"):
            check_overrides(flags_first([*argv, "data=fashion_mnist", "~data.rows"]))
    check_overrides(["-m", "model=dnn,cnn", "data=fashion_mnist"])  # a grid: its dnn job fails alone, as before


def test_torchrun_ranks_must_name_one_run_directory():
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    with mock.patch.dict(os.environ, torchrun):
        with pytest.raises(UserInputError, match="the 2 processes that torchrun started need one run directory"):
            distributed_arguments(["model=dnn"])
        assert distributed_arguments(["model=dnn", "hydra.run.dir=r"])[-2:] == [
            "hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"]  # rank 1 leaves .hydra/ to rank 0
    assert distributed_arguments(["model=dnn"]) == ["model=dnn"]  # one process: nothing to do


def test_grid_multirun_writes_a_run_directory_per_job_and_one_summary(tmp_path):
    result = run_cli("-m", "model=dnn", "data.rows=5000", "trainer.max_epochs=1", "model.net.hidden_size=16,32",
                     "seed=0,1", *QUIET, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.parent.name for p in tmp_path.glob("*/metrics.json")) == ["0", "1", "2", "3"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted((r["model.net.hidden_size"], r["seed"]) for r in summary) == [
        ("16", "0"), ("16", "1"), ("32", "0"), ("32", "1")]
    assert [r["val/auroc_best"] for r in summary] == sorted((r["val/auroc_best"] for r in summary), reverse=True)
    assert sorted(p.name for p in tmp_path.glob("summary.*")) == ["summary.csv", "summary.json"]
    logs = [(tmp_path / str(job) / "train.log").read_text() for job in range(4)]  # each job's messages in its own
    assert [log.count("Trainer.fit` stopped") for log in logs] == [1] * 4 and "seed=1" in logs[3]


def test_optuna_search_reports_the_best_trial_and_resumes_its_study(tmp_path):
    args = ["-m", "hparams_search=dnn_optuna", "data.rows=4000", "trainer.max_epochs=1", *QUIET,
            f"hydra.sweep.dir={tmp_path}"]
    result = run_cli(*args, "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) == 3 and all("model.lr" in r for r in summary)  # each run got Optuna's proposal
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert best.best_value == pytest.approx(summary[0]["val/auroc_best"])  # Optuna got train.py's val/auroc_best
    assert "Best value:" in result.stdout + result.stderr

    again = run_cli(*args, "hydra.sweeper.n_trials=1")  # the same command goes on with the same study
    assert again.returncode == 0, again.stderr[-2000:]
    study = optuna.load_study(study_name="dnn_clicks", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert study.user_attrs == {"monitor": "val/auroc", "data": None}  # what the next search is checked against
    assert len(list(tmp_path.glob("*/metrics.json"))) == 4  # a new run directory; none overwritten


def test_each_data_config_has_a_study_of_its_own_and_a_study_keeps_its_ranking(tmp_path, monkeypatch):
    # The default study was one for all data (`dnn`): data=advertising's trials joined the click data's, or its
    # val/loss (minimized) ended in Optuna's "ValueError: Cannot overwrite study direction" once the sweep started.
    monkeypatch.setenv("REDES_ROOT", str(tmp_path))  # outputs/optuna/NAME under tmp_path
    for data in ("clicks", "advertising"):
        storage = f"sqlite:///{tmp_path}/outputs/optuna/dnn_{data}/study.db"
        (tmp_path / "outputs" / "optuna" / f"dnn_{data}").mkdir(parents=True)
        metric, mode = ("val/auroc", "maximize") if data == "clicks" else ("val/loss", "minimize")
        optuna.create_study(study_name=f"dnn_{data}", storage=storage, direction=mode).set_user_attr("monitor", metric)
        check_overrides(["-m", "hparams_search=dnn_optuna", f"data={data}", *(["~data.rows"] * (data != "clicks"))])
    stamped = "hydra.sweeper.study_name=dnn_clicks: that study ({}/outputs/optuna/dnn_clicks/study.db) maximizes " \
              "val/auroc; this search {}, so its trials would not rank among the study's: name a study of its own, " \
              "hydra.sweeper.study_name=NAME"
    for monitor, search in ((["monitor.metric=val/loss", "monitor.mode=min"], "minimizes val/loss"),
                            (["monitor.metric=val/acc"], "maximizes val/acc")):  # the same direction, not the metric
        with pytest.raises(UserInputError, match=f"^{re.escape(stamped.format(tmp_path, search))}$"):
            check_overrides(["-m", "hparams_search=dnn_optuna", *monitor])
        check_overrides(["-m", "hparams_search=dnn_optuna", *monitor, "hydra.sweeper.study_name=mine"])
    # data=csv's study, dnn_csv, is every table's: a study keeps its file, and another file's search is refused
    table = ["-m", "hparams_search=dnn_optuna", "data=advertising", "~data.rows"]
    study = optuna.load_study(study_name="dnn_advertising",
                              storage=f"sqlite:///{tmp_path}/outputs/optuna/dnn_advertising/study.db")
    study.set_user_attr("data", str(tmp_path / "a.csv"))
    check_overrides([*table, f"data.path={tmp_path}/a.csv"])
    with pytest.raises(UserInputError, match=re.escape(f"that study ({tmp_path}/outputs/optuna/dnn_advertising/"
                                                       f"study.db) searched {tmp_path}/a.csv; this search reads "
                                                       f"{tmp_path}/b.csv: name a study for this file")):
        check_overrides([*table, f"data.path={tmp_path}/b.csv"])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "study.db").write_text("not a database")  # hydra.sweep.dir names the study's folder
    with pytest.raises(UserInputError, match=f"^{re.escape(str(tmp_path))}/elsewhere/study.db: Optuna cannot read it"):
        check_overrides(["-m", "hparams_search=dnn_optuna", f"hydra.sweep.dir={tmp_path}/elsewhere"])


def test_an_optuna_study_stopped_by_an_error_keeps_a_summary_with_the_failed_trial(tmp_path):
    result = run_cli("-m", "hparams_search=dnn_optuna", "data=advertising", "~data.rows",
                     f"data.path={tmp_path}/missing.csv", "hydra.sweeper.n_trials=2", *QUIET,
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: data.path={tmp_path}/missing.csv: no such file")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["failed"] and "model.lr" in summary[0]  # the trial, with its proposal
    study = optuna.load_study(study_name="dnn_advertising", storage=f"sqlite:///{tmp_path}/study.db")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # not RUNNING for ever: the sweeper never got to say
    assert study.user_attrs == {"monitor": "val/loss", "data": f"{tmp_path}/missing.csv"}
    assert {k: str(v) for k, v in study.trials[0].params.items()}.items() <= summary[0].items()  # that trial


def test_the_sweep_summary_is_written_after_every_job(tmp_path):
    # A sweep cut short (Ctrl-C) keeps the summary of the jobs it finished: Hydra calls on_job_end after each.
    for job, value in (("0", 0.7), ("1", 0.9), ("2", None)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        if value is not None:
            (tmp_path / job / "metrics.json").write_text(json.dumps({"val/auroc_best": value}))
    config = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)},
                                         "runtime": {"output_dir": str(tmp_path / "2")}, "job": {"num": 2}},
                               "monitor": {"metric": "val/auroc", "mode": "max"}})
    SweepSummary().on_job_end(config, job_return=None)  # job 2's end
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["job"], r["seed"], r["failed"]) for r in summary] == [("1", "1", False), ("0", "0", False),
                                                                      ("2", "2", True)]


def test_a_grid_sweep_with_a_failed_job_exits_1_after_its_summary(tmp_path, capsys):
    # Only this sweep's failures count: an Optuna study's folder also lists the failed trials of earlier commands
    # (test_a_sweep_whose_jobs_all_failed_still_has_a_summary_and_no_best ends without exiting).
    sweep_jobs(tmp_path, {"0": (["seed=0"], {"val/acc_best": 0.5}), "1": (["seed=1"], None)})
    summary = SweepSummary()
    for job in (0, 1):
        summary.on_job_end(OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)},
                                                       "runtime": {"output_dir": str(tmp_path / str(job))},
                                                       "job": {"num": job}},
                                             "monitor": {"metric": "val/acc", "mode": "max"}}), job_return=None)
    with pytest.raises(SystemExit) as ended:
        summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                                                  "monitor": {"metric": "val/acc", "mode": "max"}}))
    assert ended.value.code == 1 and summary.failed_jobs == [1]
    assert capsys.readouterr().out.startswith("1 run (1 failed, no metrics.json: job 1); summary: ")


def test_a_monitor_metric_that_is_never_logged_is_one_line(tmp_path):
    result = run_cli("-m", "hparams_search=dnn_optuna", "monitor.metric=val/aucroc", "hydra.sweeper.n_trials=1",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: monitor.metric=val/aucroc is not a metric this binary run logs; "
        "choose one of val/loss, val/acc, val/auroc, train/loss, train/acc, train/auroc")
    assert not list(tmp_path.iterdir())  # before the study and its first trial


def test_data_is_prepared_by_one_process_at_a_time(capsys):
    # Every DDP rank builds the data: two downloads into one file would corrupt it.
    spans = []

    class SlowData:
        def prepare_data(self):
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

    ranks = [threading.Thread(target=prepare_data_once, args=(SlowData(),)) for _ in range(3)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    spans.sort()
    assert len(spans) == 3 and all(one[1] <= next_[0] for one, next_ in zip(spans, spans[1:]))
    assert "waiting for another process that prepares data" in capsys.readouterr().err  # a wait is said, not silent


@pytest.mark.parametrize("preset", ["hparams_search=dnn_optuna", "experiment=cnn_gpu", "experiment=lstm_gpu"])
def test_debug_fast_wins_over_a_search_or_an_experiment(preset):
    trainer = make_config(preset, "debug=fast").trainer
    assert (trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches) == (1, 2, 2)


def test_rank_0_and_srun_ranks_share_the_named_run_directory():
    # Rank 0 writes .hydra/ (its command unchanged); srun's other ranks are told not to; one process needs no folder.
    torchrun = {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    with mock.patch.dict(os.environ, torchrun):
        assert distributed_arguments(["model=dnn", "hydra.run.dir=r"]) == ["model=dnn", "hydra.run.dir=r"]
    with mock.patch.dict(os.environ, {**torchrun, "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1"}):
        assert distributed_arguments(["model=dnn"]) == ["model=dnn"]
    srun = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
            "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "n1"}
    with mock.patch.dict(os.environ, srun), mock.patch("shutil.which", return_value="/usr/bin/srun"):
        with pytest.raises(UserInputError, match="the 2 processes that srun started need one run directory"):
            distributed_arguments(["model=dnn"])
        assert distributed_arguments(["hydra.run.dir=r"])[-2:] == [
            "hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"]


def sweep_jobs(sweep, jobs: dict) -> None:
    """Job directories as Hydra's sweeper leaves them: JOB/.hydra/overrides.yaml, and metrics.json if it finished."""
    for job, (overrides, metrics) in jobs.items():
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if metrics is not None:
            (sweep / job / "metrics.json").write_text(json.dumps(metrics))


def test_a_sweep_whose_jobs_are_deeper_folders_has_a_summary_and_exits_1_on_a_failed_job(tmp_path, capsys):
    # hydra.sweep.subdir=${hydra.job.num}/run: the summary looked one level down only, so it found no job, wrote
    # nothing, and the sweep whose jobs had all failed exited 0.
    sweep_jobs(tmp_path, {"0/run": (["seed=0"], {"val/acc_best": 0.5}), "1/run": (["seed=1"], None)})
    summary = SweepSummary()
    for job in (0, 1):
        summary.on_job_end(OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)},
                                                       "runtime": {"output_dir": str(tmp_path / str(job) / "run")},
                                                       "job": {"num": job}},
                                             "monitor": {"metric": "val/acc", "mode": "max"}}), job_return=None)
    with pytest.raises(SystemExit) as ended:
        summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                                                  "monitor": {"metric": "val/acc", "mode": "max"}}))
    assert ended.value.code == 1
    assert capsys.readouterr().out.startswith("1 run (1 failed, no metrics.json: job 1/run); summary: ")
    assert [(r["job"], r["seed"], r["failed"]) for r in json.loads((tmp_path / "summary.json").read_text())] == [
        ("0/run", "0", False), ("1/run", "1", True)]


def test_the_sweep_end_line_counts_failed_jobs_in_job_order_and_names_the_best(tmp_path, capsys):
    # Job 10 after job 2; `++trainer.x=` is the column trainer.x; the printed line counts the finished runs.
    sweep_jobs(tmp_path, {"0": (["++trainer.max_epochs=1"], {"val/acc_best": 0.5}),
                          "10": (["++trainer.max_epochs=3"], None), "2": (["++trainer.max_epochs=2"], None)})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                               "monitor": {"metric": "val/acc", "mode": "max"}})
    SweepSummary().on_multirun_end(config)
    assert capsys.readouterr().out == (f"1 run (2 failed, no metrics.json: jobs 2, 10); summary: "
                                       f"{tmp_path / 'summary.csv'}; best by val/acc_best: job 0\n")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["job"], r["trainer.max_epochs"]) for r in summary] == [("0", "1"), ("2", "2"), ("10", "3")]


def test_a_sweep_whose_jobs_all_failed_still_has_a_summary_and_no_best(tmp_path, capsys):
    # Every job failed: their overrides are still listed (what to fix), and no job is called the best.
    sweep_jobs(tmp_path, {"0": (["seed=0"], None), "1": (["seed=1"], None)})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                               "monitor": {"metric": "val/acc", "mode": "max"}})
    SweepSummary().on_multirun_end(config)
    assert capsys.readouterr().out.endswith(f"0 runs (2 failed, no metrics.json: jobs 0, 1); summary: "
                                            f"{tmp_path / 'summary.csv'}\n")
    assert [r["seed"] for r in json.loads((tmp_path / "summary.json").read_text())] == ["0", "1"]


def test_a_single_run_writes_no_sweep_summary(tmp_path):
    # on_job_end also ends a plain `python train.py` run: no summary for it in the sweep folder.
    sweep_jobs(tmp_path, {"0": (["seed=0"], {"val/acc_best": 0.5})})
    config = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path)}},
                               "monitor": {"metric": "val/acc", "mode": "max"}})
    SweepSummary().on_job_end(config, job_return=None)
    assert not list(tmp_path.glob("summary.*"))
