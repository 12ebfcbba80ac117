"""`python train.py ARGS` (or another of the repository's scripts, such as benchmarks/throughput.py) for the tests,
in a new process each time, without paying each time the ~8 s that importing torch, Lightning and torchmetrics takes on
a small CPU (two thirds of the suite's time, once).

A fork server (multiprocessing's "forkserver": a fresh interpreter, not a copy of pytest) imports train.py's
dependencies once; every call forks it and runs the script as `__main__` (runpy), with this process's environment
and the given arguments, its stdout and stderr in files: what a shell would run, minus the imports.
Differences from a real process, none of which the tests rely on: settings read at import time (OpenMP's thread
count, which torchmetrics' import starts; Lightning's rank from RANK) come from the environment the server started
in; a child leaves through os._exit, so atexit handlers do not run; children share the server's hash seed.
"""
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = multiprocessing.get_context("forkserver")
SERVER.set_forkserver_preload(["train"])


def _run_script(script: str, args: list[str], env: dict, stdout: str, stderr: str) -> None:
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.argv = [str(ROOT / script), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


class TrainPy:
    """One `python train.py ARGS` process (`script=` another, by its path from the repository root): start it, wait
    for it, or kill it."""

    def __init__(self, *args: str, script: str = "train.py") -> None:
        self.args = [sys.executable, script, *args]
        self._files = tempfile.TemporaryDirectory()
        self._out, self._err = Path(self._files.name, "stdout"), Path(self._files.name, "stderr")
        self.process = SERVER.Process(target=_run_script,
                                      args=(script, list(args), dict(os.environ), str(self._out), str(self._err)))
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:  # SIGKILL, as `kill -9`
        self.process.kill()
        self.process.join()

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        self.process.join(timeout)
        timed_out = self.process.exitcode is None
        if timed_out:
            self.kill()
        out, err = self._out.read_text(errors="replace"), self._err.read_text(errors="replace")
        self._files.cleanup()
        if timed_out:
            raise subprocess.TimeoutExpired(self.args, timeout, out, err)
        return subprocess.CompletedProcess(self.args, self.process.exitcode, out, err)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repository root: its exit code, stdout and stderr."""
    return TrainPy(*args).wait(timeout)


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` from the repository root (SCRIPT such as "benchmarks/throughput.py"), as run_cli."""
    return TrainPy(*args, script=script).wait(timeout)
