"""Stage 1 — documents: find files in the inbox and turn each into text, or a readable failure.

Every file found ends as a `Document` or an `IngestFailure`; nothing raises out of
`read_document` for bad input, so one broken file never stops a run.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from longbatch.fsutil import slugify
from longbatch.tokens import cl100k_count

log = logging.getLogger(__name__)

PDF_SUFFIXES = {".pdf"}
TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TEXT_SUFFIXES | MARKDOWN_SUFFIXES

# Larger files are refused before reading: nothing this size fits a 1M-token window as text.
MAX_FILE_BYTES = 512 * 1024 * 1024
# A PDF averaging fewer extractable characters per page than this is taken as scanned.
MIN_CHARS_PER_PAGE = 40


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


class _Unreadable(Exception):
    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


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


def entry_problem(path: Path, inbox: Path, follow_links: bool = False) -> tuple[str, str] | None:
    """Why an inbox entry is not read as a document, as (category, reason); None for a regular
    file inside the inbox. Only what is in the inbox is read: a link that leads out of it is
    refused unless `follow_links`. Nothing is opened here, so a FIFO cannot block the run."""
    try:
        st = os.stat(path)
    except OSError:
        if os.path.islink(path):
            return "broken_link", f"a link to {display_name(os.readlink(path))}, which does not exist"
        return None  # gone or unreadable: read_document says so
    real = os.path.realpath(path)
    inside = Path(real).is_relative_to(os.path.realpath(inbox))
    if not inside and not follow_links:
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


def read_document(path: Path, inbox: Path, native_pdf: bool = False,
                  follow_links: bool = False) -> Document | IngestFailure:
    """`native_pdf`: the PDF itself will be sent (native mode), so a scan without a text layer
    is readable: the model sees the page images. `follow_links`: see `entry_problem`."""
    rel = display_name(path.relative_to(inbox).as_posix())
    problem = entry_problem(path, inbox, follow_links)
    if problem:
        return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, *problem)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _Unreadable("too_large", f"file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")
        data = path.read_bytes()
    except OSError as exc:
        return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", 0, "unreadable", f"cannot read file: {exc.strerror}")
    except _Unreadable as exc:
        return IngestFailure(make_doc_id(rel, "0" * 64), rel, "", size, exc.category, exc.reason)

    sha = hashlib.sha256(data).hexdigest()
    doc_id = make_doc_id(rel, sha)
    suffix = path.suffix.lower()
    try:
        if suffix in PDF_SUFFIXES:
            kind = "pdf"
            pages, notes = _pdf_pages(data, native_pdf)
            body = "\n\n".join(f"--- Page {i} ---\n{text}" for i, text in enumerate(pages, 1))
        elif suffix in TEXT_SUFFIXES | MARKDOWN_SUFFIXES:
            kind = "markdown" if suffix in MARKDOWN_SUFFIXES else "text"
            text, notes = _decode_text(data)
            pages, body = (text,), text
        else:
            raise _Unreadable(
                "unsupported", f"unsupported file type {path.suffix or '(none)'!r}; longbatch reads .pdf, .txt and .md"
            )
    except _Unreadable as exc:
        return IngestFailure(doc_id, rel, sha, len(data), exc.category, exc.reason)
    return Document(doc_id, rel, kind, sha, len(data), tuple(pages), body, cl100k_count(body), tuple(notes),
                    str(path.resolve()))


def _decode_text(data: bytes) -> tuple[str, list[str]]:
    if not data.strip():
        raise _Unreadable("empty", "the file is empty")
    notes: list[str] = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16")
        notes.append("decoded as UTF-16 (byte order mark)")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = _guess_decode(data)
            notes.append(f"not UTF-8; decoded as {text[1]}")
            text = text[0]
    if "\x00" in text:
        raise _Unreadable("encoding", "the file contains NUL bytes: it looks binary, not text")
    if not text.strip():
        raise _Unreadable("empty", "the file holds only white space")
    return text, notes


def _guess_decode(data: bytes) -> tuple[str, str]:
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 4 * 1024 * 1024]).best()
    if best is None or best.encoding is None:
        raise _Unreadable("encoding", "not UTF-8, and no text encoding could be recognised")
    try:
        return data.decode(best.encoding), best.encoding
    except (UnicodeDecodeError, LookupError):
        raise _Unreadable(
            "encoding", f"not UTF-8; looks like {best.encoding} but does not decode cleanly as it"
        ) from None


def _pdf_pages(data: bytes, images_are_read: bool = False) -> tuple[list[str], list[str]]:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    if not data.strip():
        raise _Unreadable("empty", "the file is empty")
    notes: list[str] = []
    # pypdf logs and warns at length about fonts and damaged objects it works around; the
    # outcome that matters is recorded per document below, so keep that noise off the console.
    pypdf_log = logging.getLogger("pypdf")
    old_level = pypdf_log.level
    pypdf_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reader = PdfReader(io.BytesIO(data))
                if reader.is_encrypted:
                    # Owner-restricted files open with the empty user password.
                    if not reader.decrypt(""):
                        raise _Unreadable("encrypted", "the PDF is encrypted and needs a password to open")
                    notes.append("encrypted with an empty user password; decrypted")
                page_objs = list(reader.pages)
            except _Unreadable:
                raise
            except FileNotDecryptedError:
                raise _Unreadable("encrypted", "the PDF is encrypted and needs a password to open") from None
            except (DependencyError, NotImplementedError) as exc:
                raise _Unreadable("unsupported", f"the PDF uses a feature longbatch cannot read: {exc}") from None
            except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                    RecursionError, OSError) as exc:
                msg = str(exc)
                if "is required" in msg or "not supported" in msg.lower() or "unsupported" in msg.lower():
                    raise _Unreadable("unsupported", f"the PDF uses a feature longbatch cannot read: {msg}") from None
                raise _Unreadable("corrupt", f"the PDF is damaged and cannot be read: {msg or type(exc).__name__}") from None
            if not page_objs:
                raise _Unreadable("empty", "the PDF has no pages")
            pages: list[str] = []
            failed = 0
            image_pages = 0
            for page in page_objs:
                try:
                    text = page.extract_text() or ""
                except Exception:  # noqa: BLE001 - one bad page must not lose the others
                    failed += 1
                    text = ""
                pages.append(_clean(text))
                image_pages += _has_images(page)
    finally:
        pypdf_log.setLevel(old_level)
    if failed:
        notes.append(f"{failed} of {len(pages)} pages could not be read and are empty")
    garbled = [i for i, text in enumerate(pages, 1) if _looks_garbled(text)]
    if garbled:
        log.warning("%d page(s) look garbled", len(garbled))
        notes.append(f"{len(garbled)} page(s) look garbled (fonts without a usable Unicode mapping), "
                     f"first: page {garbled[0]}")
    chars = sum(len(p.strip()) for p in pages)
    if chars == 0 and failed:
        raise _Unreadable(
            "corrupt", f"the PDF's page content is damaged: no text could be decoded from its {len(pages)} pages"
        )
    # Little text is fine on a short text-only page; little text over pages of images is a scan.
    if chars == 0 or (chars < MIN_CHARS_PER_PAGE * len(pages) and image_pages * 2 >= len(pages)):
        if images_are_read:
            notes.append(f"almost no text layer ({chars} characters over {len(pages)} pages): the model reads "
                         "the page images")
            return pages, notes
        raise _Unreadable(
            "no_text",
            f"almost no extractable text ({chars} characters over {len(pages)} pages): it looks scanned or "
            "image-only; run OCR on it first (for example with ocrmypdf)",
        )
    return pages, notes


def _looks_garbled(text: str) -> bool:
    """Text drawn from many unrelated scripts at once is a font-mapping failure, not a language:
    real pages mix two or three scripts (Japanese: kanji, kana, Latin), not six."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 50:
        return False
    scripts: dict[str, int] = {}
    for c in letters:
        script = unicodedata.name(c, "UNKNOWN").split()[0]
        scripts[script] = scripts.get(script, 0) + 1
    return sum(1 for n in scripts.values() if n >= 0.03 * len(letters)) >= 6


def _has_images(page) -> bool:
    try:
        xobjects = page.get("/Resources", {}).get_object().get("/XObject", {}).get_object()
        return any(x.get_object().get("/Subtype") == "/Image" for x in xobjects.values())
    except Exception:  # noqa: BLE001 - a damaged resource dictionary just means "unknown"
        return False


def _clean(text: str) -> str:
    # NFKC folds presentation forms (ligatures such as "ﬁ", full-width letters) into the
    # characters a reader means; NUL bytes from broken fonts carry nothing.
    return unicodedata.normalize("NFKC", text).replace("\x00", "")
