"""Tables for the ad-click DNN: numeric and categorical columns and a 0/1 label, held whole on the training device.

Features, fitted on the training split only:
  numeric      signed log1p on heavy-tailed columns, then standardized; a missing value becomes 0 (the mean)
               plus a 1 in that column's "was missing" indicator (only columns with missing training values get one)
  categorical  per field: id 0 = missing; 1..V = the training values seen at least `min_count` times; then up
               to `hash_buckets` buckets that every other value (rare in training, or never seen) is hashed into.
               Rare training values train those buckets, so an unseen value lands on a trained embedding.
The encoded table is three tensors, (numeric float32 (N, n), categorical int64 (N, F), labels int64 (N,)),
moved to the device once and served as index slices (`TensorBatches`).

DataModules (the `data=` choices):
  ClicksDataModule  (data/clicks.py) the synthetic ad-click generator; knows the Bayes-optimal AUC
  CSVDataModule     any CSV: data.path, data.label_column, data.numeric_columns, data.categorical_columns,
                    data.timestamp_columns (each expanded to hour and weekday fields); data=advertising presets it
  CriteoDataModule  (data/criteo.py) the Criteo format, converted once to .npy files, streamed when large
"""
import csv
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from data import UserInputError
from data.batches import SplitLoaders, TensorBatches, check_fractions, data_device, loader_args, split_indices


# Every cell as the text it is (a category "01" stays "01"); only an empty cell is missing: "NA", "None" or "null"
# can be real values (a country code, a name), which pandas' default would silently turn into missing ones.
READ_CSV = dict(dtype=str, skipinitialspace=True, keep_default_na=False, na_values=[""])


def stable_hash(values: np.ndarray) -> np.ndarray:
    """Values -> int64 in [1, 2**31 - 1), the same in every process (unlike Python's salted `hash`)."""
    return (pd.util.hash_array(np.asarray(values, dtype=object)) % np.uint64(2**31 - 2)).astype(np.int64) + 1


def signed_log1p(x: Tensor) -> Tensor:
    return x.sign() * x.abs().log1p()  # counts and money: 0 -> 0, 1e6 -> 13.8; negatives mirrored


class NumericScaler:
    """(B, n) raw numbers with NaN for missing -> (B, n + m) standardized features and m missing-indicators."""

    def __init__(self, log: Tensor) -> None:
        self.log = log  # (n,) bool: which columns get signed_log1p
        zeros = torch.zeros(len(log), dtype=torch.float64)
        self.count, self.sum, self.sumsq = zeros.clone(), zeros.clone(), zeros.clone()

    def _logged(self, x: Tensor) -> Tensor:
        return torch.where(self.log, signed_log1p(x), x)

    def update(self, x: Tensor) -> "NumericScaler":  # one chunk of training rows at a time: bounded memory
        x = self._logged(x.double())
        seen = ~x.isnan()
        self.count += seen.sum(0)
        self.sum += torch.where(seen, x, 0).sum(0)
        self.sumsq += torch.where(seen, x * x, 0).sum(0)
        self.rows = getattr(self, "rows", 0) + len(x)
        return self

    def finish(self) -> "NumericScaler":
        n = self.count.clamp(min=1)
        self.mean = (self.sum / n).float()
        std = (self.sumsq / n - (self.sum / n) ** 2).clamp(min=0).sqrt().float()
        self.std = torch.where(std > 1e-12, std, 1.0)  # a constant column stays 0 instead of dividing by 0
        self.indicated = self.count < self.rows        # (n,) columns with missing training values get an indicator
        return self

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in ("log", "mean", "std", "indicated")}

    @classmethod
    def from_state(cls, state: dict) -> "NumericScaler":
        scaler = cls(state["log"])
        scaler.mean, scaler.std, scaler.indicated = state["mean"], state["std"], state["indicated"]
        return scaler

    def to(self, device: torch.device) -> "NumericScaler":
        for name in ("log", "mean", "std", "indicated"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def indicated(self) -> Tensor:
        return self._indicated

    @indicated.setter
    def indicated(self, mask: Tensor) -> None:
        # Also as indices, found once: indexing with a boolean mask makes a GPU count its True values, a host
        # sync on every batch.
        self._indicated, self.indicated_ids = mask, mask.nonzero().squeeze(1)  # (n,) bool, (m,) long

    @property
    def width(self) -> int:
        return len(self.log) + int(self.indicated.sum())

    def __call__(self, x: Tensor) -> Tensor:
        z = (self._logged(x.float()) - self.mean) / self.std  # (B, n)
        missing = z.isnan()
        indicators = missing.index_select(1, self.indicated_ids)  # (B, m)
        return torch.cat([torch.where(missing, 0.0, z), indicators.float()], dim=1)  # (B, n + m)


class CategoryIds:
    """Per categorical field, values -> ids: 0 missing, 1..V frequent training values, V+1.. hashed buckets."""

    def __init__(self, vocab: dict[str, list[str]], buckets: dict[str, int]) -> None:
        self.vocab = {name: pd.Index(values, dtype=object) for name, values in vocab.items()}  # field -> sorted levels
        self.buckets = dict(buckets)  # field -> number of hashed buckets

    @classmethod
    def fit(cls, train: pd.DataFrame, min_count: int, hash_buckets: int) -> "CategoryIds":
        vocab, buckets = {}, {}
        for name, column in train.items():
            counts = as_strings(column).value_counts()
            vocab[name] = sorted(counts.index[counts >= min_count])
            rare = int((counts < min_count).sum())  # no more buckets than there are rare values to fill them
            buckets[name] = max(1, min(hash_buckets, rare))
        return cls(vocab, buckets)

    def state_dict(self) -> dict:
        return {"vocab": {name: list(values) for name, values in self.vocab.items()}, "buckets": self.buckets}

    @property
    def cardinalities(self) -> list[int]:
        return [1 + len(self.vocab[f]) + self.buckets[f] for f in self.vocab]

    def __call__(self, frame: pd.DataFrame) -> Tensor:
        fields = []
        for name, vocab in self.vocab.items():
            values = as_strings(frame[name])
            known = vocab.get_indexer(values)  # -1 where not in the vocabulary
            hashed = len(vocab) + 1 + stable_hash(values.to_numpy()) % self.buckets[name]
            fields.append(np.where(values.isna(), 0, np.where(known >= 0, known + 1, hashed)))
        return torch.as_tensor(np.stack(fields, axis=1) if fields else np.zeros((len(frame), 0)), dtype=torch.long)


def as_strings(column: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(column) and (column.dropna() % 1 == 0).all():
        column = column.astype("Int64")  # 3.0 and 3 are the same level
    return column.astype(str).where(column.notna())


class TabularDataModule(SplitLoaders, L.LightningDataModule):
    """Encodes and serves the splits that a subclass's `frames(splits)` returns as pandas DataFrames."""

    task = "binary"
    kind = "tables"  # what the network must read (its `reads`)
    timestamps: list[str] = []  # raw date-time columns, each expanded into the fields "<name> hour", "<name> weekday"

    def __init__(self, numeric_columns: list[str], categorical_columns: list[str], label_column: str,
                 log_columns: list[str] | str | None = "auto", min_count: int = 5, hash_buckets: int = 1000,
                 batch_size: int = 1024, eval_batch_size: int = 8192, on_device: bool = True) -> None:
        super().__init__()
        self.numeric, self.categorical, self.label = list(numeric_columns), list(categorical_columns), label_column
        log_columns = [] if log_columns is None else log_columns  # null: no column is logged
        if log_columns != "auto" and (isinstance(log_columns, str) or any(c not in self.numeric for c in log_columns)):
            raise UserInputError(f"data.log_columns={log_columns!r}: give auto, [] (none) or a list of numeric "
                                 f"columns: {self.numeric}")
        self.log_columns, self.min_count, self.hash_buckets = log_columns, min_count, hash_buckets
        self.batch_size, self.eval_batch_size, self.on_device = batch_size, eval_batch_size, on_device
        self.train = self.val = self.test = None  # (numeric (N, n), categorical (N, F), labels (N,))

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

    def parse_features(self, frame: pd.DataFrame, where: str) -> pd.DataFrame:
        """Raw rows (strings or numbers) checked and parsed: every feature column present, numbers finite (or
        empty), timestamps parsed and expanded. The first problem is a UserInputError naming column and row."""
        needed = [*self.numeric, *[c for c in self.categorical if c not in self.derived], *self.timestamps]
        if missing := [c for c in needed if c not in frame.columns]:
            raise UserInputError(f"{where}: no column {missing[0]!r} in the header (row 1), which has "
                                 f"{list(frame.columns)}; fix the column name in the config or the file")
        frame = frame.copy()
        for column in self.numeric:
            frame[column] = parse(frame[column], to_finite, where, column, FLOAT32_PROBLEM,
                                  f"fix it, or list {column!r} under data.categorical_columns")
        for column in self.timestamps:
            stamps = parse(frame[column], to_datetime, where, column, "is not a date and time",
                           "write it like 2016-03-27 00:53:11")
            frame[f"{column} hour"], frame[f"{column} weekday"] = stamps.dt.hour, stamps.dt.weekday
        return frame

    def encode_frame(self, frame: pd.DataFrame, where: str = "input") -> tuple[Tensor, Tensor]:
        """New rows (no label needed) -> the network's inputs (numeric, categorical), with the encoders fitted on
        the training split; predict.py's CSV path. Call setup("fit") or load_state_dict(a checkpoint's state) first."""
        frame = self.parse_features(frame.reset_index(drop=True), where)
        return self.scaler(self.numbers(frame)), self.ids(frame[self.categorical])

    @property
    def net_kwargs(self) -> dict:
        return {"num_numeric": self.scaler.width, "cardinalities": self.ids.cardinalities}

    # What was fitted on the training split travels in every checkpoint (Lightning saves a DataModule's state_dict
    # beside the weights), so predict.py encodes new rows exactly as in training without the training file.
    def state_dict(self) -> dict:
        if self.train is None:
            return {}
        return {"scaler": self.scaler.state_dict(), "ids": self.ids.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.train is None and state:  # set up on its data, it keeps the encoders it fitted: the same ones
            self.scaler, self.ids = NumericScaler.from_state(state["scaler"]), CategoryIds(**state["ids"])

    # -- batches ----------------------------------------------------------------------------------
    def _batches(self, split: tuple[Tensor, ...], batch_size: int, train: bool) -> TensorBatches:
        device = data_device(self.trainer, self.on_device)
        return TensorBatches(*(t.to(device) for t in split), batch_size=batch_size, shuffle=train,
                             drop_last=train, **loader_args(self.trainer))


class CSVDataModule(TabularDataModule):
    """Any CSV with a header and a 0/1 label column: rows split at random into train, validation and test."""

    def __init__(self, path: str, label_column: str, numeric_columns: list[str] = (),
                 categorical_columns: list[str] = (), timestamp_columns: list[str] = (), val_fraction: float = 0.15,
                 test_fraction: float = 0.15, split_seed: int = 0, **encoding) -> None:
        # each timestamp becomes two categorical fields: "<name> hour", "<name> weekday"
        self.timestamps = list(timestamp_columns)
        super().__init__(numeric_columns, [*categorical_columns, *self.derived], label_column, **encoding)
        self.path, self.split_seed = Path(path).expanduser(), split_seed
        self.fractions = {"val": val_fraction, "test": test_fraction}
        named = [label_column, *numeric_columns, *categorical_columns, *self.timestamps]
        if twice := sorted({c for c in named if named.count(c) > 1}):
            raise UserInputError(f"column(s) {twice} are named twice among data.label_column, data.numeric_columns, "
                                 "data.categorical_columns, data.timestamp_columns: give each column one role")
        if len(named) == 1:
            raise UserInputError("data.numeric_columns, data.categorical_columns and data.timestamp_columns are all "
                                 "empty: name the columns the model reads, e.g. 'data.numeric_columns=[age,income]'")
        check_fractions(val_fraction, test_fraction)

    def read(self) -> pd.DataFrame:
        """The whole file, checked: columns present, numbers numeric, timestamps parsed, labels 0/1."""
        where = f"data.path={self.path}"
        if not self.path.is_file():
            what = "a folder" if self.path.is_dir() else "no such file"
            raise UserInputError(f"{where}: {what}; give a CSV file with a header row")
        try:
            frame = pd.read_csv(self.path, **READ_CSV)
        except pd.errors.EmptyDataError:
            raise UserInputError(f"{where} is empty: row 1 should be the header naming the columns "
                                 f"(label column {self.label!r}), then one row per example") from None
        except UnicodeDecodeError as err:
            raise UserInputError(f"{where} is not UTF-8 text ({err}); convert it, e.g. "
                                 "iconv -f LATIN1 -t UTF-8 FILE > FILE.utf8.csv") from None
        except pd.errors.ParserError as err:
            raise UserInputError(f"{where} is not a readable CSV ({err})") from None
        with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = [name.strip() for name in next(csv.reader(f), [])]  # pandas renames a repeated "a" to "a.1"
        if twice := sorted({name for name in header if name and header.count(name) > 1}):  # "": pandas' "Unnamed: 3"
            raise UserInputError(f"{where}: the header (row 1) names column(s) {twice} twice; give every column its "
                                 "own name")
        if self.label not in frame.columns:
            raise UserInputError(f"{where}: no label column {self.label!r} in the header (row 1), which has "
                                 f"{list(frame.columns)}; fix data.label_column or the file")
        frame = self.parse_features(frame, where)
        if frame.empty:
            raise UserInputError(f"{where} has a header but no rows: row 2 (the first example, column "
                                 f"{self.label!r} and the others) is missing")
        labels = pd.to_numeric(frame[self.label], errors="coerce")
        if bad := np.flatnonzero(~labels.isin([0, 1])).tolist():
            raise UserInputError(f"{where}, column {self.label!r}, row {bad[0] + 1} (line {bad[0] + 2}): label "
                                 f"{frame[self.label].iloc[bad[0]]!r} is not 0 or 1 ({len(bad)} such)")
        if labels.nunique() < 2:
            raise UserInputError(f"{where}, column {self.label!r}: every label is {int(labels.iloc[0])}; a click "
                                 "model learns from both 0 and 1 rows")
        frame[self.label] = labels.astype(np.int64)
        return frame

    def frames(self, splits: tuple[str, ...]) -> list[pd.DataFrame]:
        frame = self.read()
        n_test = round(len(frame) * self.fractions["test"])
        n_val = round(len(frame) * self.fractions["val"])
        if min(n_test, n_val) < 1 or len(frame) - n_test - n_val < 2:
            raise UserInputError(f"data.path={self.path} has {len(frame)} rows: too few to split into training, "
                                 f"validation ({self.fractions['val']}) and test ({self.fractions['test']}) rows")
        rest, test = split_indices(len(frame), n_test, self.split_seed)
        train, val = split_indices(len(rest), n_val, self.split_seed + 1)
        rows = {"train": rest[train], "val": rest[val], "test": test}
        for split in ("train", "val", "test"):  # the AUROC of one class is undefined: 0.0 and a warning, not an error
            if frame[self.label].iloc[rows[split].numpy()].nunique() < 2:
                raise UserInputError(f"data.path={self.path}: the {split} split's {len(rows[split])} rows all have "
                                     f"one label: give more rows, or a larger data.val_fraction/test_fraction")
        return [frame.iloc[rows[s].numpy()] for s in splits]


def parse(column: pd.Series, parser, where: str, name: str, problem: str, fix: str) -> pd.Series:
    """`parser(column)`, or a UserInputError naming the first present value that it cannot parse."""
    parsed = parser(column)
    if bad := np.flatnonzero(column.notna().to_numpy() & parsed.isna().to_numpy()).tolist():
        raise UserInputError(f"{where}, column {name!r}, row {bad[0] + 1} (line {bad[0] + 2}): {column.iloc[bad[0]]!r} "
                             f"{problem}; {fix}")
    return parsed


FLOAT32_PROBLEM = "is not a finite number within float32's ±3.4e38"  # what to_finite refuses


def to_finite(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    with np.errstate(over="ignore"):  # the network reads float32: 1e39 would become inf there
        finite = np.isfinite(numbers.to_numpy(np.float64).astype(np.float32))
    return numbers.where(finite)  # "inf" or "1e39" is no more usable than "abc"


def to_datetime(column: pd.Series) -> pd.Series:
    """Date-times as naive local times: each value's hour and weekday are those written, whatever its UTC offset."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            stamps = pd.to_datetime(column, errors="coerce")
        if pd.api.types.is_datetime64_any_dtype(stamps):
            return stamps
    except ValueError:
        pass
    # Offsets that differ between rows (a daylight-saving change): pandas 3 refuses to mix them, pandas 2 gives
    # plain objects. Each value is read on its own.
    return pd.to_datetime(column.map(local_time))


def local_time(value) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    return stamp.tz_localize(None) if stamp is not pd.NaT and stamp.tzinfo else stamp
