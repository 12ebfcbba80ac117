"""Preparing a Criteo file larger than you would like to hold in memory: time, throughput and peak memory.

    python benchmarks/criteo_prepare.py [--gb 2.0] [--dir /tmp/criteo_bench] [--chunk-rows 100000] [--keep]
                                        [--train-steps 300 --max-in-memory-gb 0.1 --hash-buckets 100000
                                         [--memory-limit-gb 1.0]]

Writes a Kaggle-format file (tab-separated, no header: label, I1..I13, C1..C26; empty cells for missing values,
~250 bytes a row) of about --gb gigabytes, then converts it with data.criteo.prepare, the code `data=criteo`
runs. The conversion runs in a fresh process, so its peak resident memory (getrusage's ru_maxrss) is its own:
it should stay near the imports' footprint plus one chunk, whatever --gb is.
With --train-steps N, `python train.py model=dnn data=criteo` then trains N steps on the cached file with
data.max_in_memory_gb below the file's size, so the rows stream from the files, and its peak RSS is reported too.
With --memory-limit-gb, that training runs in a memory cgroup (v1 or v2, needs root) limited to that much: the
kernel then has to keep RSS *and* the page cache of the files it reads under the limit, a file larger than the
limit proves the training never needs it whole, and the cgroup's peak usage and limit hits are reported.
"""
import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.arguments import at_least  # noqa: E402
from data import UserInputError  # noqa: E402

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Per-column levels: a few columns with a handful of values, most with thousands to millions (as in Criteo).
LEVELS = [1_400, 550, 1_000_000, 300_000, 300, 20, 12_000, 600, 3, 90_000, 5_000, 1_000_000, 3_000, 26, 11_000,
          800_000, 10, 4_000, 2_000, 4, 1_000_000, 15, 15, 100_000, 100, 50_000]
# What a run writes into --dir (and, without --keep, deletes with it): the file, its cache, the training run.
OWN_FILES = re.compile(r"criteo_.+gb\.txt(\.part)?|cache|run|result\.json")
MISSING = [0.45, 0.0, 0.2, 0.2, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.2]  # I1..I13


def hex8(values: np.ndarray) -> np.ndarray:
    """uint32 -> 8-character lowercase hex strings, vectorized."""
    nibbles = (values[:, None] >> np.arange(28, -4, -4, dtype=np.uint32)) & 0xF  # (n, 8)
    return HEX[nibbles].view("S8").ravel().astype(str)


def criteo_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    columns = {"label": (rng.random(n) < 0.26).astype(np.int8)}
    for i, missing in enumerate(MISSING, 1):
        counts = pd.array(np.floor(rng.lognormal(1.5, 1.8, n)).astype(np.int64), dtype="Int64")
        counts[rng.random(n) < missing] = pd.NA
        columns[f"I{i}"] = counts
    for i, levels in enumerate(LEVELS, 1):
        ids = (rng.zipf(1.3, n) % levels).astype(np.uint32) * np.uint32(2654435761)  # spread over 32 bits
        strings = pd.Series(hex8(ids), dtype=object)
        strings[rng.random(n) < 0.05 * (i % 3)] = None
        columns[f"C{i}"] = strings
    return pd.DataFrame(columns)


def write_file(path: Path, gigabytes: float, seed: int = 0) -> int:
    rng, rows, target = np.random.default_rng(seed), 0, int(gigabytes * 1e9)
    part = path.with_name(path.name + ".part")  # renamed when complete: an interrupted write is never reused
    with open(part, "w") as f:
        while f.tell() < target:
            block = criteo_rows(min(100_000, max(1_000, target // 250)), rng)  # ~250 bytes a row: a small --gb too
            f.write(block.to_csv(sep="\t", header=False, index=False, lineterminator="\n"))
            rows += len(block)
            print(f"\rwriting {path}: {f.tell() / 1e9:.2f} / {gigabytes} GB", end="", file=sys.stderr)
    print(file=sys.stderr)
    part.replace(path)
    return rows


def measure(path: Path, cache_dir: Path, chunk_rows: int) -> dict:
    """Runs in its own process (see --measure): one preparation, timed, with this process's peak memory."""
    sys.path.insert(0, str(ROOT))
    from data.criteo import prepare

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    start = time.perf_counter()
    cache = prepare(path, cache_dir, chunk_rows)
    seconds = time.perf_counter() - start
    meta = json.loads((cache / "meta.json").read_text())
    return {"file_gb": round(path.stat().st_size / 1e9, 3), "rows": meta["rows"], "seconds": round(seconds, 1),
            "mb_per_s": round(path.stat().st_size / 1e6 / seconds, 1), "rows_per_s": round(meta["rows"] / seconds),
            "peak_rss_mib_after_imports": round(rss_before), "peak_rss_mib": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cache_gb": round(sum(f.stat().st_size for f in cache.iterdir()) / 1e9, 3), "chunk_rows": chunk_rows}


# Runs a script as __main__ and then prints this process's peak RSS (KiB) as the last line of stderr.
PEAK_RSS_OF = """import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


class MemoryCgroup:
    """A memory cgroup limited to `limit` bytes (cgroup v2, else v1's memory controller), removed on exit. One that
    cannot be made is a UserInputError naming --memory-limit-gb."""
    V2 = Path("/sys/fs/cgroup")  # cgroup v2's root; v1's memory controller is its memory/

    def __init__(self, limit: int) -> None:
        name = f"redes_bench_{os.getpid()}"
        v2, v1 = self.V2, self.V2 / "memory"
        if (v2 / "cgroup.controllers").is_file():
            self.dir, self.files = v2 / name, {"limit": "memory.max", "peak": "memory.peak", "hits": None}
        elif v1.is_dir():
            self.dir, self.files = v1 / name, {"limit": "memory.limit_in_bytes", "peak": "memory.max_usage_in_bytes",
                                               "hits": "memory.failcnt"}
        else:
            raise UserInputError(f"--memory-limit-gb: no memory cgroup here (needs {v2}, cgroup v1 or v2): leave "
                                 "the option out")
        try:
            self.dir.mkdir()
        except OSError as err:
            raise UserInputError(f"--memory-limit-gb: cannot create {self.dir} ({err.strerror}): run as root, "
                                 "or leave the option out") from None
        try:
            (self.dir / self.files["limit"]).write_text(str(limit))
        except OSError as err:  # a controller not delegated to this group, a limit the kernel refuses
            self.remove()
            raise UserInputError(f"--memory-limit-gb: cannot set {self.dir / self.files['limit']} ({err.strerror}): "
                                 "run as root, or leave the option out") from None
        self.limit = limit

    def enter(self) -> None:  # preexec_fn: the child moves itself into the group before it runs
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> dict:
        def read(key):  # a counter file's value, None where this kernel has no such file
            path = self.dir / self.files[key] if self.files[key] else None
            return int(path.read_text()) if path and path.is_file() else None

        peak = read("peak")
        return {"memory_limit_mib": round(self.limit / 2**20),
                "cgroup_peak_mib": None if peak is None else round(peak / 2**20), "limit_hits": read("hits")}

    def remove(self) -> None:
        self.dir.rmdir()


def fitted_rows_bytes(cache: Path) -> int:
    """The bytes of the training and validation rows in a prepared cache, with data=criteo's default split: what
    train.py holds in memory instead of streaming when they are within data.max_in_memory_gb
    (`CriteoDataModule.load`)."""
    arrays = [np.load(f, mmap_mode="r") for f in sorted(cache.glob("*.npy"))]  # headers: shape and dtype
    rows, split = len(arrays[0]), OmegaConf.load(ROOT / "configs" / "data" / "criteo.yaml").data
    return (rows - round(rows * split.test_fraction)) * sum(a.itemsize * a.shape[1] for a in arrays)


def train_streamed(path: Path, args) -> dict:
    """train.py on the prepared file, streamed (max_in_memory_gb below its size), in a child process: its peak RSS."""
    run = args.dir / "run"
    shutil.rmtree(run, ignore_errors=True)
    cache_bytes = sum(f.stat().st_size for f in (args.dir / "cache").glob("*/*.npy"))
    if (held := fitted_rows_bytes(next((args.dir / "cache").glob("*/")))) <= args.max_in_memory_gb * 2**30:
        print(f"error: --max-in-memory-gb {args.max_in_memory_gb:g} holds the training and validation rows "
              f"({held / 2**20:.1f} MiB of the {cache_bytes / 2**20:.1f} MiB cache), so training would read them "
              "into memory, not stream them: give a smaller --max-in-memory-gb or a larger --gb", file=sys.stderr)
        sys.exit(2)  # bad input (benchmarks/arguments.py), known once the file is converted
    command = [sys.executable, "-c", PEAK_RSS_OF, str(ROOT / "train.py"), "model=dnn", "data=criteo",
               f"data.path={path}",
               f"data.cache_dir={args.dir / 'cache'}", f"data.max_in_memory_gb={args.max_in_memory_gb}",
               f"data.hash_buckets={args.hash_buckets}", f"trainer.limit_train_batches={args.train_steps}",
               "trainer.max_epochs=1", "trainer.limit_val_batches=20", "trainer.limit_test_batches=20",
               "callbacks.progress_bar=null", f"hydra.run.dir={run}"]
    try:
        cgroup = MemoryCgroup(int(args.memory_limit_gb * 2**30)) if args.memory_limit_gb else None
    except UserInputError as err:  # (main tried one already: this one failed since)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    start = time.perf_counter()
    try:
        child = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=cgroup.enter if cgroup else None)
        seconds, limits = time.perf_counter() - start, cgroup.report() if cgroup else {}
    finally:
        if cgroup:
            cgroup.remove()
    if child.returncode:
        killed = ", killed: out of memory?" if child.returncode < 0 else ""
        sys.exit(f"training failed (exit {child.returncode}{killed}): {limits}\n{child.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    peak_kib = int(child.stderr.strip().splitlines()[-1].split()[-1])
    return {"steps": metrics["steps"], "max_in_memory_gb": args.max_in_memory_gb, "hash_buckets": args.hash_buckets,
            "seconds": round(seconds, 1), "test/auroc": round(metrics["test/auroc"], 4),
            "peak_rss_mib": round(peak_kib / 1024), "cache_mib": round(cache_bytes / 2**20), **limits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=at_least(float, 0, inclusive=False), default=2.0,
                        help="size of the generated file in GB (default 2)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/criteo_bench"),
                        help="where the file and cache go: a new folder, deleted when done unless --keep")
    parser.add_argument("--chunk-rows", type=at_least(int, 1), default=100_000, help="rows parsed at a time")
    parser.add_argument("--keep", action="store_true", help="keep the file and cache (default: delete them)")
    parser.add_argument("--train-steps", type=at_least(int, 0), default=0,
                        help="then train this many steps, streamed")
    parser.add_argument("--max-in-memory-gb", type=at_least(float, 0),
                        help="data.max_in_memory_gb for training (default 0.1)")
    parser.add_argument("--hash-buckets", type=at_least(int, 1), help="data.hash_buckets for training (default 100000)")
    parser.add_argument("--memory-limit-gb", type=at_least(float, 0, inclusive=False),
                        help="train inside a memory cgroup limited to this (GiB)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.measure:
        (args.dir / "result.json").write_text(json.dumps(measure(args.measure, args.dir / "cache", args.chunk_rows)))
        return
    if args.dir.exists() and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is a file: give a folder")
    others = sorted(p.name for p in args.dir.iterdir() if not OWN_FILES.fullmatch(p.name)) if args.dir.is_dir() else []
    if others:  # the folder is deleted at the end: never with someone else's files in it
        parser.error(f"--dir {args.dir} holds files this benchmark did not write ({', '.join(others[:3])}), and "
                     "it deletes the folder when done: give a new or empty folder")
    for flag in ("--memory-limit-gb", "--max-in-memory-gb", "--hash-buckets"):  # (they were ignored)
        if getattr(args, flag[2:].replace("-", "_")) is not None and not args.train_steps:
            parser.error(f"{flag} sets the training: add --train-steps N, or leave it out")
    args.max_in_memory_gb = 0.1 if args.max_in_memory_gb is None else args.max_in_memory_gb
    args.hash_buckets = args.hash_buckets or 100_000
    if args.memory_limit_gb:  # before the file is written and converted: a cgroup this process can make
        try:
            MemoryCgroup(int(args.memory_limit_gb * 2**30)).remove()
        except UserInputError as err:
            parser.error(str(err))
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file above it, a place nobody writes (/sys, /proc)
        parser.error(f"--dir {args.dir}: cannot make it ({err.strerror}): give a folder you can write to")
    path = args.dir / f"criteo_{args.gb:g}gb.txt"
    if not path.is_file():
        write_file(path, args.gb)
    shutil.rmtree(args.dir / "cache", ignore_errors=True)  # measure a cold conversion
    child = subprocess.run([sys.executable, __file__, "--measure", str(path), "--dir", str(args.dir),
                            "--chunk-rows", str(args.chunk_rows)], stdout=sys.stderr)  # its progress bar: on
    # stderr, as the writing's, so that stdout is the JSON alone (`> result.json`, `| jq`)
    if child.returncode:
        sys.exit(child.returncode)
    result = json.loads((args.dir / "result.json").read_text())
    if args.train_steps:
        result["training"] = train_streamed(path, args)
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
