"""The one place an Anthropic client is built: from settings, never at import time."""

from __future__ import annotations

import anthropic

from longbatch.errors import MissingApiKeyError
from longbatch.settings import Settings

# Long enough for a 256 MB batch body to go up, short enough to notice a dead connection.
REQUEST_TIMEOUT_SECONDS = 600.0


def make_client(settings: Settings) -> anthropic.Anthropic:
    """A client for the real API or whatever ANTHROPIC_BASE_URL points at (the simulator).

    The SDK retries 408/409/429/5xx on its own: right for the idempotent calls (retrieve,
    list, results). `batches.create` is not idempotent; callers use `create_client()` for it."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise MissingApiKeyError()
    return anthropic.Anthropic(
        api_key=settings.api_key.get_secret_value(),
        base_url=settings.base_url,
        max_retries=4,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def create_client(client: anthropic.Anthropic) -> anthropic.Anthropic:
    """The same client with automatic retries off: a retried create after a timeout could make
    a second, paid batch."""
    return client.with_options(max_retries=0)
