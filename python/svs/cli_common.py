"""What the ``svs`` subcommands share: the error for a user's mistake, the checks of an output path
made before any work, when to show progress, and the help that shows each option's default."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .options import RefineOptions


class UsageError(Exception):
    """A mistake in what the user typed, found by the command itself."""


def progress_default() -> bool:
    """Progress bars only on a terminal (not in logs or pipes)."""
    return sys.stderr.isatty()


def refine_options(args: Any) -> RefineOptions:
    """The options ``svs refine``'s arguments give (the same for a file and a directory)."""
    return RefineOptions(preset=args.preset, include=args.include, exclude=args.exclude, map=args.map,
                         method=args.method, certify=not args.no_certify, dry_run=args.dry_run,
                         progress=not args.quiet and progress_default())


def check_output(path: Path, force: bool, inputs: Sequence[str] = ()) -> None:
    """Refuses, before any work, an output that is an input, exists without ``force``, is a
    folder, or cannot be created."""
    for src in inputs:
        if path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise UsageError(f"refusing to overwrite the input {src}; choose another output")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: folder {folder} is not writable")


def resolve_output(path: Path) -> Path:
    """``path``, or what it names if it is a symlink, so that every check and the final rename act
    on the target (the link is kept and names the new output); a symlink to nothing is refused."""
    if not os.path.islink(path):
        return path
    if not path.exists():
        raise UsageError(f"output {path} is a symlink to {os.readlink(path)}, which does not exist; give a real path")
    return Path(os.path.realpath(path))


def check_report(report: Path, source: Path, output: "Path | None") -> None:
    """Refuses, before any work, a ``--report`` path that is the input or inside it (a model
    folder), or that is the output or inside it."""
    r = Path(os.path.realpath(resolve_output(report)))
    for what, other in (("input", source), ("output", output)):
        if other is None:
            continue
        o = Path(os.path.realpath(other))
        if r == o or o in r.parents:
            raise UsageError(f"--report {report} is {'inside ' if r != o else ''}the {what} {other}; choose another file")


def check_image(path: Path) -> None:
    """Refuses, before any work, an image path whose suffix matplotlib cannot write."""
    from .plots import check_image_path

    try:
        check_image_path(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (none shown for flags and options without one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in help or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)"
