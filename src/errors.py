"""User-facing errors: one clear line, a non-zero exit, no traceback.

Code that validates user input (files, schemas, configs, checkpoints) raises `UserError` with a message that
names the file or field and what was expected. Entry scripts wrap `main` with `run_main`, which prints
`ERROR: <message>` on stderr and exits with status 2. Anything else is a bug and keeps its traceback.
"""
import sys


class UserError(Exception):
    """Bad input from the user: the message alone must tell them what to fix."""


def run_main(main, argv=None):
    try:
        return main(argv)
    except UserError as e:
        if not getattr(e, "reported", False):       # a child process has already printed its error
            print(f"ERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "returncode", 2))
