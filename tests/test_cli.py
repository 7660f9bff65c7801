"""Command-line help: every script's --help prints its module docstring, description above the options and the
rest (usage, notes) below them, line breaks as written."""
import ast
import glob
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

from src.cli import doc_parser  # noqa: E402

ROOT = tiny_run.ROOT
DOC = """First line of the description,
second line.

Usage:
    python tool.py --x 1

A note."""


def test_doc_parser_puts_the_first_paragraph_above_the_options_and_the_rest_below():
    p = doc_parser(DOC)
    p.add_argument("--x", type=int, help="the x")
    text = p.format_help()
    head, options, tail = text.index("First line"), text.index("  --x X  "), text.index("Usage:")
    assert head < options < tail
    assert "First line of the description,\nsecond line.\n" in text
    assert "Usage:\n    python tool.py --x 1\n\nA note." in text
    assert doc_parser("Only a description.").epilog is None


def scripts():
    return sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "tools", "*.py"))
                  + glob.glob(os.path.join(ROOT, "benchmarks", "**", "*.py"), recursive=True))


def test_no_script_builds_its_own_argument_parser():
    """A parser built by hand shows whatever description it was given and drops the docstring's usage."""
    own = []
    for path in scripts():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "ArgumentParser":
                own.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not own, own


def test_prepare_data_help_ends_with_its_docstring():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_data.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import prepare_data
    last = prepare_data.__doc__.strip().split("\n\n")[-1]
    assert res.stdout.rstrip().endswith(last)
    assert res.stdout.index("Sources:") > res.stdout.index("--output_dir")
