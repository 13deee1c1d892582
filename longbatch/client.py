"""The one place an Anthropic client is built: from settings, never at import time."""

from __future__ import annotations

from urllib.parse import urlsplit

import anthropic

from longbatch.errors import ConfigError, MissingApiKeyError
from longbatch.redact import install_log_redaction, redact, register_secret
from longbatch.settings import Settings

# Long enough for a 256 MB batch body to go up, short enough to notice a dead connection.
REQUEST_TIMEOUT_SECONDS = 600.0


def make_client(settings: Settings) -> anthropic.Anthropic:
    """A client for the real API or whatever ANTHROPIC_BASE_URL points at (the simulator).

    The SDK retries 408/409/429/5xx on its own: right for the idempotent calls (retrieve,
    list, results). `batches.create` is not idempotent; callers use `create_client()` for it."""
    return anthropic.Anthropic(
        api_key=api_key(settings),
        base_url=settings.base_url,
        max_retries=4,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def api_key(settings: Settings) -> str:
    """The key a client would use, once it is known to the redaction of errors and log lines.
    Raises what `make_client` would (no key, a malformed ANTHROPIC_BASE_URL) without building
    one: a client loads the system's certificates, 0.02-0.05 s each time here."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise MissingApiKeyError()
    check_base_url(settings.base_url)
    key = settings.api_key.get_secret_value()
    register_secret(key)
    install_log_redaction()
    return key


def check_base_url(base_url: str | None) -> None:
    """A malformed ANTHROPIC_BASE_URL is a configuration error, said before anything is tried
    (the SDK would only report a "connection error" on the first call)."""
    if base_url is None:
        return
    parts = urlsplit(base_url.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"ANTHROPIC_BASE_URL {redact(base_url)!r} is not a URL longbatch can use: it needs http:// or https:// "
            "and a host, e.g. https://api.anthropic.com or http://127.0.0.1:8765 for `longbatch simulator`. "
            "Unset it to use the Anthropic API."
        )


def create_client(client: anthropic.Anthropic) -> anthropic.Anthropic:
    """The same client with automatic retries off: a retried create after a timeout could make
    a second, paid batch."""
    return client.with_options(max_retries=0)
