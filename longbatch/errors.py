"""longbatch's own errors. Each message says what happened and what to do about it.

The CLI turns a `LongbatchError` into one readable line and a non-zero exit, in one place
(`flows.cli`); anything else is a bug and keeps its traceback.
"""


class LongbatchError(Exception):
    """A problem the user can act on."""


class ConfigError(LongbatchError):
    """Settings or flags that cannot work together."""


class MissingApiKeyError(ConfigError):
    def __init__(self) -> None:
        super().__init__(
            "No API key found. Set ANTHROPIC_API_KEY (export ANTHROPIC_API_KEY=sk-ant-...) "
            "to use the Anthropic API, or run with --simulate to use the built-in local simulator "
            "(no key, no cost, simulated reports)."
        )


class UnknownModelError(ConfigError):
    """A model id the catalogue does not know, or one that is retired."""


class PromptError(ConfigError):
    """A prompt name or file that cannot be used."""


class WaitTimeoutError(LongbatchError):
    """Batches still running when the wait deadline passed (they keep running server-side)."""


class ApiError(LongbatchError):
    """The API cannot be used as things stand: what happened, and what to do. Messages are
    redacted (no key, no auth header) before they are raised."""


class ApiUnreachableError(ApiError):
    """No connection could be opened (refused, unknown host, bad address): nothing was sent."""


class ApiAuthError(ApiError):
    """The API refused the key (401) or its permissions (403)."""


class ApiResponseError(ApiError):
    """The API answered with something longbatch cannot read."""
