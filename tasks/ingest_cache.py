"""Never read a document twice: what ingest made of a file, kept under its content hash.

An entry holds what reading a file's bytes gave — its pages, cl100k count and notes, or why it
cannot be read — keyed by the file's sha256, its kind (from the suffix), the PDF mode and the
extractor's version (`extractor_version`: PDFium, pypdf and longbatch's own ingest rules). A
renamed or moved file hits the same entry; a changed file, a library upgrade or the other PDF
mode misses it. Entries live under the data dir (`cache/ingest/`) as JSON files.

Entries are written atomically (two processes writing the same entry both leave a whole file:
the last rename wins) but not fsynced: a cache entry lost in a power cut is simply read again,
and one that does not parse or does not match its key is ignored and rewritten. `prune` keeps
the cache under a size by removing the entries used least recently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from longbatch.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

# Bump when ingest's own rules change what a file reads as (cleaning, checks, notes).
INGEST_RULES_VERSION = 1
CACHE_MAX_BYTES = 2 * 1024**3
CACHE_SUBDIR = "ingest"


@dataclass(frozen=True)
class Extract:
    """What a file's bytes read as, whatever its name: enough to rebuild its `Document`."""
    kind: str
    pages: tuple[str, ...]
    cl100k: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """Why a file's bytes cannot be read (the same bytes are refused the same way next time)."""
    category: str
    reason: str


@lru_cache(maxsize=1)
def extractor_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import pypdfium2

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    return (f"rules {INGEST_RULES_VERSION}; pypdfium2 {installed('pypdfium2')} (pdfium {pypdfium2.PDFIUM_INFO}); "
            f"pypdf {installed('pypdf')}; charset-normalizer {installed('charset-normalizer')}; cl100k_base")


class IngestCache:
    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / CACHE_SUBDIR

    def path_for(self, sha256: str, kind: str, mode: str) -> Path:
        key = self._key(sha256, kind, mode)
        return self.root / sha256[:2] / f"{sha256}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def get(self, sha256: str, kind: str, mode: str) -> Extract | Refusal | None:
        path = self.path_for(sha256, kind, mode)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            found = _decode(json.loads(raw), self._key(sha256, kind, mode))
        except (ValueError, KeyError, TypeError) as exc:  # damaged or foreign: read the file again
            log.info("ignoring damaged ingest cache entry %s (%s)", path.name, exc)
            return None
        try:
            os.utime(path)  # recently used: the last to be pruned
        except OSError:
            pass
        return found

    def put(self, sha256: str, kind: str, mode: str, found: Extract | Refusal) -> None:
        entry: dict = {"key": self._key(sha256, kind, mode)}
        if isinstance(found, Refusal):
            entry["refusal"] = {"category": found.category, "reason": found.reason}
        else:
            entry.update(kind=found.kind, pages=list(found.pages), cl100k=found.cl100k, notes=list(found.notes),
                         chars=sum(map(len, found.pages)))
        try:
            atomic_write_bytes(self.path_for(sha256, kind, mode),
                               json.dumps(entry, ensure_ascii=False).encode("utf-8"), durable=False)
        except OSError as exc:  # a cache that cannot be written only costs speed
            log.warning("cannot write the ingest cache in %s: %s", self.root, exc)

    def prune(self, max_bytes: int = CACHE_MAX_BYTES) -> int:
        """Remove the least recently used entries until the cache holds at most `max_bytes`;
        returns how many were removed."""
        entries = []
        for path in self.root.glob("*/*.json"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    @staticmethod
    def _key(sha256: str, kind: str, mode: str) -> str:
        return f"{sha256}|{kind}|{mode}|{extractor_version()}"


def _decode(entry: dict, key: str) -> Extract | Refusal:
    if entry["key"] != key:
        raise ValueError("the entry is for another key")
    if "refusal" in entry:
        refusal = entry["refusal"]
        if not (isinstance(refusal["category"], str) and isinstance(refusal["reason"], str)):
            raise TypeError("refusal fields are not text")
        return Refusal(refusal["category"], refusal["reason"])
    pages, notes = entry["pages"], entry["notes"]
    if not (isinstance(pages, list) and all(isinstance(p, str) for p in pages) and pages
            and isinstance(notes, list) and all(isinstance(n, str) for n in notes)
            and isinstance(entry["cl100k"], int) and entry["cl100k"] >= 0 and isinstance(entry["kind"], str)):
        raise TypeError("fields of the wrong type")
    if sum(map(len, pages)) != entry["chars"]:
        raise ValueError("the text is not the length recorded")
    return Extract(entry["kind"], tuple(pages), entry["cl100k"], tuple(notes))
