"""Criteo's display-ad click logs: a 0/1 label, 13 integer features (counts) and 26 categorical ones (hashed ids).

Read: Kaggle's `train.txt` (tab-separated, no header: label, I1..I13, C1..C26) or a CSV with that header; an empty
cell is a missing value. The text is converted ONCE, `chunk_rows` rows at a time, into three .npy files in
`cache_dir/<name>-<bytes>-<mtime>/` (a changed file gets a new cache; the old one is deleted):
  labels.npy      int8 (N, 1)
  integers.npy    float32 (N, 13), NaN where missing (exact up to 2**24; the model sees their log anyway)
  categories.npy  int32 (N, 26): a stable 31-bit hash of the string, 0 where missing
Memory while converting is bounded by one chunk (its lines and pandas' frame of them: ~180 MiB for 100k rows,
measured), whatever the file size; later runs read the files and parse nothing.

Rows keep the file's order (Criteo's is chronological): the first rows train, the next `val_fraction` validate, the
last `test_fraction` test (10% each by default). A hashed id becomes embedding row `1 + hash % buckets` (0: missing;
in a field never missing in the training rows, row 0 would stay untrained: there a missing value is hashed too, as
an unseen value), buckets = min(hash_buckets, training rows). Numeric statistics, and which fields had missing
values, come from the training rows, read in chunks.
Serving: when the rows of a stage (train + val, or test) take at most `max_in_memory_gb` (4 GB: ~27M rows at
157 bytes each; the features are made per batch, so a batch is all that is added) they are copied into tensors
on the device and served by index like every other dataset; larger ones are streamed from the files in
shuffled blocks of `block_rows` consecutive rows (a batch is batch_size/block_rows blocks from all over the file).
The rows are read with positioned reads (`data/npy.py`), not through memmaps: the file's pages then stay in the OS
page cache, which the kernel reclaims as it likes, instead of piling up in this process's resident memory (every
memmapped page ever touched counts in RSS, so a streamed epoch over a 100 GB file would show 100 GB of RSS).
"""
import codecs
import csv
import io
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from torch import Tensor

from data import UserInputError, check_folder, count, make_folder, not_a_file
from data.batches import SplitLoaders, TensorBatches, check_both_labels, check_fractions, data_device, loader_args
from data.columns import (FLOAT32_PROBLEM, CsvRows, NumericScaler, not_utf8, numbered, parse, refuse_repeated,
                          stable_hash, to_finite)
from data.npy import NpyRows, NpyWriter

LABEL, INTEGERS, CATEGORIES = "label", [f"I{i}" for i in range(1, 14)], [f"C{i}" for i in range(1, 27)]
COLUMNS = [LABEL, *INTEGERS, *CATEGORIES]
ARRAYS = {"labels": (np.int8, [LABEL]), "integers": (np.float32, INTEGERS), "categories": (np.int32, CATEGORIES)}
# How Criteo's text is read, for training and prediction alike (a cell read otherwise hashes to another id): quotes
# are plain characters (Criteo quotes nothing), spaces are kept, and only an empty cell is missing.
READ_TEXT = dict(quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""])


def sniff(path: Path) -> tuple[str, list[str] | None]:
    """(separator, header names or None) from the first line; one-line errors for what cannot be Criteo."""
    if what := not_a_file(path):
        raise UserInputError(f"data.path={path}: {what}; give Criteo's train.txt or a CSV with its columns")
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", "replace").rstrip("\r\n")  # without a BOM (Excel writes one)
    if not first:
        raise UserInputError(f"data.path={path} is empty: row 1 should be a header ({','.join(COLUMNS[:3])},...) "
                             "or a first tab-separated example (label, I1..I13, C1..C26)")
    sep = "\t" if "\t" in first else ","
    fields = first.split(sep)
    if not is_header(fields):  # a data row
        if len(fields) != len(COLUMNS):
            raise UserInputError(f"data.path={path}, row 1 (line 1) has {len(fields)} {sep!r}-separated fields; a "
                                 f"Criteo row has {len(COLUMNS)}: label, I1..I13, C1..C26 (or add that header)")
        return sep, None
    if missing := [c for c in COLUMNS if c not in fields]:
        raise UserInputError(f"data.path={path}: no column {missing[0]!r} in the header (row 1), which has "
                             f"{fields[:5]}...; a Criteo file has {LABEL}, I1..I13, C1..C26")
    refuse_repeated(fields, f"data.path={path}")
    return sep, fields


def is_header(fields: list[str]) -> bool:
    """Whether the first line's fields (without a BOM) name columns: its first field is neither empty nor a number,
    as a label or I1 would be."""
    return not (fields[0].strip().lstrip("-").replace(".", "", 1).isdigit() or fields[0] == "")


def skip_bom(text) -> None:
    """Read past a UTF-8 byte order mark at the start of a binary file (so row 1's first cell is not '\ufeff0')."""
    if text.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
        text.seek(0)


def cache_path(path: Path, cache_dir: Path) -> Path:
    stat = path.stat()
    return cache_dir / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"


def prepare(path: Path, cache_dir: Path, chunk_rows: int = 100_000) -> Path:
    """Convert the text file once into the cache's .npy files (see the module docstring); return the cache."""
    path = path.expanduser().resolve()
    sep, header = sniff(path)
    cache = cache_path(path, cache_dir)
    if (cache / "meta.json").is_file():
        return cache
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    check_folder("data.cache_dir", cache_dir)
    make_folder("data.cache_dir", cache_dir, cache_dir)
    tmp.mkdir(exist_ok=True)
    try:
        start, rows = time.perf_counter(), convert(path, sep, header, tmp, chunk_rows)
    except BaseException:  # bad input, Ctrl-C: leave no half-made cache behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stat = path.stat()
    meta = {"source": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "rows": rows,
            "seconds": round(time.perf_counter() - start, 2)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for old in cache_dir.glob(f"{path.stem}-*"):  # caches of earlier versions of this file
        if old in (tmp, cache) or ".tmp" in old.name:  # ours, or one another process is making (or just made)
            continue
        if (old / "meta.json").is_file() and json.loads((old / "meta.json").read_text())["source"] == str(path):
            shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(cache)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def convert(path: Path, sep: str, header: list[str] | None, out: Path, chunk_rows: int) -> int:
    """Parse `chunk_rows` rows at a time and append them to out/*.npy; return the number of rows."""
    columns = (TextColumn("[bold]preparing {task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TextColumn("{task.fields[rows]:,} rows"), TimeRemainingColumn())
    rows = 0
    with Progress(*columns) as progress, ExitStack() as files:
        writers = {name: files.enter_context(NpyWriter(out / f"{name}.npy", dtype, len(cols)))
                   for name, (dtype, cols) in ARRAYS.items()}
        task = progress.add_task(path.name, total=path.stat().st_size, rows=0)
        text = files.enter_context(open(path, "rb"))  # read by lines: the bar follows text.tell() once per chunk
        for chunk in read_chunks(text, path, sep, header, chunk_rows):
            writers["labels"].append(chunk[LABEL].to_numpy()[:, None])
            writers["integers"].append(chunk[INTEGERS].to_numpy(np.float32))
            writers["categories"].append(np.stack([hash_column(chunk[c]) for c in CATEGORIES], axis=1))
            rows += len(chunk)
            progress.update(task, completed=text.tell(), rows=rows)
        for writer in writers.values():
            writer.finish()
    if rows == 0:
        raise UserInputError(f"data.path={path} has a header but no rows: row 2 (the first example) is missing")
    return rows


def read_chunks(text, path: Path, sep: str, header: list[str] | None, chunk_rows: int):
    """pandas' frames of `chunk_rows` lines each, every line checked for the file's number of fields (line_blocks),
    labels checked, and a value that is not a number named by row and column. Quotes are plain characters: Criteo
    quotes nothing."""
    names = header or COLUMNS
    dtypes = {LABEL: np.float32, **dict.fromkeys(INTEGERS, np.float32), **dict.fromkeys(CATEGORIES, object)}
    options = dict(sep=sep, header=None, names=names, usecols=COLUMNS, **READ_TEXT)
    skip_bom(text)
    header_lines = 0  # lines before the first row, for line numbers
    if header:  # the caller read the names from it
        header_lines = int(text.readline() != "")
    for block, where in line_blocks(text, f"data.path={path}", sep, len(names), chunk_rows, header_lines):
        try:
            try:
                chunk = pd.read_csv(block, dtype=dtypes, **options)
            except ValueError as err:  # a value the fast float parser refuses: find and name it
                block.seek(0)
                locate_bad_value(pd.read_csv(block, dtype=str, **options), where, [LABEL, *INTEGERS])
                raise UserInputError(f"{where.file}, lines {where.line_of_row[0]}..{where.line_of_row[-1]}: "
                                     f"{err}") from err
        except UnicodeDecodeError:
            raise not_utf8(where.file, path) from None
        del block
        check_labels(chunk[LABEL].to_numpy(), where)
        check_finite(chunk[INTEGERS].to_numpy(np.float32), where)
        yield chunk


def line_blocks(text, file: str, sep: str, width: int, chunk_rows: int, lines_read: int = 0):
    """(block, Rows): `chunk_rows` lines of `text` (binary, read past its header: `lines_read` lines) at a time as one
    bytes block for pandas, every line first checked for `width` fields (pandas would pad a short row with missing
    values and hide the damage). Blank lines are skipped, as pandas skips them; Rows names the block's rows."""
    rows, separator = 0, sep.encode()
    while lines := list(itertools.islice(text, chunk_rows)):
        fields = np.array([line.count(separator) + 1 if line.rstrip(b"\r\n") else 0 for line in lines])  # 0: blank
        where = Rows(file, rows, lines_read + 1 + np.flatnonzero(fields))  # 1-based line number of each row
        if bad := np.flatnonzero(fields[fields > 0] != width).tolist():
            raise UserInputError(f"{file}, {where.name(bad[0])} has {fields[fields > 0][bad[0]]} {sep!r}-separated "
                                 f"fields, not {width} like row 1; fix or delete that row")
        block, lines_read = io.BytesIO(b"".join(lines)), lines_read + len(lines)
        del lines  # the chunk is held once, as one bytes object, while pandas parses it
        if len(where.line_of_row):  # (blank lines only: nothing for pandas to parse)
            yield block, where
        rows += len(where.line_of_row)


def first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.readline()
    except OSError as err:  # a folder, no permission
        raise UserInputError(f"input={path}: cannot be read ({err.strerror}); give a file of Criteo's rows") from None


def read_tab_separated(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """Kaggle's tab-separated lines, no header: label, I1..I13, C1..C26 (train.txt) or I1..I13, C1..C26 (test.txt,
    no label), `rows` at a time; every cell as text, an empty one missing. Lines under a header naming Criteo's
    columns (which training reads too) are read by it."""
    first = first_line(path)
    if not first.strip():
        raise UserInputError(f"input={path} is empty (or starts with a blank line): give Kaggle's tab-separated "
                             "lines, one example a line")
    cells, fields = first.decode("utf-8-sig", "replace").rstrip("\r\n").split("\t"), first.count(b"\t") + 1
    # A header: a first line of names, one of them Criteo's or as many as its columns (a first line of 2 words
    # is a line of the wrong width, not a header without I1: Kaggle's files have none)
    if is_header(cells) and (set(cells) & set(COLUMNS) or fields in (len(COLUMNS), len(COLUMNS) - 1)):
        return read_with_header(path, "\t", rows)
    names = {len(COLUMNS): COLUMNS, len(COLUMNS) - 1: COLUMNS[1:]}.get(fields)
    if names is None:
        raise UserInputError(f"input={path}: row 1 has {fields} tab-separated fields; Kaggle's Criteo lines have "
                             f"{len(COLUMNS)} (label, I1..I13, C1..C26) or {len(COLUMNS) - 1} (no label)")
    return text_rows(path, "\t", names, rows)


def read_with_header(path: Path, sep: str, rows: int) -> Iterator[pd.DataFrame]:
    """A CSV (or tab-separated file) with Criteo's header (other columns may come too, in any order), `rows` at a
    time."""
    names = first_line(path).decode("utf-8-sig", "replace").rstrip("\r\n").split(sep)
    if names == [""]:
        raise UserInputError(f"input={path} is empty: row 1 should be a header naming I1..I13 and C1..C26, then one "
                             "row per example")
    refuse_repeated(names, f"input={path}")
    if missing := [c for c in (*INTEGERS, *CATEGORIES) if c not in names]:
        raise UserInputError(f"input={path}: no column {missing[0]!r} in the header (row 1); Criteo rows have the "
                             "columns I1..I13 and C1..C26 (a CSV with that header, or Kaggle's tab-separated lines)")
    return text_rows(path, sep, names, rows, header=True)


def text_rows(path: Path, sep: str, names: list[str], rows: int, header: bool = False) -> Iterator[pd.DataFrame]:
    """predict.py's rows, `rows` at a time, every cell as the text it is (read as training reads it: a cell read
    otherwise would hash to another id), each line checked for its number of fields and the integer columns for
    numbers, named by row and line. Each chunk's RangeIndex numbers its rows in the file from 0; a file of no rows
    gives one empty chunk."""
    empty = True
    with open(path, "rb") as text:
        skip_bom(text)
        if header:
            text.readline()
        for block, where in line_blocks(text, f"input={path}", sep, len(names), rows, int(header)):
            try:
                chunk = pd.read_csv(block, sep=sep, header=None, names=names, dtype=str, **READ_TEXT)
            except UnicodeDecodeError:
                raise not_utf8(where.file, path) from None
            locate_bad_value(chunk, where, INTEGERS)
            chunk.index = pd.RangeIndex(where.first_row, where.first_row + len(chunk))
            empty = False
            yield chunk
    if empty:
        yield pd.DataFrame(columns=names, dtype=str)


def hash_column(values: pd.Series) -> np.ndarray:
    return np.where(values.isna().to_numpy(), 0, stable_hash(values.to_numpy())).astype(np.int32)


class Rows:
    """Names the rows of one chunk of `file` ("data.path=F", "input=F") in errors: `row 7 (line 8)`, counting
    examples from 1 and lines of the file."""

    def __init__(self, file: str, first_row: int, line_of_row: np.ndarray) -> None:
        self.file, self.first_row, self.line_of_row = file, first_row, line_of_row

    def name(self, i: int) -> str:
        return f"row {self.first_row + i + 1} (line {self.line_of_row[i]})"


def check_labels(labels: np.ndarray, where: Rows) -> None:
    if bad := np.flatnonzero((labels != 0) & (labels != 1)).tolist():  # NaN (an empty label) fails both
        raise UserInputError(f"{where.file}, column {LABEL!r}, {where.name(bad[0])}: "
                             f"label {'(empty)' if np.isnan(labels[bad[0]]) else f'{labels[bad[0]]:g}'} is not 0 or 1")


def check_finite(integers: np.ndarray, where: Rows) -> None:
    """`inf`, or a number beyond float32's ±3.4e38 (which becomes inf when stored), in the integer columns."""
    if (bad := np.argwhere(np.isinf(integers))).size:
        row, column = bad[0]
        raise UserInputError(f"{where.file}, column {INTEGERS[column]!r}, {where.name(row)}: the value is "
                             "infinite, or beyond float32's range (±3.4e38); fix or delete that row")


def locate_bad_value(chunk: pd.DataFrame, where: Rows, columns: list[str]) -> None:
    for column in columns:
        if bad := np.flatnonzero(chunk[column].notna() & to_finite(chunk[column]).isna()).tolist():
            raise UserInputError(f"{where.file}, column {column!r}, {where.name(bad[0])}: "
                                 f"{chunk[column].iloc[bad[0]]!r} {FLOAT32_PROBLEM}; fix or delete that row")


def open_arrays(cache: Path) -> dict[str, NpyRows]:
    """The cache's three files, each checked for the dtype and width `ARRAYS` gives it and all for one row count:
    a file of another version or replaced by hand would be read as wrong numbers, or fail deep in numpy."""
    arrays = {name: NpyRows(cache / f"{name}.npy") for name in ARRAYS}
    for name, (dtype, columns) in ARRAYS.items():
        rows = arrays[name]
        if rows.dtype != np.dtype(dtype) or rows.shape[1] != len(columns):
            raise UserInputError(f"{rows.path} holds {rows.dtype} {rows.shape}, not {np.dtype(dtype)} (N, "
                                 f"{len(columns)}): written by another version, or replaced; delete its folder to "
                                 "rebuild it")
        if len(rows) != len(arrays["labels"]):
            raise UserInputError(f"{rows.path} holds {count(len(rows), 'row', ',')}, labels.npy "
                                 f"{len(arrays['labels']):,}: "
                                 "written by different versions, or replaced; delete its folder to rebuild it")
    return arrays


class CriteoDataModule(SplitLoaders, L.LightningDataModule):
    task = "binary"
    kind = "tables"  # what the network must read (its `reads`)

    def __init__(self, path: str, cache_dir: str, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 hash_buckets: int = 100_000, batch_size: int = 4096, eval_batch_size: int = 16384,
                 max_in_memory_gb: float = 4.0, block_rows: int = 256, chunk_rows: int = 100_000,
                 on_device: bool = True) -> None:
        super().__init__()
        check_fractions(val_fraction, test_fraction)
        self.path, self.cache_dir = Path(path).expanduser(), Path(cache_dir).expanduser()
        self.fractions, self.hash_buckets, self.chunk_rows = (val_fraction, test_fraction), hash_buckets, chunk_rows
        self.batch_size, self.eval_batch_size, self.block_rows = batch_size, eval_batch_size, block_rows
        self.max_in_memory_bytes, self.on_device = max_in_memory_gb * 2**30, on_device
        self.arrays = self.train = self.val = self.test = None  # arrays: NpyRows; splits: tensors or (start, stop)

    def prepare_data(self) -> None:
        self.cache = prepare(self.path, self.cache_dir, self.chunk_rows)

    def setup(self, stage: str) -> None:
        if self.arrays is None:
            self.cache = prepare(self.path, self.cache_dir, self.chunk_rows)  # a no-op once prepared
            self.arrays = open_arrays(self.cache)
            n = len(self.arrays["labels"])
            n_val, n_test = (round(n * f) for f in self.fractions)
            if min(n_val, n_test) < 1 or n - n_val - n_test < 2:
                raise UserInputError(f"data.path={self.path} has {count(n, 'row')}: too few for training, validation "
                                     f"({self.fractions[0]}) and test ({self.fractions[1]}) rows")
            bounds = np.cumsum([0, n - n_val - n_test, n_val, n_test]).tolist()
            self.rows = dict(zip(("train", "val", "test"), zip(bounds[:-1], bounds[1:])))
            labels = {split: self.labels_in(start, stop) for split, (start, stop) in self.rows.items()}
            check_both_labels(f"data.path={self.path}", LABEL, set().union(*labels.values()))
            for split, (start, stop) in self.rows.items():
                check_both_labels(f"data.path={self.path}", LABEL, labels[split], split, stop - start)
        if stage in ("fit", "validate") and self.train is None:
            start, stop = self.rows["train"]
            self.scaler = NumericScaler(torch.ones(len(INTEGERS), dtype=torch.bool))  # all counts: log them all
            for lo in range(start, stop, 1 << 20):  # a million rows (52 MB) at a time
                self.scaler.update(torch.from_numpy(self.arrays["integers"].read(lo, min(lo + (1 << 20), stop))))
            self.scaler.finish()
            missing = np.zeros(len(CATEGORIES), dtype=bool)  # per field: any missing value (id 0) in training
            for lo in range(start, stop, 1 << 16):  # 65,536 rows (7 MB) at a time: no lasting mark on the heap
                missing |= (self.arrays["categories"].read(lo, min(lo + (1 << 16), stop)) == 0).any(0)
            self.buckets = max(1, min(self.hash_buckets, int(stop - start)))  # no more than training rows can fill
            self.set_missing(missing.tolist())
            self.train, self.val = self.load("train", "val")
            if not isinstance(self.train[0], Tensor) and self.batch_size % min(self.block_rows, self.batch_size):
                multiple = max(1, round(self.batch_size / self.block_rows)) * self.block_rows
                raise UserInputError(f"data.batch_size={self.batch_size}: training streamed from the files (more rows "
                                     f"than data.max_in_memory_gb={self.max_in_memory_bytes / 2**30:g}) reads batches "
                                     f"of whole blocks of data.block_rows={self.block_rows} rows: give a multiple, "
                                     f"e.g. data.batch_size={multiple}")
        if stage == "test" and self.test is None:  # the test rows are read only here
            self.test, = self.load("test")

    def labels_in(self, start: int, stop: int) -> set[int]:
        """The distinct labels of rows start..stop-1, read a million (1 MB) at a time until both are seen."""
        seen = set()
        for lo in range(start, stop, 1 << 20):
            seen |= set(np.unique(self.arrays["labels"].read(lo, min(lo + (1 << 20), stop))).tolist())
            if len(seen) > 1:
                break
        return seen

    def load(self, *splits: str) -> list:
        """Each split's rows as CPU tensors (labels, integers, categories) when they fit, else its (start, stop)."""
        rows = [self.rows[s] for s in splits]
        row_bytes = sum(a.row_bytes for a in self.arrays.values())
        if sum(stop - start for start, stop in rows) * row_bytes > self.max_in_memory_bytes:
            return rows
        return [tuple(torch.from_numpy(self.arrays[a].read(start, stop)) for a in ARRAYS) for start, stop in rows]

    @property
    def net_kwargs(self) -> dict:
        return {"num_numeric": self.scaler.width, "cardinalities": [1 + self.buckets] * len(CATEGORIES)}

    # What was fitted on the training rows travels in every checkpoint (Lightning saves a DataModule's state_dict
    # beside the weights), so predict.py encodes new rows as in training without the (large) training file.
    def state_dict(self) -> dict:
        return {} if self.train is None else {"scaler": self.scaler.state_dict(), "buckets": self.buckets,
                                              "missing": self.missing}

    def load_state_dict(self, state: dict) -> None:
        if self.train is None and state:  # set up on its data, it keeps what it fitted: the same
            self.scaler, self.buckets = NumericScaler.from_state(state["scaler"]), state["buckets"]
            self.set_missing(state.get("missing", [True] * len(CATEGORIES)))  # checkpoints before it: id 0 for all

    def set_missing(self, missing: list[bool]) -> None:
        """Which fields had missing values in training, and the id a missing value gets in each: 0 where it did
        (row 0 trained), else the hashed bucket of an unseen value (row 0 would be an untrained vector)."""
        self.missing = [bool(m) for m in missing]
        unseen = 1 + int(stable_hash([np.nan])[0]) % self.buckets
        self.missing_ids = torch.tensor([0 if m else unseen for m in self.missing], dtype=torch.int32)  # as the ids

    def read_frames(self, path: Path, rows: int) -> Iterator[pd.DataFrame]:
        """New rows to predict, `rows` at a time: Kaggle's tab-separated lines, or a CSV with Criteo's header, read
        as training reads them (a cell read otherwise would hash to another id)."""
        return read_with_header(path, ",", rows) if path.suffix.lower() == ".csv" else read_tab_separated(path, rows)

    def encode_frame(self, frame: pd.DataFrame, where: str | CsvRows = "input") -> tuple[Tensor, Tensor]:
        """New rows with Criteo's columns I1..I13, C1..C26 (a label is not needed), every cell as text -> the
        network's inputs (numeric features, categorical ids) as training made them; predict.py's path. Call
        setup("fit") or load_state_dict(a checkpoint's state) first."""
        if missing := [c for c in (*INTEGERS, *CATEGORIES) if c not in frame.columns]:
            raise UserInputError(f"{where}: no column {missing[0]!r}; Criteo rows have the columns I1..I13 and "
                                 "C1..C26 (a CSV with that header, or Kaggle's tab-separated lines)")
        frame = numbered(frame)
        integers = np.stack([parse(frame[c], to_finite, where, c, FLOAT32_PROBLEM, "fix or delete that row")
                             .to_numpy(np.float32) for c in INTEGERS], axis=1)
        categories = np.stack([hash_column(frame[c]) for c in CATEGORIES], axis=1)
        numeric, ids, _ = self.features(torch.zeros(len(frame)), torch.from_numpy(integers).reshape(-1, len(INTEGERS)),
                                        torch.from_numpy(categories).reshape(-1, len(CATEGORIES)))
        return numeric, ids

    def features(self, labels: Tensor, integers: Tensor, categories: Tensor, generator=None) -> tuple[Tensor, ...]:
        ids = torch.where(categories == 0, self.missing_ids.to(categories.device), categories % self.buckets + 1)
        return self.scaler(integers), ids, labels.reshape(-1).long()

    # -- batches ----------------------------------------------------------------------------------
    def _batches(self, split, batch_size: int, train: bool) -> TensorBatches:
        device = data_device(self.trainer, self.on_device)
        self.scaler.to(device)
        self.missing_ids = self.missing_ids.to(device)  # once: a copy from the CPU on every batch would wait
        common = dict(shuffle=train, **loader_args(self.trainer))
        if isinstance(split, tuple) and isinstance(split[0], Tensor):  # in memory: index slices on the device
            return TensorBatches(*(t.to(device) for t in split), batch_size=batch_size, transform=self.features,
                                 drop_last=train, **common)
        # Streamed, read from the files (sequential reads, bounded memory): evaluation batches of consecutive rows;
        # training batches of batch_size rows made of shuffled blocks of `block` consecutive rows, whole blocks only
        # (a short one would make a batch of another size, even of one row, which batch norm refuses). The split's
        # last rows short of a block are left out of training (fewer than block_rows of millions).
        start, stop = split
        block = min(self.block_rows, batch_size, stop - start) if train else batch_size

        def read(starts: Tensor, generator=None) -> tuple[Tensor, ...]:
            arrays = (torch.from_numpy(self.arrays[a].read_blocks(starts.numpy(), block, stop)) for a in ARRAYS)
            return self.features(*(a.to(device, non_blocking=True) for a in arrays))

        starts = torch.arange(start, stop - block + 1 if train else stop, block)
        return TensorBatches(starts, batch_size=max(1, batch_size // block) if train else 1, transform=read,
                             drop_last=train, **common)
