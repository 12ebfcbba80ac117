"""2-D .npy files larger than memory: written a chunk at a time, read back by rows with positioned reads.

data/criteo.py converts Criteo's text into such files once and streams its batches from them. Positioned reads
(os.preadv) rather than memmaps: the pages read stay in the OS page cache, which the kernel reclaims as it likes,
instead of counting in this process's resident memory as every memmapped page ever touched does.
"""
import os
from pathlib import Path

import numpy as np

from data import UserInputError


class NpyWriter:
    """A 2-D .npy file written a chunk at a time; the header gets the final row count at the end (numpy leaves
    room in the header for the first dimension to grow to 21 digits in place)."""

    def __init__(self, path: Path, dtype, width: int) -> None:
        self.file, self.dtype, self.width, self.rows = open(path, "wb"), np.dtype(dtype), width, 0
        self.data_start = self._header()

    def _header(self) -> int:
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": (self.rows, self.width)})
        return self.file.tell()

    def append(self, array: np.ndarray) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(np.ascontiguousarray(array, self.dtype).tobytes())
        self.rows += len(array)

    def finish(self) -> None:
        assert self._header() == self.data_start, "the .npy header changed size"

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


class NpyRows:
    """The rows of a 2-D .npy file, read on demand with os.preadv into fresh arrays (nothing stays mapped)."""

    def __init__(self, path: Path) -> None:
        try:  # a file deleted or overwritten since the cache was made
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                self.shape, fortran_order, self.dtype = read_header(f)
                self.data_start = f.tell()
        except FileNotFoundError:
            raise UserInputError(f"{path} is missing; delete its folder to rebuild it") from None
        except Exception as err:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, ...
            why = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
            raise UserInputError(f"{path} is not a readable .npy file ({why}); delete its folder to rebuild "
                                 "it") from None
        if len(self.shape) != 2 or fortran_order:
            raise UserInputError(f"{path} holds no C-ordered 2-D array; delete its folder to rebuild it")
        self.path, self.row_bytes = path, self.dtype.itemsize * self.shape[1]
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 as an array of their own."""
        return self.read_blocks(np.array([start]), stop - start, stop)

    def read_blocks(self, starts: np.ndarray, length: int, stop: int) -> np.ndarray:
        """The rows of blocks [s, min(s + length, stop)) for each s in `starts`, concatenated."""
        ends = np.minimum(starts + length, stop)
        out = np.empty((int((ends - starts).sum()), self.shape[1]), self.dtype)
        view, row = memoryview(out.reshape(-1).view(np.uint8)), 0
        for start, end in zip(starts.tolist(), ends.tolist()):
            done, want, offset = 0, (end - start) * self.row_bytes, self.data_start + start * self.row_bytes
            while done < want:  # a read may return less than asked (Linux: at most ~2 GiB per call)
                got = os.preadv(self.fd, [view[row * self.row_bytes + done:][:want - done]], offset + done)
                if got == 0:
                    raise UserInputError(f"{self.path} is shorter than its header says; "
                                         "delete its folder to rebuild it")
                done += got
            row += end - start
        return out

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)

    def __getstate__(self) -> dict:  # a DataModule copied to a worker or rank reopens the file there
        return {k: v for k, v in self.__dict__.items() if k != "fd"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fd = os.open(self.path, os.O_RDONLY)
