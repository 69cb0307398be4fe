"""The ``hpcdiff`` command: the only place that exits the process.

Each subcommand lives in its own module of this package and defines
``register(subparsers) -> None``, which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit status).  Modules are
discovered, so adding a command never edits a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from hpcdiff import __version__
from hpcdiff.errors import HpcdiffError

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The full ``hpcdiff`` argument parser, with every subcommand module registered."""
    parser = argparse.ArgumentParser(
        prog="hpcdiff",
        description="Sort serial-crystallography diffraction frames by diffuse scattering.",
    )
    parser.add_argument("--version", action="version", version=f"hpcdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def _exit_now_after_failed_write(exc: BaseException) -> None:
    """After an unwritable/full output (one process), exit without HDF5's teardown.

    HDF5 tries again to flush a file whose write failed when the interpreter exits, and
    can crash there (exit 139 instead of 1); the error is reported already.  Under an MPI
    launcher the normal exit path (``MPI_Finalize``) is kept.
    """
    from hpcdiff.errors import OutputError
    from hpcdiff.parallel.mpi import launched_size

    if isinstance(exc, OutputError) and (launched_size() or 1) == 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpcdiff`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from hpcdiff.io.outputs import quiet_h5py_write_cleanup
    from hpcdiff.parallel.malloc_env import keep_batch_buffers
    from hpcdiff.parallel.omp_env import passive_omp_waits

    passive_omp_waits()  # before torch loads libgomp: its threads sleep, not spin, when idle
    keep_batch_buffers()  # batch-sized arrays reuse freed memory instead of fresh pages
    quiet_h5py_write_cleanup()  # a full disk is one line, not h5py's cleanup tracebacks
    try:
        status = args.func(args)
    except HpcdiffError as exc:
        print(f"hpcdiff {args.command}: error: {exc}", file=sys.stderr)
        _exit_now_after_failed_write(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"hpcdiff {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
