"""longbatch's own errors, in one tree. Each message says what happened and what to do.

    LongbatchError              a problem the user can act on: the CLI shows one line, exit 2
    ├── ConfigError             settings, flags, models, prompts, keys, budgets
    ├── WaitTimeoutError        batches still running at the wait deadline (they go on)
    └── DocumentRefusal         one document (or piece of it) cannot go on; the run does
        ├── CannotSplit         too long for one request and cannot be read in parts
        ├── NotRebuildable      queued work whose request cannot be rebuilt identically
        ├── StepFailed          a combining step whose part failed for good
        ├── PdfChangedError     native mode reads the PDF again: it must be the one ingested
        ├── Unreadable          a file that cannot be read as a document (ingest records it)
        └── RequestTooLargeError  one request over a batch's byte limit

    NotReady                    not an error: a combining step whose parts are still pending
    IncompleteDownloadError     a results stream cut short: transient, retried

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


class BudgetExceededError(ConfigError):
    """The work a run would send could cost more than its budget: nothing was sent."""


class WaitTimeoutError(LongbatchError):
    """Batches still running when the wait deadline passed (they keep running server-side)."""


class DocumentRefusal(LongbatchError):
    """One document, or one piece of it, cannot go on; the message is its recorded reason."""


class CannotSplit(DocumentRefusal):
    """Too long for one request, and no split into parts fits either."""


class NotRebuildable(DocumentRefusal):
    """Queued work whose exact request cannot be rebuilt from the inbox and the ledger."""


class StepFailed(DocumentRefusal):
    """A combining step that cannot be built: a part failed for good, or its report is gone."""


class PdfChangedError(DocumentRefusal):
    """Native mode reads the PDF again when it builds requests: it changed or is gone."""


class RequestTooLargeError(DocumentRefusal):
    """A single request over the batch byte limit."""


class Unreadable(DocumentRefusal):
    """A file that cannot be read as a document: its category (encrypted, corrupt, empty, ...)
    and a reason the user can act on."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category
        self.reason = reason


class NotReady(Exception):
    """A combining step whose children are still pending: look again after the next collect."""


class IncompleteDownloadError(Exception):
    """The results stream ended before its announced length (transient: retried)."""


class ApiError(LongbatchError):
    """The API cannot be used as things stand: what happened, and what to do. Messages are
    redacted (no key, no auth header) before they are raised."""


class ApiUnreachableError(ApiError):
    """No connection could be opened (refused, unknown host, bad address): nothing was sent."""


class ApiAuthError(ApiError):
    """The API refused the key (401) or its permissions (403)."""


class ApiResponseError(ApiError):
    """The API answered with something longbatch cannot read."""
