"""Problems of the user's making or of the machine's, as the one line the CLI prints.

`explain(exc)` says what went wrong and what to do for bad values (pydantic), a full disk, a
read-only or missing place to write, and a damaged ledger; it returns None for anything else,
which is a bug and keeps its traceback. `check_data_dir` finds the common cases before anything
starts.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from longbatch.errors import ConfigError, LongbatchError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}


def check_data_dir(data_dir: Path, write: bool = True) -> None:
    """The data dir must be a folder, and with `write` one longbatch can write in (or create).
    Creates nothing."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is a file, not a folder: name a folder (it is created if missing).")
    if not write:
        return
    existing = next(p for p in (data_dir, *data_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--data-dir {data_dir} cannot be created: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"Cannot write in {existing} (read-only or no permission): longbatch keeps its ledger, "
                          f"results and reports in the data dir. Name another one with --data-dir.")


def explain(exc: BaseException) -> str | None:
    """The one-line message for a problem the user can act on, looking through the exception's
    causes (SQLAlchemy wraps sqlite3's errors; Prefect re-raises what a flow raised)."""
    seen = exc
    while seen is not None:
        message = _explain_one(seen)
        if message:
            return message
        seen = seen.__cause__ or seen.__context__
    return None


def _explain_one(exc: BaseException) -> str | None:
    import sqlite3

    from pydantic import ValidationError

    if isinstance(exc, LongbatchError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return "; ".join(_validation_line(e) for e in exc.errors())
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return (f"the disk is full ({exc.strerror}{_where(exc)}). Free some space and run the same command again: "
                "work already sent is recorded and is not sent twice.")
    if isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE:
        return (f"cannot write{_where(exc)}: {exc.strerror}. longbatch needs to write in its data dir; make it "
                "writable or name another with --data-dir.")
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc)
        if "disk is full" in text:
            return "the disk is full (the ledger could not be written). Free some space and run the same command again."
        if "disk I/O error" in text:  # what SQLite says when its shared-memory file cannot grow, among others
            return ("the ledger could not be written (disk I/O error): the disk is probably full, or failing. Free "
                    "some space and run the same command again.")
        if "readonly" in text or "unable to open" in text:
            return (f"cannot open the ledger ({text}): the data dir is read-only or not there (SQLite writes beside "
                    "the ledger even to read it). Make it writable, or copy it and name the copy with --data-dir.")
        if "not a database" in text or "malformed" in text:
            return (f"the ledger (ledger.sqlite in the data dir) is damaged: {text}. It records what was sent and paid "
                    "for: restore it from a backup. Moving it aside starts a new, empty ledger.")
    return None


def _where(exc: OSError) -> str:
    return f": {exc.filename}" if exc.filename else ""


def _validation_line(error: dict) -> str:
    """`--max-output-tokens: Input should be greater than or equal to 1 (got -5)`."""
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    flag = f"--{loc[-1].replace('_', '-')}: " if loc else ""
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    got = f" (got {error['input']!r})" if loc and "input" in error else ""
    return f"{flag}{message}{got}"
