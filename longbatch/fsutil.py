"""Atomic file writes and safe names: nothing half-written, nothing named by the inbox escapes."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part.
    `durable=False` skips the fsync, for files that may be lost in a power cut but must never
    be seen half-written (a cache that checks what it reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def sync_filesystem(path: Path) -> None:
    """Make everything written under `path`'s filesystem durable: one syncfs(2) instead of an
    fsync per file, for many files written with `durable=False` that must be on disk before
    something else is recorded. Elsewhere than Linux: sync(2)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


_NOT_SAFE = re.compile(r"[^a-z0-9]+")


def slugify(name: str, max_len: int = 40) -> str:
    """A lowercase ASCII slug of letters, digits and single dashes; never empty, never a path."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _NOT_SAFE.sub("-", ascii_name.lower()).strip("-")[:max_len].strip("-")
    return slug or "doc"


def csv_text(frame: Any) -> str:
    """A pandas frame as CSV that every reader splits into the same rows. pandas (through
    Python's csv writer) quotes a field holding "\\n" but not one holding a bare "\\r", which
    most readers take as a line end: such line breaks are written as "\\n"."""
    def one_kind(value: Any) -> Any:
        return value.replace("\r\n", "\n").replace("\r", "\n") if isinstance(value, str) else value

    import pandas as pd

    clean = frame.copy()
    for column in clean.columns:  # text columns are `object` or, in pandas 3, `str`
        if not pd.api.types.is_numeric_dtype(clean[column]):
            clean[column] = clean[column].map(one_kind)
    return clean.to_csv(index=False)
