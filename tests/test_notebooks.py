"""The model notebooks (notebooks/ad_click.ipynb, notebooks/text_generation.ipynb) executed headless on small real
runs of train(): they run, draw their figures, reproduce metrics.json and show what they should."""
import importlib
import re

import pytest
from omegaconf import OmegaConf

import train as train_module
from tests.conftest import ROOT, make_config

nbformat = pytest.importorskip("nbformat")  # the dev extras: nbformat, nbclient, ipykernel
pytest.importorskip("nbclient")

QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null"]
PATTERN = "hello world, hello LSTM\n"  # 24 characters: predictable once the LSTM knows where it is


def train_run(out, *overrides):
    """A run directory as the CLI leaves it: train() writes everything but .hydra/config.yaml, saved here."""
    cfg = make_config(*overrides, *QUIET, output_dir=out)
    metrics = train_module.train(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return metrics


def execute(name, run, **parameters):
    """The notebook run on `run`: (printed text, number of figures). Stored without outputs, executed without errors."""
    assert all(not cell.get("outputs") for cell in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", 4).cells), \
        "store the notebook without outputs"
    executed = importlib.import_module("notebooks.run").execute(name, run, **parameters)
    outputs = [o for cell in nbformat.read(executed, as_version=4).cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return "".join(o.get("text", "") for o in outputs), sum("image/png" in o.get("data", {}) for o in outputs)


def test_ad_click_notebook(tmp_path):
    metrics = train_run(tmp_path, "model=dnn", "data.rows=10000", "data.batch_size=256", "trainer.max_epochs=2")
    text, figures = execute("ad_click", tmp_path, permutation_repeats=1)
    assert figures == 4  # ROC, calibration, AUC per epoch, permutation importance
    recomputed, recorded = re.search(r"AUC recomputed from best.ckpt: ([\d.]+) \(metrics.json: ([\d.]+)", text).groups()
    assert float(recomputed) == pytest.approx(float(recorded), abs=1.5e-4)  # printed to 4 decimals
    assert recorded == f"{metrics['test/auroc']:.4f}"
    auc = {name: float(re.search(rf"^{re.escape(name)}\s+([\d.]+)", text, re.M)[1])
           for name in ("DNN (best.ckpt)", "logistic regression", "Bayes optimum (true p_click)")}
    assert auc["Bayes optimum (true p_click)"] == pytest.approx(metrics["data/bayes_auroc"], abs=1e-4)
    # A weighted sum cannot represent the age x time-on-site XOR: the DNN beats it widely, and not the optimum
    # (measured: logistic regression 0.563, DNN 0.731, optimum 0.813).
    assert auc["logistic regression"] + 0.1 < auc["DNN (best.ckpt)"] < auc["Bayes optimum (true p_click)"], auc
    ranked = re.findall(r"^(\w+)\s+-?[\d.]+$", text, re.M)  # the importance, printed largest first
    assert set(ranked[:2]) == {"age", "time_on_site"}, ranked  # the XOR's two columns matter most


def test_text_generation_notebook(tmp_path, capsys):
    (tmp_path / "pattern.txt").write_text(PATTERN * 300)
    # Windows of 50 (not a multiple of 24): each test window starts at another place in the sentence.
    metrics = train_run(tmp_path / "run", "model=lstm", "data=text", f"data.path={tmp_path / 'pattern.txt'}",
                        "data.seq_len=32", "data.batch_size=16", "data.eval_seq_len=50", "model.net.embedding_dim=16",
                        "model.net.hidden_size=64", "model.net.num_layers=1", "model.lr=1e-2", "trainer.max_time=null",
                        "trainer.max_steps=80", "callbacks.text_samples.length=60")
    text, figures = execute("text_generation", tmp_path / "run", length=60)  # one LSTM step a character
    assert figures == 1
    assert text.count("--- temperature") == 5 and "--- after step" in text
    coldest = text.split("--- temperature 0.2")[1].split("--- temperature")[0]
    assert "hello world, hello LSTM\nhello world" in coldest  # at temperature 0.2: the sentence, again and again
    recomputed, recorded = re.search(r"recomputed from best.ckpt: ([\d.]+) \(metrics.json: ([\d.]+)\)", text).groups()
    assert float(recomputed) == pytest.approx(float(recorded), abs=1.5e-4)  # printed to 4 decimals
    assert recorded == f"{metrics['test/loss']:.4f}"
    first, tail = map(float, re.search(r"first character: ([\d.]+) nats.*window: ([\d.]+)", text).groups())
    # From a zero state the first character is a guess among the sentence's letters; later ones are not
    # (measured: 0.68 nats, then 0.046 in the second half of the window).
    assert first > 5 * tail, (first, tail)
    # The DNN's notebook on this LSTM run: bad input, one line saying why, and the executed copy to look at.
    assert importlib.import_module("notebooks.run").main(["ad_click", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: notebook ad_click on {tmp_path / 'run'}: ") and "reads model=dnn runs" in error
    assert error.count("\n") == 1 and (tmp_path / "run" / "ad_click.failed.ipynb").is_file()
    assert "ad_click.failed.ipynb shows the cell" in error
    # A misspelt parameter is refused (it would be set and never read); a list parameter given one value is a list.
    assert importlib.import_module("notebooks.run").main(["ad_click", str(tmp_path / "run"), "baseline_epoch=2"]) == 2
    assert "ad_click has no parameter 'baseline_epoch'; did you mean baseline_epochs?" in capsys.readouterr().err
    # An executed copy with nowhere to go is refused before the notebook runs.
    for out in (tmp_path / "missing" / "x.ipynb", tmp_path):
        assert importlib.import_module("notebooks.run").main(["ad_click", str(tmp_path / "run"), f"out={out}"]) == 2
        assert "cannot write the executed notebook" in capsys.readouterr().err


def test_out_is_a_file_name_even_where_it_reads_as_a_number(tmp_path, monkeypatch):
    # out=1 was the int 1 (a literal, as other parameters are): a TypeError traceback, twice.
    run, given = importlib.import_module("notebooks.run"), {}
    monkeypatch.setattr(run, "execute", lambda name, run_dir, **parameters: given.update(parameters) or tmp_path)
    assert run.main(["analyze_run", str(tmp_path), "out=1", "seed=3"]) == 0
    assert given == {"out": "1", "seed": 3}


def test_the_run_directory_given_again_as_a_parameter_is_one_line(capsys, tmp_path):
    run = importlib.import_module("notebooks.run")
    assert run.main(["analyze_run", str(tmp_path), f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: run_dir={tmp_path}: the notebook and the run directory are the first two") and \
        "TypeError" not in err


def test_a_file_where_a_teaching_notebooks_folder_goes_is_one_line(capsys, tmp_path):
    # It exited 1 with a FileExistsError traceback, pointing at an executed copy inside the file.
    run = importlib.import_module("notebooks.run")
    (tmp_path / "data.csv").write_text("kept")
    for folder in (tmp_path / "data.csv", tmp_path / "data.csv" / "notes"):
        assert run.main(["concepts", str(folder)]) == 2
        assert capsys.readouterr().err == (f"error: cannot make the folder {folder} ({tmp_path / 'data.csv'} is a "
                                           "file): give a folder to write the notebook into\n")
    assert (tmp_path / "data.csv").read_text() == "kept"


@pytest.mark.parametrize("name, where, out", [("concepts", "notebooks", None),  # the folder to write into
                                               ("analyze_run", "{run}", "notebooks/analyze_run.ipynb")])
def test_no_execution_writes_over_a_notebook_of_notebooks(name, where, out, monkeypatch, capsys, tmp_path):
    # It did: notebooks/analyze_run.ipynb then held the outputs and a cell setting run_dir to that run, which the next
    # `run.py analyze_run OTHER_RUN` ran after its own: it analyzed the first run again, under the other's name.
    run, nbclient, written = importlib.import_module("notebooks.run"), importlib.import_module("nbclient"), []
    monkeypatch.setattr(nbclient, "NotebookClient", lambda *args, **kwargs: type("C", (), {"execute": print})())
    monkeypatch.setattr(nbformat, "write", lambda notebook, path: written.append(path))
    argv = [name, str(ROOT / where.format(run=tmp_path))] + ([f"out={ROOT / out}"] if out else [])
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a notebook of" in err and len(err.splitlines()) == 1, err
    assert not written


def test_a_sweeps_folder_given_for_one_run_is_one_line(capsys, tmp_path):
    # analyze_run SWEEP said "no checkpoint at SWEEP/checkpoints/best.ckpt", not that it is a sweep's folder.
    (tmp_path / "summary.csv").write_text("job,failed\n1,False\n")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "metrics.json").write_text("{}")
    assert importlib.import_module("notebooks.run").main(["analyze_run", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path} is a sweep's folder (summary.csv): give one of its runs to "
                                       f"analyze_run, e.g. {tmp_path / '1'}, or compare them with compare_runs\n")


def test_the_runner_knows_each_notebooks_parameters_and_their_kinds():
    run = importlib.import_module("notebooks.run")
    source = 'run_dir = None  # a run\ndata_overrides = []\nmax_examples = 32\nshape = tuple(range(2))'
    assert run.notebook_parameters(source) == {"run_dir": None, "data_overrides": [], "max_examples": 32,
                                               "shape": None}
    for name in ("analyze_run", "ad_click", "text_generation"):  # the data_overrides=[...] parameter is theirs
        cell = next(c for c in nbformat.read(run.NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        assert run.notebook_parameters(cell.source)["data_overrides"] == []


@pytest.mark.parametrize("ename, evalue, code, line", [
    ("UserInputError", "no checkpoint at R/checkpoints/best.ckpt: give a .ckpt", 2,
     "error: notebook analyze_run on {run}: no checkpoint at R/checkpoints/best.ckpt: give a .ckpt"),
    ("KeyError", "'test/acc'\nmore", 1, "error: notebook analyze_run failed: KeyError: 'test/acc'")])
def test_a_cells_bad_input_exits_2_and_a_crash_1(ename, evalue, code, line, monkeypatch, capsys, tmp_path):
    run = importlib.import_module("notebooks.run")
    cell_error = importlib.import_module("nbclient.exceptions").CellExecutionError("traceback", ename, evalue)
    monkeypatch.setattr(run, "execute", lambda *args, **kwargs: (_ for _ in ()).throw(cell_error))
    assert run.main(["analyze_run", str(tmp_path)]) == code
    copy = tmp_path / "analyze_run.failed.ipynb"
    assert capsys.readouterr().err == line.format(run=tmp_path) + f" (the executed copy {copy} shows the cell)\n"


def test_the_notebooks_say_when_the_run_scored_part_of_its_test_split():
    # trainer.limit_test_batches=1 (one batch) equals 1.0 (all of them) in Python: the notebooks' figures then
    # disagreed with metrics.json without their note.
    from models.runs import partial_test_limit

    limits = [None, 1.0, 1, 2, 0.25]
    assert [partial_test_limit({"trainer": {"limit_test_batches": x}}) for x in limits] == [None, None, 1, 2, 0.25]
    for name in ("analyze_run", "ad_click", "text_generation"):
        assert "runs.partial_test_limit(config)" in (ROOT / "notebooks" / f"{name}.ipynb").read_text()
