"""Stage 1 — documents: find files in the inbox and turn each into text, or a readable failure.

Every file found ends as a `Document` or an `IngestFailure`; nothing raises out of
`read_document` for bad input, so one broken file never stops a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from longbatch.errors import Unreadable
from longbatch.fsutil import slugify
from longbatch.tokens import cl100k_count
from tasks.extract import decode_text, pdf_pages
from tasks.ingest_cache import Extract, IngestCache, Refusal

log = logging.getLogger(__name__)

PDF_SUFFIXES = {".pdf"}
TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TEXT_SUFFIXES | MARKDOWN_SUFFIXES

# Larger files are refused before reading: nothing this size fits a 1M-token window as text.
MAX_FILE_BYTES = 512 * 1024 * 1024
# Text files smaller than this are not cached (see _cache).
CACHE_MIN_TEXT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable: a slug of the path plus the content hash
    source: str  # path relative to the inbox, for display only (never used to write)
    kind: str  # pdf | text | markdown
    sha256: str
    size_bytes: int
    pages: tuple[str, ...]  # PDF: one entry per page; text: a single entry
    body: str  # the text as sent to the model (page markers included)
    body_cl100k: int  # cl100k tokens of `body`, counted once here
    notes: tuple[str, ...] = field(default=())  # things handled that the user should know
    location: str = ""  # the file's absolute path, for native PDF mode (which sends the file itself)

    @property
    def page_count(self) -> int | None:
        return len(self.pages) if self.kind == "pdf" else None

    @property
    def chars(self) -> int:
        return len(self.body)


@dataclass(frozen=True)
class IngestFailure:
    doc_id: str
    source: str
    sha256: str
    size_bytes: int
    # encrypted | corrupt | unsupported | no_text | empty | encoding | too_large | unreadable |
    # not_a_regular_file | link_outside_inbox | link_to_folder | broken_link
    category: str
    reason: str


def discover(inbox: Path, follow_links: bool = False) -> list[Path]:
    """Every visible entry below the inbox, in a stable order. Unsupported types, FIFOs,
    sockets, broken links and links to folders are kept so that they end with a recorded
    reason (`entry_problem`) rather than silently vanishing. Folders reached through a link are
    walked only with `follow_links`, each real folder once (a link back up is not a loop)."""
    if not inbox.is_dir():
        return []
    found = []
    walked = {os.path.realpath(inbox)}
    for top, dirs, files in os.walk(inbox, followlinks=follow_links):
        kept = []
        for name in sorted(dirs):
            path = os.path.join(top, name)
            if name.startswith("."):
                continue
            if os.path.islink(path):
                real = os.path.realpath(path)
                if not follow_links or real in walked:
                    found.append(Path(path))  # a row saying why it was not read
                    continue
                walked.add(real)
            kept.append(name)
        dirs[:] = kept
        found += [Path(top, name) for name in files if not name.startswith(".")]
    return sorted(found)


def display_name(rel: str) -> str:
    """A path as shown and sent: valid UTF-8 on one line. Bytes that are not UTF-8 become
    `\\xff`, control characters `\\r`, `\\n`, `\\t` or `\\x1b` (a name may hold any of them)."""
    text = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def find_source(inbox: Path, source: str) -> Path:
    """The inbox entry a `Document.source` names (names that needed escaping are looked up)."""
    direct = inbox / source
    if os.path.lexists(direct):
        return direct
    return next((p for p in discover(inbox) if display_name(p.relative_to(inbox).as_posix()) == source), direct)


class RealPaths:
    """Real paths of one inbox's entries, for a caller that checks many of them at once: each
    folder's realpath is taken once and kept with the folder's identity (device, inode), which
    is checked again for every entry: a folder replaced by a link meanwhile is resolved afresh.
    An entry that is not itself a link costs an lstat and a stat (10,000 small files: ~1 s less
    than a realpath each, which lstats every component)."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = os.path.realpath(inbox)
        self._inside = self.inbox if self.inbox.endswith(os.sep) else self.inbox + os.sep
        self._folders: dict[str, tuple[str, tuple[int, int]]] = {}  # real, identity

    def of(self, path: Path | str) -> str:
        """os.path.realpath(path)."""
        folder, name = os.path.split(path)
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
            here = os.stat(folder or ".")  # follows every link on the way, as opening the entry does
        except OSError:
            is_link = True  # gone: let realpath say what it can
        if is_link or name in ("", ".", ".."):
            return os.path.realpath(path)
        identity = (here.st_dev, here.st_ino)
        real, known = self._folders.get(folder, (None, None))
        if real is None or known != identity:
            real = os.path.realpath(folder)
            self._folders[folder] = (real, identity)
        return os.path.join(real, name)

    def inside(self, real: str) -> bool:
        """Whether a real path is the inbox or below it."""
        return real == self.inbox or real.startswith(self._inside)


def entry_problem(path: Path, inbox: Path, follow_links: bool = False,
                  real_paths: RealPaths | None = None) -> tuple[str, str] | None:
    """Why an inbox entry is not read as a document, as (category, reason); None for a regular
    file inside the inbox. Only what is in the inbox is read: a link that leads out of it is
    refused unless `follow_links`. Nothing is opened here, so a FIFO cannot block the run.
    `real_paths`: the inbox's, when the caller checks many entries of it."""
    try:
        st = os.stat(path)
    except OSError:
        if os.path.islink(path):
            return "broken_link", f"a link to {display_name(os.readlink(path))}, which does not exist"
        return None  # gone or unreadable: read_document says so
    real_paths = real_paths or RealPaths(inbox)
    real = real_paths.of(path)
    if not real_paths.inside(real) and not follow_links:
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        return ("link_outside_inbox", f"a link to a {kind} outside the inbox ({display_name(real)}); not followed: "
                "put the document itself in the inbox, or pass --follow-links to read what links point to")
    if stat.S_ISDIR(st.st_mode):
        return ("link_to_folder", "a link to a folder already read (or to one of its parents); not followed again"
                if follow_links else "a link to a folder; not followed: pass --follow-links to read folders "
                "that links point to")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        return "not_a_regular_file", f"{kind}, not a regular file; not read"
    return None


def make_doc_id(rel: str, sha256: str) -> str:
    return f"{slugify(rel.rsplit('.', 1)[0], 32)}-{sha256[:12]}"


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    return "text" if suffix in TEXT_SUFFIXES else None


def read_document(path: Path, inbox: Path, native_pdf: bool = False, cache_dir: Path | None = None,
                  follow_links: bool = False, real_paths: RealPaths | None = None) -> Document | IngestFailure:
    """`native_pdf`: the PDF itself will be sent (native mode), so a scan without a text layer
    is readable: the model sees the page images. `cache_dir`: what was read is kept there by
    content hash (tasks/ingest_cache.py), and an unchanged file is not read again.
    `follow_links`, `real_paths`: see `entry_problem`."""
    rel = display_name(path.relative_to(inbox).as_posix())
    real_paths = real_paths or RealPaths(inbox)
    problem = entry_problem(path, inbox, follow_links, real_paths)
    if problem:
        return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, *problem)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _too_large(rel, size)
        data = path.read_bytes()
    except OSError as exc:
        return _cannot_read(rel, exc)
    sha = hashlib.sha256(data).hexdigest()
    kind = kind_of(path)
    if kind is None:
        return _unsupported(path, rel, sha, len(data))
    cache = _cache(cache_dir, kind, len(data))
    mode = _mode(kind, native_pdf)
    found = cache.get(sha, kind, mode) if cache else None
    if found is None:
        found = _extract(data, kind, native_pdf)
        if cache:
            cache.put(sha, kind, mode, found)
    return _assemble(real_paths.of(path), rel, sha, len(data), found)


def cached_sha256(path: Path, native_pdf: bool, cache_dir: Path | None) -> str | None:
    """The file's sha256 when the cache holds what it reads as (so reading it costs no
    extraction); None when it must be read (or is refused without reading: too large, gone)."""
    kind = kind_of(path)
    try:
        size = path.stat().st_size
        cache = _cache(cache_dir, kind, size) if kind and size <= MAX_FILE_BYTES else None
        if cache is None:
            return None
        with path.open("rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None
    return sha if cache.path_for(sha, kind, _mode(kind, native_pdf)).is_file() else None


def read_cached(path: Path, inbox: Path, sha256: str, native_pdf: bool, cache_dir: Path | None,
                real_paths: RealPaths | None = None) -> Document | IngestFailure | None:
    """The document with content `sha256` at `path`, from the cache; None if it is not there."""
    kind = kind_of(path)
    if cache_dir is None or kind is None:
        return None
    found = IngestCache(cache_dir).get(sha256, kind, _mode(kind, native_pdf))
    if found is None:
        return None
    rel = display_name(path.relative_to(inbox).as_posix())
    try:
        size = path.stat().st_size
    except OSError as exc:
        return _cannot_read(rel, exc)
    return _assemble((real_paths or RealPaths(inbox)).of(path), rel, sha256, size, found)


def _cache(cache_dir: Path | None, kind: str, size: int) -> IngestCache | None:
    # A small text file decodes faster than its cache entry is written and read back.
    if cache_dir is None or (kind != "pdf" and size < CACHE_MIN_TEXT_BYTES):
        return None
    return IngestCache(cache_dir)


def _mode(kind: str, native_pdf: bool) -> str:
    return "native" if native_pdf and kind == "pdf" else "text"


def _extract(data: bytes, kind: str, native_pdf: bool) -> Extract | Refusal:
    try:
        if kind == "pdf":
            pages, notes = pdf_pages(data, native_pdf)
            body = _pdf_body(pages)
        else:
            text, notes = decode_text(data)
            pages, body = [text], text
    except Unreadable as exc:
        return Refusal(exc.category, exc.reason)
    return Extract(kind, tuple(pages), cl100k_count(body), tuple(notes))


def _assemble(real: str, rel: str, sha: str, size: int, found: Extract | Refusal) -> Document | IngestFailure:
    doc_id = make_doc_id(rel, sha)
    if isinstance(found, Refusal):
        return IngestFailure(doc_id, rel, sha, size, found.category, found.reason)
    body = _pdf_body(found.pages) if found.kind == "pdf" else found.pages[0]
    return Document(doc_id, rel, found.kind, sha, size, found.pages, body, found.cl100k, found.notes, real)


def _pdf_body(pages) -> str:
    return "\n\n".join(f"--- Page {i} ---\n{text}" for i, text in enumerate(pages, 1))


def _too_large(rel: str, size: int) -> IngestFailure:
    return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", size, "too_large",
                         f"file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")


def _cannot_read(rel: str, exc: OSError) -> IngestFailure:
    return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, "unreadable", f"cannot read file: {exc.strerror}")


def _unsupported(path: Path, rel: str, sha: str, size: int) -> IngestFailure:
    return IngestFailure(make_doc_id(rel, sha), rel, sha, size, "unsupported",
                         f"unsupported file type {path.suffix or '(none)'!r}; longbatch reads .pdf, .txt and .md")
