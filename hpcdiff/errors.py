"""Exceptions that carry where the problem is (file, line or dataset) and what was expected."""

from __future__ import annotations

import functools
from pathlib import Path


class HpcdiffError(Exception):
    """Base class of every error hpcdiff raises on purpose; the CLI prints these without a traceback."""


class FormatError(HpcdiffError, ValueError):
    """A file does not hold what its format requires.

    Parameters
    ----------
    path
        The file that is wrong.
    message
        What was found and what was expected.
    line
        1-based line number for text formats (geometry, stream, job files).
    dataset
        HDF5 dataset path for HDF5 files.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        dataset: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.dataset = dataset
        self.message = message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if dataset is not None:
            where += f", dataset {dataset}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        # picklable across processes and MPI ranks (keyword-only arguments need this)
        rebuild = functools.partial(type(self), line=self.line, dataset=self.dataset)
        return rebuild, (self.path, self.message)


class ConfigError(HpcdiffError, ValueError):
    """A job file is invalid: names the file, the key and the valid choices."""


class OutputExistsError(HpcdiffError, FileExistsError):
    """An output exists already and ``--force`` was not given."""


class OutputError(HpcdiffError, OSError):
    """An output cannot be written (read-only or unwritable folder, full disk, quota).

    Parameters
    ----------
    path
        The file or folder that could not be written.
    message
        What happened and what to do.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"cannot write {self.path}: {message}")

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.message}"
