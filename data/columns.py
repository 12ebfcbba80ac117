"""A table's columns as a network's inputs, fitted on the training split only; and the raw cells read as text.

  numeric      signed log1p on heavy-tailed columns, then standardized; a missing value becomes 0 (the mean)
               plus a 1 in that column's "was missing" indicator (only columns with missing training values get one)
  categorical  per field: id 0 = missing; 1..V = the training values seen at least `min_count` times; then up
               to `hash_buckets` buckets that every other value (rare in training, or never seen) is hashed into.
               Rare training values train those buckets, as many as there are rare values (at most hash_buckets):
               hashed at random, about a third of the buckets get none and keep their initial vectors, so an unseen
               value lands on a trained embedding about two times in three. A missing value in a field that had
               none in training is unseen too: id 0 would be an untrained vector. A whole number written with
               zero decimals ("12.0", as pandas writes an integer column that has a missing value) is the level
               "12".
Used by data/tabular.py (CSV files, the synthetic clicks) and data/criteo.py (the Criteo format).
"""
import csv
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pandas.tseries.api import guess_datetime_format
from torch import Tensor

from data import UserInputError

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
        # per column, over the rows: sums of (x - shift), shift a value of the column's own (its first): a constant
        # column then sums exact zeros, where sum(x * x) / n - mean**2 would leave a rounding residue for a std
        self.count, self.sum, self.sumsq = zeros.clone(), zeros.clone(), zeros.clone()
        self.shift = torch.full_like(zeros, torch.nan)  # set by the first chunk with a value in the column
        self.rows = 0  # training rows seen, with or without a value

    def _logged(self, x: Tensor) -> Tensor:
        return torch.where(self.log, signed_log1p(x), x)

    def update(self, x: Tensor) -> "NumericScaler":  # one chunk of training rows at a time: bounded memory
        x = self._logged(x.double())
        seen = ~x.isnan()
        first = x.gather(0, seen.double().argmax(0, keepdim=True)).squeeze(0) if len(x) else self.shift
        self.shift = torch.where(self.shift.isnan(), first, self.shift)  # still NaN for a column with no value yet
        x = x - self.shift
        self.count += seen.sum(0)
        self.sum += torch.where(seen, x, 0).sum(0)
        self.sumsq += torch.where(seen, x * x, 0).sum(0)
        self.rows += len(x)
        return self

    def finish(self) -> "NumericScaler":
        n = self.count.clamp(min=1)
        self.mean = (self.shift.nan_to_num() + self.sum / n).float()
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

    def __init__(self, vocab: dict[str, list[str]], buckets: dict[str, int], missing: dict[str, bool] | None = None
                 ) -> None:
        self.vocab = {name: level_index(values) for name, values in vocab.items()}  # field -> sorted levels
        self.buckets = dict(buckets)  # field -> number of hashed buckets
        # field -> whether training had missing values there (id 0 trained); checkpoints before this: all did
        self.missing = {name: True for name in vocab} if missing is None else dict(missing)

    @classmethod
    def fit(cls, train: pd.DataFrame, min_count: int, hash_buckets: int) -> "CategoryIds":
        vocab, buckets, missing = {}, {}, {}
        for name, column in train.items():
            counts = as_strings(column).value_counts()
            counts = counts.groupby(whole_numbers(counts.index)).sum()  # "12" and "12.0": one level
            vocab[name] = sorted(counts.index[counts >= min_count])
            rare = int((counts < min_count).sum())  # no more buckets than there are rare values to fill them
            buckets[name] = max(1, min(hash_buckets, rare))
            missing[name] = bool(column.isna().any())
        return cls(vocab, buckets, missing)

    def state_dict(self) -> dict:
        return {"vocab": {name: list(values) for name, values in self.vocab.items()}, "buckets": self.buckets,
                "missing": self.missing}

    @property
    def cardinalities(self) -> list[int]:
        return [1 + len(self.vocab[f]) + self.buckets[f] for f in self.vocab]

    def __call__(self, frame: pd.DataFrame) -> Tensor:
        fields = []
        for name, vocab in self.vocab.items():
            codes, values = pd.factorize(as_strings(frame[name]))  # each distinct value once; -1: missing
            levels = whole_numbers(pd.Index(values, dtype=object))
            known = vocab.get_indexer(levels)  # -1 where not in the vocabulary
            hashed = len(vocab) + 1 + stable_hash(levels.to_numpy()) % self.buckets[name]
            # never missing in training: a missing value is unseen too, hashed (id 0 would be an untrained vector)
            missing = 0 if self.missing[name] else len(vocab) + 1 + stable_hash([np.nan])[0] % self.buckets[name]
            ids = np.append(np.where(known >= 0, known + 1, hashed), missing)[codes]  # code -1 (missing): the last
            fields.append(ids)
        return torch.as_tensor(np.stack(fields, axis=1) if fields else np.zeros((len(frame), 0)), dtype=torch.long)


def whole_numbers(levels: pd.Index) -> pd.Index:
    """Levels (text) with a whole number written with zero decimals as the integer: "12.0" -> "12", "-3.00" -> "-3"
    (the text of an integer column that pandas turned to float for a missing value); any other text unchanged."""
    return pd.Index(levels.astype(object).str.replace(r"^([+-]?\d+)\.0+$", r"\1", regex=True), dtype=object)


def level_index(values: list[str]) -> pd.Index:
    """A field's vocabulary as an index of its levels, their ids its positions. A checkpoint's levels written before
    "12.0" meant "12" are read as whole numbers, unless two of them would then be one: they stay as written, and
    the values looked up, read as whole numbers, find "12" (the "12.0" level's embedding goes unused)."""
    levels = whole_numbers(pd.Index(values, dtype=object))
    return levels if levels.is_unique else pd.Index(values, dtype=object)


def as_strings(column: pd.Series) -> pd.Series:
    """A categorical column's values as the strings the vocabulary holds; missing values stay missing. A whole
    float prints as the int: 3.0 and 3 are one level, whether or not the same column also holds a 2.5 (a column of
    floats from a DataFrame; CSV cells are read as text, which `whole_numbers` makes the same)."""
    strings = column.astype(str)
    if pd.api.types.is_float_dtype(column):
        whole = (column % 1 == 0) & (column.abs() < 2**53)  # exactly representable: int64 prints it in full
        strings = strings.mask(whole, column.where(whole, 0).astype("int64").astype(str))
    return strings.where(column.notna())


def not_utf8(where, path: Path) -> UserInputError:
    """The error for a file that is not UTF-8 text, naming its first line that is not (read again, from the start:
    pandas' own message counts bytes within a buffer of its own)."""
    place = "a byte pandas could not decode"
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                place = f"line {number}, byte {line[err.start]:#04x}"
                break
    return UserInputError(f"{where} is not UTF-8 text ({place}); {conversion(path)}")


def conversion(path: Path) -> str:
    """The advice to convert a file to UTF-8, from the encoding its first MiB suggests."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    head = head[:-3] if len(head) == 1 << 20 else head  # (less a character the cut may have split)
    return f"convert it, e.g. iconv -f {encoding_of(head)} -t UTF-8 {path.name} > utf8_{path.name}"


def encoding_of(head: bytes) -> str:
    """A likely encoding of a file that is not UTF-8, from its first bytes, for iconv's -f: converted as Latin-1, a
    UTF-16 file would become text with a NUL after every letter, and Windows' curly quotes control characters."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16's byte-order mark
        return "UTF-16"
    if head.count(0) > len(head) // 4:  # mostly ASCII in UTF-16 without a mark: every other byte is 0
        return "UTF-16LE" if head[1::2].count(0) > head[::2].count(0) else "UTF-16BE"
    # The bytes that are not UTF-8 (decoded to U+DC80-U+DCFF): Windows-1252's curly quotes and dashes are 0x80-0x9F,
    # unprintable codes in Latin-1.
    stray = head.decode("utf-8", errors="surrogateescape")
    return "CP1252" if re.search("[\udc80-\udc9f]", stray) else "LATIN1"


def read_csv_rows(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """A CSV file as training reads one (READ_CSV), `rows` rows at a time (pandas' chunked reader: memory bounded by
    one chunk), each row checked for the header's number of fields (CsvRows.check); or a one-line error, also for a
    line found broken halfway through the file. Each chunk's RangeIndex numbers its rows in the file from 0 (the
    second chunk of 1000 starts at 1000), which is how errors name them."""
    where = CsvRows("input", path)
    try:
        where.check_header()
        with pd.read_csv(path, chunksize=rows, **READ_CSV) as reader:
            for chunk in reader:
                where.check(chunk)
                yield chunk
    except UnicodeDecodeError:
        raise not_utf8(where, path) from None
    except (OSError, ValueError) as err:  # ValueError: pandas' ParserError, EmptyDataError
        raise UserInputError(f"{where}: not a readable CSV file ({err})") from err


def numbered(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with an index that numbers its rows as errors name them: a chunk's RangeIndex (its rows' places in
    the file) is kept; any other index becomes 0, 1, 2..."""
    return frame if isinstance(frame.index, pd.RangeIndex) and frame.index.step == 1 else frame.reset_index(drop=True)


def refuse_repeated(names: list[str], where) -> None:
    """A header naming a column twice is refused: pandas renames the second "a" to "a.1" without a word, and the
    model would read the first. (Empty names are pandas' "Unnamed: 3", each its own.)"""
    if twice := sorted({name for name in names if name and names.count(name) > 1}):
        raise UserInputError(f"{where}: the header (row 1) names column(s) {twice} twice; give every column its own "
                             "name")


class CsvRows:
    """Where errors about a CSV file's rows happen: str() names the file ("data.path=F", "input=F"), name(r) its row
    r (from 0, after the header) as `row r+1 (line L)`. L, the line the row starts on, is found by reading the file
    with the csv module up to that row, only when an error is named: a quoted value may span lines, and blank lines
    are no rows. check(frame) refuses the rows pandas reads without a word but not as written."""

    def __init__(self, key: str, path: Path) -> None:
        self.key, self.path = key, path
        self._records, self._row, self._width = None, -2, None  # check()'s reader, where the last check left it

    def __str__(self) -> str:
        return f"{self.key}={self.path}"

    def records(self) -> Iterator[tuple[int, int, list[str]]]:
        """(row, line, fields) of the header (row -1) and of every row, as pandas counts rows: a blank line, or one
        of spaces and tabs, is none. `line` is where the row starts. Ends early on a value beyond the csv module's field
        size limit (pandas has none)."""
        try:
            with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as f:
                reader, row, start = csv.reader(f, skipinitialspace=True), -1, 1
                for fields in reader:
                    if len(fields) > 1 or fields and fields[0].strip(" \t"):  # not blank
                        yield row, start, fields
                        row += 1
                    start = reader.line_num + 1
        except (OSError, csv.Error):
            return

    def check_header(self) -> None:
        """The header's names, as pandas reads them (stripped of the spaces after each comma): none twice."""
        header = next((fields for _, _, fields in self.records()), [])
        refuse_repeated([name.strip() for name in header], self)

    def name(self, row: int) -> str:
        line = next((line for r, line, _ in self.records() if r == row), None)
        return f"row {row + 1}" if line is None else f"row {row + 1} (line {line})"

    def check(self, frame: pd.DataFrame) -> None:
        """A UserInputError for the first row of `frame` (the whole table, or one chunk of it as read_csv_rows reads
        them, in order) that does not have the header's number of fields. pandas reads such rows without a word:
        a row cut short (an interrupted copy) is padded with missing values, and rows with one field more than
        the header (each line's trailing separator, or a header one name short) make the first column the rows'
        index, every value one column to the left. Only a row whose last value is missing can be short: the file
        is read again, with the csv module, only when there is such a row."""
        if not isinstance(frame.index, pd.RangeIndex):
            self._refuse(lambda fields, width: len(fields) > width, "a separator too many (one at the end of each "
                         "line?), or a name missing from the header", start=0, stop=None)
            raise UserInputError(f"{self}: its rows have more fields than the header (row 1) has names, and pandas "
                                 "would take the first as the rows' names; give every column a name in the header")
        if not frame.empty and (suspects := np.flatnonzero(frame.iloc[:, -1].isna().to_numpy())).size:
            first = frame.index.start
            self._refuse(lambda fields, width: len(fields) < width, "a line cut short (an interrupted copy?), or a "
                         "separator missing", first + suspects[0], first + suspects[-1])

    def _refuse(self, wrong, why: str, start: int, stop: int | None) -> None:
        if self._records is None or self._row >= start:
            self._records, self._row = self.records(), -2
        for row, line, fields in self._records:
            self._row = row
            if row == -1:
                self._width = len(fields)
            elif row >= start and wrong(fields, self._width):
                fields = f"{len(fields)} field" + "s" * (len(fields) != 1)
                raise UserInputError(f"{self}, row {row + 1} (line {line}) has {fields} where the header (row 1) "
                                     f"has {self._width}: {why}; fix or delete that row")
            if row == stop:
                return


def row_name(where, row: int) -> str:
    """Row `row` (from 0) of a table, for errors: a CsvRows knows its line; a frame from elsewhere has a header line."""
    return where.name(row) if isinstance(where, CsvRows) else f"row {row + 1} (line {row + 2})"


def parse(column: pd.Series, parser, where, name: str, problem: str, fix: str) -> pd.Series:
    """`parser(column)`, or a UserInputError naming the first present value that it cannot parse by its row (from the
    column's RangeIndex start, a chunk's first row in its file) and line (row_name)."""
    parsed = parser(column)
    if bad := np.flatnonzero(column.notna().to_numpy() & parsed.isna().to_numpy()).tolist():
        row = bad[0] + (column.index.start if isinstance(column.index, pd.RangeIndex) else 0)
        raise UserInputError(f"{where}, column {name!r}, {row_name(where, row)}: {column.iloc[bad[0]]!r} "
                             f"{problem}; {fix}")
    return parsed


FLOAT32_PROBLEM = "is not a finite number within float32's ±3.4e38"  # what to_finite refuses


def to_finite(column: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    with np.errstate(over="ignore"):  # the network reads float32: 1e39 would become inf there
        finite = np.isfinite(numbers.to_numpy(np.float64).astype(np.float32))
    return numbers.where(finite)  # "inf" or "1e39" is no more usable than "abc"


def date_format(column: pd.Series, sample: int = 10_000) -> str | None:
    """The column's strptime format (`%d/%m/%Y %H:%M` for 13/02/2016 10:00), or None when it has no dates or pandas
    cannot guess one: the guess from its first date, month first or day first, whichever reads more of its first
    `sample` dates (01/02 alone could be either). Fitted on the training file and kept, so that every later read
    parses as it did: pandas otherwise guesses from each read's first value, and a file (or a chunk of one) starting
    with 01/02/2016 would read every date month first where training read them day first, changing each weekday
    without a word."""
    dates = column.dropna().astype(str).iloc[:sample]
    if dates.empty:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Parsing dates in %Y-%m-%d format when dayfirst=True..."
        guesses = dict.fromkeys(guess_datetime_format(dates.iloc[0], dayfirst=first) for first in (False, True))
    read = {written: to_datetime(dates, written).notna().sum() for written in guesses if written is not None}
    return max(read, key=read.get) if read else None  # a tie: month first, pandas' default


UTC_OFFSET = r"\s*(?:Z|[+-]\d{2}:?\d{2})$"  # 2016-03-27T00:53:11+01:00, ...Z, ... +0100


def to_datetime(column: pd.Series, format: str | None) -> pd.Series:
    """Date-times in `format` (None: a column without dates) as naive local times: each value's hour and weekday
    are those written, whatever its UTC offset (a format with %z reads the value without it: offsets differ across
    a daylight-saving change, and pandas refuses to mix them). A value in another format is NaT."""
    if format and "%z" in format:
        written = column.astype(str).str.replace(UTC_OFFSET, "", regex=True)
        column, format = written.where(column.notna()), format.replace("%z", "").strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pd.to_datetime(column, errors="coerce", format=format)
