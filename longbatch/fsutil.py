"""Atomic file writes and safe names: nothing half-written, nothing named by the inbox escapes."""

from __future__ import annotations

import itertools
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
    fd, tmp = _new_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:  # straight to the descriptor: no buffered file object to set up
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_temp_numbers = itertools.count()


def _new_temp(path: Path) -> tuple[int, str]:
    """A new, empty file beside `path`: `.<name>.<pid>-<n>.tmp`, created with O_EXCL, so it is
    never another writer's (a name left by a crash, or taken by another host sharing the folder,
    is skipped). No random names: this process's counter and its pid keep them apart. The
    folder is made only when it is missing (the first file written into it)."""
    folder, name = os.path.split(path)
    made = False
    for _ in range(tempfile.TMP_MAX):
        tmp = os.path.join(folder, f".{name}.{os.getpid()}-{next(_temp_numbers)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            if made:
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            made = True
    raise FileExistsError(f"no free temporary name beside {path}")


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
