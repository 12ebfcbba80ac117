"""Tables for the ad-click DNN: numeric and categorical columns and a 0/1 label, held whole on the training device.

Features are fitted on the training split only (data/columns.py: numeric columns standardized with missing-value
indicators, categorical ones as ids with hashed buckets for rare and unseen values).
The encoded table is three tensors, (numeric float32 (N, n), categorical int64 (N, F), labels int64 (N,)),
moved to the device once and served as index slices (`TensorBatches`).

DataModules (the `data=` choices):
  ClicksDataModule  (data/clicks.py) the synthetic ad-click generator; knows the Bayes-optimal AUC
  CSVDataModule     any CSV: data.path, data.label_column, data.numeric_columns, data.categorical_columns,
                    data.timestamp_columns (each expanded to hour and weekday fields); data=advertising presets it
  CriteoDataModule  (data/criteo.py) the Criteo format, converted once to .npy files, streamed when large
"""
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from data import UserInputError, count, not_a_file
from data.batches import (SplitLoaders, TensorBatches, check_both_labels, check_fractions, data_device, loader_args,
                          split_indices)
from data.columns import (FLOAT32_PROBLEM, READ_CSV, CategoryIds, CsvRows, NumericScaler, date_format, not_utf8,
                          numbered, parse, read_csv_rows, row_name, to_datetime, to_finite)


class TabularDataModule(SplitLoaders, L.LightningDataModule):
    """Encodes and serves the splits that a subclass's `frames(splits)` returns as pandas DataFrames."""

    task = "binary"
    kind = "tables"  # what the network must read (its `reads`)
    timestamps: list[str] = []  # raw date-time columns, each expanded into the fields "<name> hour", "<name> weekday"

    def __init__(self, numeric_columns: list[str], categorical_columns: list[str], label_column: str,
                 log_columns: list[str] | str | None = "auto", min_count: int = 5, hash_buckets: int = 1000,
                 batch_size: int = 256, eval_batch_size: int = 8192, on_device: bool = True) -> None:
        super().__init__()
        self.numeric, self.categorical, self.label = list(numeric_columns), list(categorical_columns), label_column
        log_columns = [] if log_columns is None else log_columns  # null: no column is logged
        if log_columns != "auto" and (isinstance(log_columns, str) or any(c not in self.numeric for c in log_columns)):
            raise UserInputError(f"data.log_columns={log_columns!r}: give auto, [] (none) or a list of numeric "
                                 f"columns: {self.numeric}")
        self.log_columns, self.min_count, self.hash_buckets = log_columns, min_count, hash_buckets
        self.batch_size, self.eval_batch_size, self.on_device = batch_size, eval_batch_size, on_device
        self.train = self.val = self.test = None  # (numeric (N, n), categorical (N, F), labels (N,))
        self.time_formats: dict[str, str | None] = {}  # timestamp column -> its strptime format (date_format)
        self.timestamp_format = None  # the user's format for every timestamp column (CSVDataModule's argument)

    def frames(self, splits: tuple[str, ...]) -> list[pd.DataFrame]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train is None:
            train, val = self.frames(("train", "val"))
            self.scaler = NumericScaler(self.heavy_tailed(train)).update(self.numbers(train)).finish()
            self.ids = CategoryIds.fit(train[self.categorical], self.min_count, self.hash_buckets)
            self.train, self.val = self.encode(train), self.encode(val)
        if stage == "test" and self.test is None:  # the test rows are read only here
            self.test = self.encode(*self.frames(("test",)))

    def heavy_tailed(self, train: pd.DataFrame) -> Tensor:
        if self.log_columns != "auto":
            return torch.tensor([c in self.log_columns for c in self.numeric], dtype=torch.bool)
        # auto: non-negative with a long right tail (skewness > 2), like counts, prices and incomes
        return torch.tensor([bool(train[c].min() >= 0 and train[c].skew() > 2) for c in self.numeric], dtype=torch.bool)

    def numbers(self, frame: pd.DataFrame) -> Tensor:
        return torch.tensor(frame[self.numeric].to_numpy(np.float32)).reshape(len(frame), len(self.numeric))  # (N, n)

    def encode(self, frame: pd.DataFrame) -> tuple[Tensor, Tensor, Tensor]:
        labels = torch.tensor(frame[self.label].to_numpy(np.int64))
        return self.scaler(self.numbers(frame)), self.ids(frame[self.categorical]), labels

    @property
    def derived(self) -> list[str]:
        return [f"{c} {part}" for c in self.timestamps for part in ("hour", "weekday")]

    def parse_features(self, frame: pd.DataFrame, where: str | CsvRows, new_rows: bool = False) -> pd.DataFrame:
        """Raw rows (strings or numbers) checked and parsed: every feature column present, numbers finite (or
        empty), timestamps parsed and expanded. The first problem is a UserInputError naming column and row, and
        the fix: in the config for a training file; in the file for `new_rows` (predict.py, whose model was trained
        on these columns and date formats: a data.* setting that changes them is refused)."""
        if new_rows:
            fix = "the model was trained on this column: add it to the file (other columns are ignored)"
            dates_fix = "write the dates as the training file did"
        else:
            fix = "fix the column name in the config or the file"
            dates_fix = "write every date of a column in one format, " + (
                "or fix data.timestamp_format" if self.timestamp_format else "or give data.timestamp_format")
        needed = [*self.numeric, *[c for c in self.categorical if c not in self.derived], *self.timestamps]
        if missing := [c for c in needed if c not in frame.columns]:
            raise UserInputError(f"{where}: no column {missing[0]!r} in the header (row 1), which has "
                                 f"{list(frame.columns)}; {fix}")
        frame = frame.copy()
        for column in self.numeric:
            frame[column] = parse(frame[column], to_finite, where, column, FLOAT32_PROBLEM,
                                  "fix it (a missing value is an empty cell)" + (
                                      "" if new_rows else f", or list {column!r} under data.categorical_columns"))
        for column in self.timestamps:
            if column not in self.time_formats:  # fitted on the first rows read (the training file's), then kept
                self.time_formats[column] = self.fit_date_format(frame[column], where, column)
            written = self.time_formats[column]
            stamps = parse(frame[column], partial(to_datetime, format=written), where, column,
                           f"is not a date and time in the column's format {written}", dates_fix)
            frame[f"{column} hour"], frame[f"{column} weekday"] = stamps.dt.hour, stamps.dt.weekday
        return frame

    def fit_date_format(self, dates: pd.Series, where: str | CsvRows, column: str) -> str | None:
        written = self.timestamp_format or date_format(dates)
        if written is None and dates.notna().any():
            raise UserInputError(f"{where}, column {column!r}: pandas cannot tell the format of its dates (the first: "
                                 f"{dates.dropna().iloc[0]!r}); give it, e.g. data.timestamp_format='%d/%m/%y %H:%M', "
                                 "or write them like 2016-03-27 00:53:11")
        return written

    def read_frames(self, path: Path, rows: int) -> Iterator[pd.DataFrame]:
        """New rows to predict, `rows` at a time, from a CSV file read as training reads one (every cell as text)."""
        if path.suffix.lower() != ".csv":
            raise UserInputError(f"input={path}: this model reads a .csv (tab-separated lines are Criteo's)")
        return read_csv_rows(path, rows)

    def encode_frame(self, frame: pd.DataFrame, where: str | CsvRows = "input") -> tuple[Tensor, Tensor]:
        """New rows (no label needed) -> the network's inputs (numeric, categorical), with the encoders fitted on
        the training split; predict.py's CSV path. Call setup("fit") or load_state_dict(a checkpoint's state) first."""
        frame = self.parse_features(numbered(frame), where, new_rows=True)
        return self.scaler(self.numbers(frame)), self.ids(frame[self.categorical])

    @property
    def net_kwargs(self) -> dict:
        return {"num_numeric": self.scaler.width, "cardinalities": self.ids.cardinalities}

    # What was fitted on the training split travels in every checkpoint (Lightning saves a DataModule's state_dict
    # beside the weights), so predict.py encodes new rows exactly as in training without the training file.
    def state_dict(self) -> dict:
        if self.train is None:
            return {}
        return {"scaler": self.scaler.state_dict(), "ids": self.ids.state_dict(), "time_formats": self.time_formats}

    def load_state_dict(self, state: dict) -> None:
        if self.train is None and state:  # set up on its data, it keeps the encoders it fitted: the same ones
            self.scaler, self.ids = NumericScaler.from_state(state["scaler"]), CategoryIds(**state["ids"])
            self.time_formats = dict(state.get("time_formats", {}))  # (older checkpoints: fitted on the first chunk)

    # -- batches ----------------------------------------------------------------------------------
    def _batches(self, split: tuple[Tensor, ...], batch_size: int, train: bool) -> TensorBatches:
        device = data_device(self.trainer, self.on_device)
        return TensorBatches(*(t.to(device) for t in split), batch_size=batch_size, shuffle=train,
                             drop_last=train, **loader_args(self.trainer))


class CSVDataModule(TabularDataModule):
    """Any CSV with a header and a 0/1 label column: rows split at random into train, validation and test."""

    def __init__(self, path: str, label_column: str, numeric_columns: list[str] = (),
                 categorical_columns: list[str] = (), timestamp_columns: list[str] = (),
                 timestamp_format: str | None = None, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 split_seed: int = 0, **encoding) -> None:
        # each timestamp becomes two categorical fields: "<name> hour", "<name> weekday"
        self.timestamps = list(timestamp_columns)
        super().__init__(numeric_columns, [*categorical_columns, *self.derived], label_column, **encoding)
        self.path, self.split_seed, self.timestamp_format = Path(path).expanduser(), split_seed, timestamp_format
        self.fractions = {"val": val_fraction, "test": test_fraction}
        named = [label_column, *numeric_columns, *categorical_columns, *self.timestamps]
        if twice := sorted({c for c in named if named.count(c) > 1}):
            raise UserInputError(f"column(s) {twice} are named twice among data.label_column, data.numeric_columns, "
                                 "data.categorical_columns, data.timestamp_columns: give each column one role")
        if len(named) == 1:
            raise UserInputError("data.numeric_columns, data.categorical_columns and data.timestamp_columns are all "
                                 "empty: name the columns the model reads, e.g. 'data.numeric_columns=[age,income]'")
        check_fractions(val_fraction, test_fraction)
        if timestamp_format is not None:
            try:  # a bad directive (%Q) fails whatever the dates: now, not as a traceback once they are read
                to_datetime(pd.Series([], dtype=object), timestamp_format)
            except ValueError as err:
                raise UserInputError(f"data.timestamp_format={timestamp_format!r}: {err}; give strftime codes such "
                                     "as '%Y-%m-%d %H:%M:%S'") from None

    def read(self) -> pd.DataFrame:
        """The whole file, checked: columns present, numbers numeric, timestamps parsed, labels 0/1."""
        where = CsvRows("data.path", self.path)
        if what := not_a_file(self.path):
            raise UserInputError(f"{where}: {what}; give a CSV file with a header row")
        try:
            frame = pd.read_csv(self.path, **READ_CSV)
        except pd.errors.EmptyDataError:
            raise UserInputError(f"{where} is empty: row 1 should be the header naming the columns "
                                 f"(label column {self.label!r}), then one row per example") from None
        except UnicodeDecodeError:
            raise not_utf8(where, self.path) from None
        except pd.errors.ParserError as err:
            raise UserInputError(f"{where} is not a readable CSV ({err})") from None
        where.check_header()
        where.check(frame)
        if self.label not in frame.columns:
            raise UserInputError(f"{where}: no label column {self.label!r} in the header (row 1), which has "
                                 f"{list(frame.columns)}; fix data.label_column or the file")
        frame = self.parse_features(frame, where)
        if frame.empty:
            raise UserInputError(f"{where} has a header but no rows: row 2 (the first example, column "
                                 f"{self.label!r} and the others) is missing")
        labels = pd.to_numeric(frame[self.label], errors="coerce")
        if bad := np.flatnonzero(~labels.isin([0, 1])).tolist():
            label = frame[self.label].iloc[bad[0]]  # (an empty cell: NaN, as in data/criteo.py's message)
            raise UserInputError(f"{where}, column {self.label!r}, {row_name(where, bad[0])}: label "
                                 f"{'(empty)' if pd.isna(label) else repr(label)} is not 0 or 1 ({len(bad)} such)")
        check_both_labels(where, self.label, set(labels.unique()))
        frame[self.label] = labels.astype(np.int64)
        return frame

    def frames(self, splits: tuple[str, ...]) -> list[pd.DataFrame]:
        frame = self.read()
        n_test = round(len(frame) * self.fractions["test"])
        n_val = round(len(frame) * self.fractions["val"])
        if min(n_test, n_val) < 1 or len(frame) - n_test - n_val < 2:
            raise UserInputError(f"data.path={self.path} has {count(len(frame), 'row')}: too few to split into "
                                 f"training, validation ({self.fractions['val']}) and test ({self.fractions['test']}) "
                                 "rows")
        rest, test = split_indices(len(frame), n_test, self.split_seed)
        train, val = split_indices(len(rest), n_val, self.split_seed + 1)
        rows = {"train": rest[train], "val": rest[val], "test": test}
        for split in ("train", "val", "test"):
            check_both_labels(f"data.path={self.path}", self.label, set(frame[self.label].iloc[rows[split].numpy()]),
                              split, len(rows[split]))
        training = frame.iloc[rows["train"].numpy()]
        if empty := [c for c in self.numeric if training[c].isna().all()]:  # every row "missing": nothing to learn
            raise UserInputError(f"data.path={self.path}, column {empty[0]!r}: none of the {len(training)} training "
                                 "rows has a value; fill it in, or leave it out of data.numeric_columns")
        return [frame.iloc[rows[s].numpy()] for s in splits]
