"""What `vdt` and `vdt-export` share: the CLIs' error contract (one `error: ...` line per typed error, exit codes)."""
from __future__ import annotations

import os
import sys
import warnings

from vdt_runtime.errors import VDTError


def run_guarded(command, expected: tuple[type[BaseException], ...] = (VDTError,)) -> int:
    """Run a CLI command under the CLIs' error contract (`vdt` and `vdt-export`): an `expected` (typed) error
    prints one `error: ...` line and returns 2; Ctrl-C returns 130; anything else is a bug, printed as one
    `error: internal error ...` line with status 1, or re-raised with its traceback when VDT_TRACEBACK=1.
    Warnings print as one `warning: ...` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, cat, *a, **k: print(f"warning: {one_line(msg)}", file=sys.stderr)
        try:
            return command()
        except expected as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if os.environ.get("VDT_TRACEBACK") == "1":
                raise
            print(f"error: internal error ({type(e).__name__}): {one_line(e)} -- please report this with the "
                  "command that caused it (VDT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
            return 1


def one_line(message, limit: int = 1000) -> str:
    """A message on one line, at most `limit` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit] + "..."
