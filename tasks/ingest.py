"""Stage 1 — documents: find files in the inbox and turn each into text, or a readable failure.

Every file found ends as a `Document` or an `IngestFailure`; nothing raises out of
`read_document` for bad input, so one broken file never stops a run.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import os
import stat
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from longbatch.fsutil import slugify
from longbatch.tokens import cl100k_count
from tasks.ingest_cache import Extract, IngestCache, Refusal

log = logging.getLogger(__name__)

PDF_SUFFIXES = {".pdf"}
TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
SUPPORTED_SUFFIXES = PDF_SUFFIXES | TEXT_SUFFIXES | MARKDOWN_SUFFIXES

# Larger files are refused before reading: nothing this size fits a 1M-token window as text.
MAX_FILE_BYTES = 512 * 1024 * 1024
# A PDF averaging fewer extractable characters per page than this is taken as scanned.
MIN_CHARS_PER_PAGE = 40
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


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    return "text" if suffix in TEXT_SUFFIXES else None


def read_document(path: Path, inbox: Path, native_pdf: bool = False, cache_dir: Path | None = None,
                  follow_links: bool = False) -> Document | IngestFailure:
    """`native_pdf`: the PDF itself will be sent (native mode), so a scan without a text layer
    is readable: the model sees the page images. `cache_dir`: what was read is kept there by
    content hash (tasks/ingest_cache.py), and an unchanged file is not read again.
    `follow_links`: see `entry_problem`."""
    rel = display_name(path.relative_to(inbox).as_posix())
    problem = entry_problem(path, inbox, follow_links)
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
    return _assemble(path, rel, sha, len(data), found)


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


def read_cached(path: Path, inbox: Path, sha256: str, native_pdf: bool,
                cache_dir: Path | None) -> Document | IngestFailure | None:
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
    return _assemble(path, rel, sha256, size, found)


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
            pages, notes = _pdf_pages(data, native_pdf)
            body = _pdf_body(pages)
        else:
            text, notes = _decode_text(data)
            pages, body = [text], text
    except _Unreadable as exc:
        return Refusal(exc.category, exc.reason)
    return Extract(kind, tuple(pages), cl100k_count(body), tuple(notes))


def _assemble(path: Path, rel: str, sha: str, size: int, found: Extract | Refusal) -> Document | IngestFailure:
    doc_id = make_doc_id(rel, sha)
    if isinstance(found, Refusal):
        return IngestFailure(doc_id, rel, sha, size, found.category, found.reason)
    body = _pdf_body(found.pages) if found.kind == "pdf" else found.pages[0]
    return Document(doc_id, rel, found.kind, sha, size, found.pages, body, found.cl100k, found.notes,
                    str(path.resolve()))


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
    """Text per page, by PDFium; by pypdf when PDFium will not open the file (pypdf also names
    the missing feature, e.g. an unsupported filter, where PDFium only says "format error")."""
    if not data.strip():
        raise _Unreadable("empty", "the file is empty")
    try:
        extracted = _pdfium_pages(data)
    except _PdfiumRefused as refused:
        extracted = _pypdf_pages(data)
        extracted.notes.insert(0, f"read with pypdf: PDFium could not open it ({refused})")
    return _judge(extracted, images_are_read)


@dataclass
class _Extracted:
    """What an extractor found, before deciding whether it is a readable document."""
    pages: list[str]
    notes: list[str]
    image_pages: Callable[[], int]  # pages showing an image; asked only when the text is thin
    failed: int = 0  # pages whose content could not be decoded at all
    blank: int = 0  # pages with nothing drawn on them (PDFium: no page objects)
    unmapped: list[int] = field(default_factory=list)  # 1-based pages whose glyphs have no Unicode


class _PdfiumRefused(Exception):
    pass


def _pdfium_pages(data: bytes) -> _Extracted:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(data)  # owner-restricted files open with the empty user password
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise _Unreadable("encrypted", "the PDF is encrypted and needs a password to open") from None
        raise _PdfiumRefused(str(exc).removeprefix("Failed to load document ").strip("()."))
    try:
        notes = []
        if pdfium_c.FPDF_GetSecurityHandlerRevision(pdf) != -1:
            notes.append("encrypted with an empty user password; decrypted")
        if len(pdf) == 0:
            raise _Unreadable("empty", "the PDF has no pages")
        pages: list[str] = []
        blank = 0
        unmapped: list[int] = []
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                chars = pdfium_c.FPDFText_CountChars(textpage)
                text = textpage.get_text_range() if chars > 0 else ""
                objects = pdfium_c.FPDFPage_CountObjects(page)
                blank += objects == 0
                # Glyphs without a Unicode mapping give no characters at all in PDFium: many text
                # objects and few characters is such a font (a vertical CJK gazette: 2,624 and 28).
                if objects > 4 * chars and _text_objects(page, pdfium_c) > 4 * max(chars, 5):
                    unmapped.append(index + 1)
                textpage.close()
            finally:
                page.close()
            pages.append(_clean(text))
        image_pages = sum(_pdfium_page_has_image(pdf, i, pdfium_c) for i in range(len(pdf))) \
            if _thin(pages) else 0
    finally:
        pdf.close()
    return _Extracted(pages, notes, lambda: image_pages, blank=blank, unmapped=unmapped)


def _text_objects(page, pdfium_c) -> int:
    return sum(pdfium_c.FPDFPageObj_GetType(pdfium_c.FPDFPage_GetObject(page, i)) == pdfium_c.FPDF_PAGEOBJ_TEXT
               for i in range(pdfium_c.FPDFPage_CountObjects(page)))


def _pdfium_page_has_image(pdf, index: int, pdfium_c) -> bool:
    page = pdf[index]
    try:
        return next(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2), None) is not None
    finally:
        page.close()


def _thin(pages: list[str]) -> bool:
    return sum(len(p.strip()) for p in pages) < MIN_CHARS_PER_PAGE * len(pages)


def _pypdf_pages(data: bytes) -> _Extracted:
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    notes: list[str] = []
    # pypdf logs and warns at length about fonts and damaged objects it works around; the
    # outcome that matters is recorded per document, so keep that noise off the console.
    pypdf_log = logging.getLogger("pypdf")
    old_level = pypdf_log.level
    pypdf_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reader = PdfReader(io.BytesIO(data))
                if reader.is_encrypted:
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
            for page in page_objs:
                try:
                    text = page.extract_text() or ""
                except Exception:  # noqa: BLE001 - one bad page must not lose the others
                    failed += 1
                    text = ""
                pages.append(_clean(text))
    finally:
        pypdf_log.setLevel(old_level)
    return _Extracted(pages, notes, lambda: sum(_has_images(p) for p in page_objs), failed=failed)


def _judge(found: _Extracted, images_are_read: bool) -> tuple[list[str], list[str]]:
    """Readable document or not, and what the user should know about it: the same rules
    whichever library read the pages."""
    pages, notes = found.pages, found.notes
    if found.failed:
        notes.append(f"{found.failed} of {len(pages)} pages could not be read and are empty")
    garbled = sorted({*found.unmapped, *(i for i, text in enumerate(pages, 1) if _looks_garbled(text))})
    if garbled:
        log.warning("%d page(s) look garbled", len(garbled))
        notes.append(f"{len(garbled)} page(s) look garbled (fonts without a usable Unicode mapping), "
                     f"first: page {garbled[0]}")
    chars = sum(len(p.strip()) for p in pages)
    if chars == 0 and found.failed:
        raise _Unreadable(
            "corrupt", f"the PDF's page content is damaged: no text could be decoded from its {len(pages)} pages"
        )
    # PDFium parses what it can of a damaged content stream and draws nothing for the rest: a
    # document most of whose pages are blank is damaged (real ones have a few blank pages at most).
    if found.blank * 2 > len(pages) and len(pages) > 1:
        raise _Unreadable(
            "corrupt", f"the PDF's page content is damaged or blank: {found.blank} of its {len(pages)} pages draw "
            "nothing"
        )
    # Little text is fine on a short text-only page; little text over pages of images is a scan.
    if chars == 0 or (_thin(pages) and found.image_pages() * 2 >= len(pages)):
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
    if text.isascii():  # one script (and the common case, decided at C speed)
        return False
    # Counted per distinct character, not per character: a page has thousands of characters
    # but a few hundred distinct ones, and naming a character is the slow part.
    scripts: dict[str, int] = {}
    letters = 0
    for c, n in Counter(text).items():
        if c.isalpha():
            script = unicodedata.name(c, "UNKNOWN").split()[0]
            scripts[script] = scripts.get(script, 0) + n
            letters += n
    if letters < 50:
        return False
    return sum(1 for n in scripts.values() if n >= 0.03 * letters) >= 6


def _has_images(page) -> bool:
    try:
        xobjects = page.get("/Resources", {}).get_object().get("/XObject", {}).get_object()
        return any(x.get_object().get("/Subtype") == "/Image" for x in xobjects.values())
    except Exception:  # noqa: BLE001 - a damaged resource dictionary just means "unknown"
        return False


def _clean(text: str) -> str:
    # PDFium ends lines with CRLF and marks a hyphen it joined across a line break with U+FFFE
    # ("com\ufffepany"): the word is whole again without it. NFKC folds presentation forms
    # (ligatures such as "ﬁ", full-width letters) into the characters a reader means. Control
    # characters other than tab and newline (glyph codes of symbol fonts with no Unicode, NUL)
    # carry nothing.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "")
    return _CONTROL.sub("", unicodedata.normalize("NFKC", text))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
