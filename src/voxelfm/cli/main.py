"""Entry point of the ``voxelfm`` command.

Each subcommand lives in its own module ``voxelfm.cli.<name>`` exposing::

    HELP: str                                   # one line for ``voxelfm --help``
    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int    # exit code

Subcommand modules import heavy libraries (torch, SimpleITK, transformers) inside ``run`` so that
``voxelfm --help`` stays fast. Errors a user can cause (:class:`voxelfm.errors.VoxelFMError`,
ValueError, FileNotFoundError, ...) are printed as one line and give exit code 2; set
``VOXELFM_DEBUG=1`` to see the traceback instead. Warnings print as one line each
(``voxelfm <cmd>: warning: ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence

__all__ = ["main", "build_parser"]

# Order shown in --help: the pipeline, left to right.
SUBCOMMANDS: tuple[str, ...] = (
    "phantoms", "datasets", "info", "extract", "prepare", "pretrain", "export", "probe", "compare", "benchmark",
    "report", "demo",
)


def _available() -> list[str]:
    return [n for n in SUBCOMMANDS if importlib.util.find_spec(f"voxelfm.cli.{n}") is not None]


def build_parser() -> argparse.ArgumentParser:
    from voxelfm import __version__

    parser = argparse.ArgumentParser(
        prog="voxelfm",
        description="3D CT foundation models: read CT, extract embeddings, pre-train, probe, report. "
                    "Research software, not for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"voxelfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available():
        mod = importlib.import_module(f"voxelfm.cli.{name}")
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from voxelfm.errors import VoxelFMError

    return (VoxelFMError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, KeyError)


@contextlib.contextmanager
def _one_line_warnings(prefix: str) -> Iterator[None]:
    """Print warnings as ``<prefix>: warning: <text>`` on one line (no source file and code line);
    also in worker processes forked meanwhile."""
    import warnings

    def fmt(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings API
        return f"{prefix}: warning: {' '.join(str(message).split())}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``voxelfm`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 1
    try:
        with _one_line_warnings(f"voxelfm {args.command}"):
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("voxelfm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        return 0
    except _user_error_types() as exc:  # one clear line, never a traceback
        if os.environ.get("VOXELFM_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            msg = str(exc.args[0]) if exc.args else "missing key"
        print(f"voxelfm {args.command}: error: {msg}", file=sys.stderr)
        return 2
