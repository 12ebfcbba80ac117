"""Execute an analysis notebook headless on a run: `python notebooks/run.py analyze_run RUN_DIR [name=value ...]`.

As papermill does, it injects `run_dir = 'RUN_DIR'` (and each name=value, read as a Python literal, else as a
string; a name the "parameters" cell does not assign is refused) in a cell after that cell, executes the notebook
with nbclient, and writes the executed copy to RUN_DIR/<notebook>.ipynb (or out=FILE; a failed execution to
<notebook>.failed.ipynb, leaving a good copy alone). The notebooks in git stay without outputs.
  python notebooks/run.py analyze_run outputs/cnn/2025-01-01_12-00-00
  python notebooks/run.py compare_runs outputs/multirun/2025-01-01_12-00-00
  python notebooks/run.py ad_click outputs/dnn/2025-01-01_12-00-00          # a model=dnn run
  python notebooks/run.py text_generation outputs/lstm/2025-01-01_12-00-00  # a model=lstm language model
The two teaching notebooks take a folder to write into instead of a run (or open them in Jupyter):
  python notebooks/run.py concepts outputs/notebooks            # the course notes' worked examples (~30 s)
  python notebooks/run.py regularization outputs/notebooks      # trains its six small runs there first (~70 s)
"""
import ast
import difflib
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
TEACHING = ("concepts", "regularization")  # they read no run
USAGE = ("python notebooks/run.py <analyze_run|compare_runs|ad_click|text_generation|concepts|regularization> "
         "RUN_DIR [name=value ...] [out=FILE.ipynb]")


def execute(name: str, run_dir: str | Path, out: str | Path | None = None, timeout: int = 600, **parameters) -> Path:
    """Run notebooks/<name>.ipynb with `run_dir` and `parameters`; return where the executed copy went."""
    import nbclient
    import nbformat
    from traitlets.config import Config

    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.is_file():
        choices = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
        raise ValueError(f"unknown notebook {name!r}; choose one of {choices}")
    if name in TEACHING:  # a folder to write into, made if new
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a file there or above it, a place nobody writes (/proc)
            file = next((p for p in (Path(run_dir), *Path(run_dir).parents) if p.is_file()), None)
            why = f"{file} is a file" if file else err.strerror
            raise ValueError(f"cannot make the folder {run_dir} ({why}): give a folder to write the notebook "
                             "into") from None
    if not Path(run_dir).is_dir():
        raise ValueError(f"run directory {run_dir} not found")
    sweep = (Path(run_dir) / "summary.csv").is_file() and not (Path(run_dir) / ".hydra").is_dir()
    if sweep and name not in TEACHING + ("compare_runs",):  # it said "no checkpoint at SWEEP/checkpoints/best.ckpt"
        job = next((p.parent.name for p in sorted(Path(run_dir).glob("*/metrics.json"))), "0")
        raise ValueError(f"{run_dir} is a sweep's folder (summary.csv): give one of its runs to {name}, e.g. "
                         f"{Path(run_dir) / job}, or compare them with compare_runs")
    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    defaults = notebook_parameters(notebook.cells[tagged[0]].source) if tagged else {"run_dir": None}
    for key, value in parameters.items():  # a misspelt name would be set and never read
        if key not in defaults:
            near = difflib.get_close_matches(key, list(defaults), n=1)
            takes = ", ".join(k for k in defaults if k != "run_dir") or "no other"
            raise ValueError(f"{name} has no parameter {key!r}; "
                             + (f"did you mean {near[0]}?" if near else f"it takes {takes} (and out=FILE.ipynb)"))
        if isinstance(defaults[key], list) and not isinstance(value, (list, tuple)):
            parameters[key] = [value]  # data_overrides=paths.data_dir=/x: a list of one, not its characters
    values = {"run_dir": str(Path(run_dir).resolve()), **parameters}
    source = "# Parameters injected by notebooks/run.py\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    notebook.cells.insert(tagged[0] + 1 if tagged else 0,
                          nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    given, out = out, Path(out) if out else Path(run_dir) / f"{name}.ipynb"
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):  # before minutes of executing
        raise ValueError(f"cannot write the executed notebook to {out} (a folder, or in a missing or read-only "
                         "one): give out=FILE.ipynb")
    # Never over a notebook of notebooks/ (`run.py concepts notebooks`, out=notebooks/...): its outputs and injected
    # run_dir would be in the next execution's source, and that stale run_dir, a cell after the new one, would win.
    if out.resolve() in {kept.resolve() for kept in NOTEBOOKS.glob("*.ipynb")}:
        raise ValueError(f"{out} is a notebook of {NOTEBOOKS}, kept without outputs: give "
                         + ("another out=FILE.ipynb" if given else "another folder"))
    # The kernel talks over Unix sockets in a folder of its own (over TCP, ipykernel warns on every run that anyone
    # on the machine could listen in)
    sockets = tempfile.TemporaryDirectory(prefix="redes-kernel-")
    kernel = Config(KernelManager=dict(transport="ipc", ip=os.path.join(sockets.name, "kernel")))
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", config=kernel,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})  # cwd: notebooks/, as in Jupyter
    try:
        with sockets:
            client.execute()
    except BaseException:
        nbformat.write(notebook, failed_copy(out))  # it shows the cell and its traceback; a good copy stays
        raise
    nbformat.write(notebook, out)
    failed_copy(out).unlink(missing_ok=True)  # an earlier failure's, now stale
    return out


def failed_copy(out: Path) -> Path:
    return out.with_name(f"{out.stem}.failed{out.suffix}")  # analyze_run.ipynb -> analyze_run.failed.ipynb


def notebook_parameters(source: str) -> dict:
    """The names a "parameters" cell assigns, with their defaults (None where not a literal)."""
    defaults = {}
    for node in ast.parse(source).body:
        for target in node.targets if isinstance(node, ast.Assign) else ():
            if isinstance(target, ast.Name):
                try:
                    defaults[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    defaults[target.id] = None
    return defaults


def main(argv: list[str]) -> int:
    if len(argv) < 2 or "=" in argv[0] or "=" in argv[1]:
        print(f"usage: {USAGE}", file=sys.stderr)
        return 2
    name, run_dir, parameters = argv[0], argv[1], {}
    for arg in argv[2:]:
        key, sep, value = arg.partition("=")
        if not sep:
            print(f"error: {arg!r} is not name=value; usage: {USAGE}", file=sys.stderr)
            return 2
        if key in ("name", "run_dir"):  # given as the first two arguments
            print(f"error: {arg}: the notebook and the run directory are the first two arguments, not name=value; "
                  f"usage: {USAGE}", file=sys.stderr)
            return 2
        try:
            parameters[key] = value if key == "out" else ast.literal_eval(value)  # out=1: a file named 1
        except (ValueError, SyntaxError):
            parameters[key] = value  # a bare word or path: a string
    try:
        out = execute(name, run_dir, **parameters)
    except ImportError as err:
        print(f"error: {err.name} is missing: notebooks need the dev extras, pip install -e '.[dev]'", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # nbclient's CellExecutionError: the failing cell's exception, in one line
        if type(err).__name__ == "NoSuchKernel":  # jupyter_client's: no ipykernel
            print("error: no python3 Jupyter kernel (ipykernel): notebooks need the dev extras, "
                  "pip install -e '.[dev]'", file=sys.stderr)
            return 2
        copy = failed_copy(Path(parameters.get("out") or Path(run_dir) / f"{name}.ipynb"))
        bad_input = getattr(err, "ename", None) == "UserInputError"  # the run, a data override: the user's to fix
        if hasattr(err, "ename"):
            reason = err.evalue if bad_input else f"{err.ename}: {err.evalue}"
        else:
            reason = f"{type(err).__name__}: {err}"
        reason = reason.strip().splitlines()[0] if reason.strip() else reason
        what = f"on {run_dir}" if bad_input else "failed"
        print(f"error: notebook {name} {what}: {reason} (the executed copy {copy} shows the cell)", file=sys.stderr)
        return 2 if bad_input else 1
    print(f"executed {name} on {run_dir}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
