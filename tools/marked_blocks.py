"""Generated blocks in markdown files: a script replaces the text between a start and an end marker, nobody edits it
by hand. Benchmark and result blocks use `<!-- bench:NAME:start -->` / `<!-- bench:NAME:end -->`; the measured ones
live in docs/results.md (RESULTS). Every write is atomic (src/fileio.py).

Tools and benchmarks both write blocks through this module (benchmarks may import tools; tools never import
benchmarks).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.errors import UserError  # noqa: E402
from src.fileio import atomic_text  # noqa: E402

RESULTS = "docs/results.md"          # the file the measured blocks are written into


def add_results_arg(p, default: str = "", what: str = "the tables"):
    """--results FILE.md (old name --readme): where a script writes its blocks."""
    p.add_argument("--results", "--readme", dest="results", default=default, metavar="FILE.md",
                   help=f"write {what} into this markdown file between their bench markers"
                        f"{'' if default else ' (default: print only)'}")


def bench_markers(name: str):
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def replace_block(old: str, start: str, end: str, text: str, append: bool = True) -> str:
    """`old` with the text between `start` and `end` replaced by `text` (markers kept, one line each). When the
    markers are missing (or out of order): the marked block appended at the end if `append`, else None."""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old and old.index(start) < old.index(end):
        return old[:old.index(start)] + block + old[old.index(end) + len(end):]
    if not append:
        return None
    return old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"


def write_block(path: str, name: str, text: str) -> str:
    """Replace the `bench:NAME` block of `path` by `text`; a file or block not there yet is created / appended."""
    start, end = bench_markers(name)
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    return atomic_text(path, replace_block(old, start, end, text))


def write_between(path: str, start: str, end: str, text: str) -> str:
    """Replace the text between `start` and `end` in the existing file `path`; UserError (nothing written) when the
    file or either marker is missing."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (it should hold the markers {start} / {end})")
    new = replace_block(open(path, encoding="utf-8").read(), start, end, text, append=False)
    if new is None:
        raise UserError(f"{path}: markers {start} / {end} not found")
    return atomic_text(path, new)
