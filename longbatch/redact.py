"""Keep the API key out of everything longbatch stores or shows.

A server (or a proxy in front of it) can echo request headers in an error message; that text
then flows into the ledger, summary.csv, reports, log lines and the CLI's output. `redact` is
applied to every such text. It removes:

* the configured key's exact value (ANTHROPIC_API_KEY / LONGBATCH_API_KEY, and any key a
  client was built with: see `register_secret`);
* anything shaped like an Anthropic key (`sk-ant-...`);
* the value of an `Authorization` or `x-api-key` header written out in the text.

`install_log_redaction` does the same for every log record the process creates, so a
traceback that quotes an API error cannot carry the key into a log file or Prefect's database.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

REDACTED = "[REDACTED]"
# Anthropic keys: sk-ant-<kind>NN-<base64url>; be generous about the tail.
_KEY_SHAPE = re.compile(r"sk-ant-[A-Za-z0-9_\-]{4,}")
# `Authorization: Bearer X`, `"x-api-key": "X"`, `x-api-key=X`, `'authorization': 'Bearer X'`...
_HEADER_VALUE = re.compile(
    r"(?P<name>authorization|x-api-key)(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<scheme>(?:bearer|basic)\s+)?"
    r"(?P<value>[^\s\"',;}\]]+)",
    re.IGNORECASE,
)
_KEY_ENV_VARS = ("ANTHROPIC_API_KEY", "LONGBATCH_API_KEY", "ANTHROPIC_AUTH_TOKEN")
# Values shorter than this are not treated as secrets on their own (a one-letter test key
# would otherwise blank every "x" in a text); the header and key-shape rules still apply.
_MIN_SECRET_LENGTH = 8

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret (the key a client was built with) so `redact` removes it too."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def _secrets() -> list[str]:
    found = {os.environ.get(name, "") for name in _KEY_ENV_VARS}
    with _lock:
        found |= _registered
    # Longest first, so a key that contains another secret is replaced whole.
    return sorted((s for s in found if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str | None) -> str | None:
    """`text` with the key, key-shaped strings and auth header values replaced by [REDACTED]."""
    if not text:
        return text
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPE.sub(REDACTED, text)
    return _HEADER_VALUE.sub(_blank_header, text)


def _blank_header(m: re.Match[str]) -> str:
    if m.group("value") == REDACTED:
        return m.group(0)
    return f"{m.group('name')}{m.group('sep')}{m.group('scheme') or ''}{REDACTED}"


def needs_redaction(text: str) -> bool:
    return redact(text) != text


def redact_file(path: Path) -> bool:
    """Rewrite a text file (the raw results archive) with every line redacted, when any line
    needs it; line by line, so memory stays bounded by the longest line. Returns whether it
    did. Lines stay valid JSON: [REDACTED] holds no quote or backslash."""
    probes = [s.encode() for s in _secrets()] + [b"sk-ant-", b"uthorization", b"UTHORIZATION", b"pi-key",
                                                 b"PI-KEY"]
    with path.open("rb") as fh:
        if not any(any(p in line for p in probes) for line in fh):
            return False
    tmp = path.with_name(path.name + ".redacting")
    changed = False
    with path.open("rb") as src, tmp.open("wb") as dst:
        for line in src:
            text = line.decode("utf-8", errors="surrogateescape")
            cleaned = redact(text) or ""
            changed |= cleaned != text
            dst.write(cleaned.encode("utf-8", errors="surrogateescape"))
        dst.flush()
        os.fsync(dst.fileno())
    if changed:
        os.replace(tmp, path)
    else:
        tmp.unlink()
    return changed


_installed = False


def install_log_redaction() -> None:
    """Redact every log record this process creates, message and traceback alike (idempotent).
    A record factory, not a filter: filters on a logger do not see records propagated from its
    children, and Prefect adds its handlers after we start."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the logging module's to report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = formatter.formatException(record.exc_info)
            if needs_redaction(text):
                # Formatters reuse exc_text when set: the traceback goes out redacted.
                record.exc_text = redact(text)
        return record

    logging.setLogRecordFactory(factory)
