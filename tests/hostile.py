"""A hostile inbox, for tests: every kind of entry a careless or malicious folder can hold.

`make_hostile_inbox(inbox, outside)` fills `inbox` and puts the targets of the links that lead
out of it in `outside`; it returns the names of the entries (as bytes, since some are not valid
UTF-8) and the path of the outside file whose contents must never be read or sent.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from pathlib import Path

SECRET = "OUTSIDE-SECRET-7f3a9c"  # in the file a link leads out to: must never reach the API
TEXT = "A short but perfectly ordinary document about the migration of swallows.\n" * 20


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF from numbered objects (1-based), with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def bomb_pdf(expanded_bytes: int = 400 * 2**20) -> bytes:
    """One page whose content stream is a few hundred KB that inflate to `expanded_bytes`."""
    comp = zlib.compressobj(9)
    chunk = b" " * 2**20
    stream = b"".join(comp.compress(chunk) for _ in range(expanded_bytes // len(chunk))) + comp.flush()
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        font,
    ])


def circular_pdf() -> bytes:
    """A page tree whose /Pages node lists itself among its kids."""
    return _pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ])


def make_hostile_inbox(inbox: Path, outside: Path) -> tuple[list[bytes], Path]:
    inbox.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.txt"
    secret.write_text(f"{SECRET}\n" + TEXT)
    os.utime(secret, (0, time.time()))  # atime before mtime: any read of it moves atime (relatime)
    (outside / "folder").mkdir(exist_ok=True)
    (outside / "folder" / "inside_outside.txt").write_text(f"{SECRET}\n" + TEXT)

    b = os.fsencode(inbox)
    entries: dict[bytes, object] = {
        b"plain.txt": TEXT,
        b"bad_\xff\xfe.txt": TEXT.replace("swallows", "storks"),  # not valid UTF-8
        b"carriage\rreturn.txt": TEXT.replace("swallows", "geese"),
        b"new\nline.md": TEXT.replace("swallows", "terns"),
        b"tab\tand \x1b[31mescape.txt": TEXT.replace("swallows", "cranes"),
        b"bomb.pdf": bomb_pdf(),
        b"circular_pages.pdf": circular_pdf(),
    }
    for name, content in entries.items():
        with open(os.path.join(b, name), "wb") as fh:
            fh.write(content.encode() if isinstance(content, str) else content)
    with open(os.path.join(b, b"sparse_3gb.txt"), "wb") as fh:
        fh.truncate(3 * 2**30)  # sparse: takes no disk
    os.mkfifo(os.path.join(b, b"a_fifo.txt"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(inbox, "a_socket.txt"))
    sock.close()
    os.symlink("plain.txt", os.path.join(b, b"link_in.txt"))  # stays inside: fine
    os.symlink(secret, os.path.join(b, b"link_out.txt"))  # leaves the inbox: refused
    os.symlink("../" * 12 + "etc/passwd", os.path.join(b, b"dotdot_passwd.txt"))
    os.symlink(outside / "folder", os.path.join(b, b"folder_out"))  # a folder outside
    os.symlink(".", os.path.join(b, b"loop"))  # a folder link back to the inbox itself
    os.symlink("missing.txt", os.path.join(b, b"broken_link.txt"))
    names = sorted(os.listdir(b))
    return names, secret
