"""What a person in the Prefect UI sees of a run, without opening a file.

Every run of `process_documents` and `collect_batches` publishes, from `reports/summary.csv`:
- a table, one row per document and prompt (status, reason, model, tokens, cost, report path);
  past ~3,000 rows the keyed one holds what fits in a server event (those that did not
  complete first) and the run carries every row in unkeyed tables of that size;
- a Markdown summary: counts by status, tokens and cost, each document that did not complete
  with its reason, and where the reports are (path and host);
- while waiting, a progress artifact (batches ended of total, requests, elapsed, expiry),
  and a heartbeat log line every few minutes, since request counts on the real API stay
  "processing" until a whole batch ends.

Keys are stable per data directory, so the Artifacts page keeps their history across runs.
Artifacts are a view of what the ledger and summary.csv already hold: failing to publish one
is logged and never fails a run whose results were paid for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tasks.batches import BatchStatus

if TYPE_CHECKING:  # pandas is imported when a summary is read: ~0.4 s off every command's start
    import pandas as pd

log = logging.getLogger(__name__)

# A batch ends at the latest 24 h after it was created (the API's rule).
BATCH_LIFETIME_SECONDS = 24 * 3600
# How often a waiting run says it is still waiting when nothing else changed.
HEARTBEAT_SECONDS = 300.0

# The order statuses are told in: done first, then what needs a look, then what is still on.
STATUS_ORDER = ["complete", "truncated", "refused", "failed", "error", "does_not_fit", "duplicate", "pending",
                "planned"]
NOT_A_FAILURE = {"complete", "pending", "planned"}

TABLE_COLUMNS = ["document", "prompt", "status", "reason", "model", "input_tokens", "output_tokens", "cost_usd",
                 "report"]

# The Prefect server announces a keyed artifact with an event that carries its data, and refuses
# events over PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES (1.5 MB by default): a table of 10,000
# rows (2.8 MB) was stored, but its event was dropped ("Refusing to publish event of size
# 2849647"). A keyed artifact's data stays under this, as the event spells it (JSON in JSON),
# leaving room for the rest of the event. Unkeyed artifacts have no such event.
KEYED_ARTIFACT_BYTES = 1_000_000


def artifact_key(data_dir: Path, kind: str) -> str:
    """`longbatch-<data dir name>-<hash of its path>-<kind>`: stable for one data directory,
    apart for two, and within Prefect's rule (lowercase letters, digits and dashes)."""
    resolved = str(Path(data_dir).resolve())
    name = re.sub(r"[^a-z0-9]+", "-", Path(resolved).name.lower()).strip("-")[:24] or "data"
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:6]
    return f"longbatch-{name}-{digest}-{kind}"


# -- what the summary says ------------------------------------------------------------------

@dataclass(frozen=True)
class RunOutcome:
    """The counts and money of a data directory's summary.csv."""

    counts: dict[str, int]  # status -> rows, in STATUS_ORDER
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @property
    def message(self) -> str:
        """One line for the run's final state: "5 complete, 3 error, $0.61"."""
        parts = [f"{n} {status}" for status, n in self.counts.items()] or ["no documents"]
        return ", ".join(parts) + f", ${self.cost_usd:,.2f}"


def read_summary(summary_csv: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(summary_csv, dtype={"source": str, "prompt": str, "status": str, "reason": str,
                                           "report": str})


def outcome_of(frame: pd.DataFrame) -> RunOutcome:
    found = frame["status"].value_counts().to_dict()
    ordered = [s for s in STATUS_ORDER if s in found] + sorted(s for s in found if s not in STATUS_ORDER)
    return RunOutcome(
        counts={s: int(found[s]) for s in ordered},
        input_tokens=int(frame["input_tokens"].fillna(0).sum()),
        output_tokens=int(frame["output_tokens"].fillna(0).sum()),
        cost_usd=round(float(frame["cost_usd"].fillna(0).sum()), 6),
    )


def _clean(value: Any) -> Any:
    """NaN (a blank CSV cell) is no JSON: it becomes None; numpy numbers become Python ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


# A reason longer than this is cut in the UI's table (summary.csv keeps it whole): no one reads
# more in a table cell, and no single row may outgrow a keyed artifact's event.
TABLE_REASON_CHARS = 2_000


def _cut(text: Any, limit: int) -> Any:
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + " … (cut here; whole in summary.csv)"
    return text


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per document and prompt, in summary.csv's order."""
    rows = []
    for record in frame.to_dict("records"):
        rows.append({
            "document": _clean(record["source"]), "prompt": _clean(record["prompt"]),
            "status": _clean(record["status"]),
            "reason": _cut(_clean(record.get("reason")), TABLE_REASON_CHARS), "model": _clean(record.get("model")),
            "input_tokens": _clean(record.get("input_tokens")), "output_tokens": _clean(record.get("output_tokens")),
            "cost_usd": _clean(record.get("cost_usd")), "report": _clean(record.get("report")),
        })
    return rows


def event_bytes(value: Any) -> int:
    """The size of `value` as an artifact's data in the server's event: the artifact stores it
    as a JSON string, and the event is JSON again (every quote escaped)."""
    return len(json.dumps(json.dumps(value)))


def table_pages(rows: list[dict[str, Any]], limit: int = KEYED_ARTIFACT_BYTES) -> list[list[dict[str, Any]]]:
    """`rows` in order, cut into pages whose data stays under `limit` bytes in an event. One
    page when they all fit; a row bigger than `limit` on its own is a page of its own."""
    empty = event_bytes([])
    pages: list[list[dict[str, Any]]] = [[]]
    size = empty
    for row in rows:
        cost = event_bytes(row)  # its two outer quotes stand for the ", " between rows
        if pages[-1] and size + cost > limit:
            pages.append([])
            size = empty
        pages[-1].append(row)
        size += cost
    return pages


def needing_a_look_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that did not complete first (failed, refused, pending ...), each lot in order."""
    return [r for r in rows if r["status"] != "complete"] + [r for r in rows if r["status"] == "complete"]


def _bounded(lines: list[str], budget: int, more: str) -> list[str]:
    """`lines` while they fit in `budget` bytes of an event; the rest counted in one last line.
    `event_bytes` is charged, not characters: it is never less than what the server writes
    (an emoji is 4 bytes there, a control character 6), whatever the text holds."""
    kept, size = [], 0
    for line in lines:
        cost = event_bytes(line) + 4  # and the line break, escaped twice
        if size + cost > budget:
            return kept + [more.format(n=len(lines) - len(kept))]
        kept.append(line)
        size += cost
    return kept


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _md(text: Any) -> str:
    """Text from documents and errors shown as written, not as Markdown or HTML."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _code(text: Any) -> str:
    """A path or host name as a code span: shown literally, no escaping needed inside."""
    text = " ".join(str(text).split())
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


# Each of the Markdown summary's two lists is cut at this many bytes of the event, so that the
# whole stays under KEYED_ARTIFACT_BYTES.
MARKDOWN_LIST_BYTES = 450_000
_MORE = "- … and {n:,} more: every one is in `summary.csv`, with its reason"


def summary_markdown(frame: pd.DataFrame, data_dir: Path, title: str, host: str | None = None) -> str:
    outcome = outcome_of(frame)
    data_dir = Path(data_dir).resolve()
    host = host or socket.gethostname()
    lines = [f"# {_md(title)}: {_md(outcome.message)}", ""]
    if frame.empty:
        lines += [f"No documents in the inbox of {_code(data_dir)}.", ""]
    lines += ["| status | documents |", "|---|---:|"]
    lines += [f"| {status} | {n} |" for status, n in outcome.counts.items()]
    lines += ["", f"**Cost:** ${outcome.cost_usd:,.2f} at batch prices, from the usage the API returned "
              f"({outcome.input_tokens:,} input and {outcome.output_tokens:,} output tokens).", ""]
    problems = frame[~frame["status"].isin(NOT_A_FAILURE)]
    if not problems.empty:
        lines += [f"## Did not complete ({len(problems)})", ""]
        lines += _bounded([f"- **{_md(r['source'])}** ({_md(r['prompt'])}): {r['status']} — "
                           f"{_md(_clean(r.get('reason')) or 'no reason recorded')}"
                           for r in problems.to_dict("records")], MARKDOWN_LIST_BYTES, _MORE)
        lines.append("")
    pending = frame[frame["status"].isin({"pending", "planned"})]
    if not pending.empty:
        lines += [f"## Still in progress ({len(pending)})", "",
                  "Their batches are still running; the collector deployment (or `longbatch collect`) "
                  "writes their reports when they end.", ""]
        lines += _bounded([f"- **{_md(r['source'])}** ({_md(r['prompt'])}): "
                           f"{_md(_clean(r.get('reason')) or r['status'])}"
                           for r in pending.to_dict("records")], MARKDOWN_LIST_BYTES, _MORE)
        lines.append("")
    lines += ["## Where the reports are", "",
              f"On host {_code(host)}, in {_code(data_dir / 'reports')}: one folder per document, "
              "`<prompt>.md` with its `<prompt>.json` beside it. The table of every document is "
              f"{_code(data_dir / 'reports' / 'summary.csv')} (and this run's table artifacts).", ""]
    return "\n".join(lines)


# -- publishing -----------------------------------------------------------------------------

def publish_run_artifacts(summary_csv: Path, data_dir: Path, title: str) -> RunOutcome:
    """Publish the table and the Markdown summary of `summary_csv`; return the counts and cost
    (for the final state's message) even when the Prefect API cannot take the artifacts."""
    from prefect.artifacts import create_markdown_artifact

    frame = read_summary(summary_csv)
    outcome = outcome_of(frame)
    _publish(lambda: _publish_table(frame, data_dir, title, outcome))
    _publish(lambda: create_markdown_artifact(
        markdown=summary_markdown(frame, data_dir, title), key=artifact_key(data_dir, "summary"),
        description=f"{title}: {outcome.message}"))
    return outcome


def _publish_table(frame: pd.DataFrame, data_dir: Path, title: str, outcome: RunOutcome) -> None:
    """One keyed table of every row while it fits in an announced artifact. Past that, the
    keyed one (its history on the Artifacts page) holds as many rows as fit, those that did not
    complete first, and every row is in this run's unkeyed tables, a page each, in summary.csv's
    order."""
    from prefect.artifacts import create_table_artifact

    rows = table_rows(frame)
    pages = table_pages(rows)
    if len(pages) == 1:
        create_table_artifact(table=rows, key=artifact_key(data_dir, "documents"),
                              description=f"{title}: one row per document and prompt ({outcome.message})")
        return
    shown = table_pages(needing_a_look_first(rows))[0]
    _publish(lambda: create_table_artifact(
        table=shown, key=artifact_key(data_dir, "documents"),
        description=(f"{title}: {len(shown):,} of {len(rows):,} rows, those that did not complete first "
                     f"({outcome.message}). Every row is in reports/summary.csv and in this run's {len(pages)} "
                     f"tables \"documents, rows … of {len(rows):,}\" (the run's Artifacts tab)")))
    first = 1
    for page in pages:
        last = first + len(page) - 1
        _publish(lambda page=page, first=first, last=last: create_table_artifact(
            table=page, description=f"{title}: documents, rows {first:,}–{last:,} of {len(rows):,}, "
                                    "in summary.csv's order"))
        first = last + 1


def _publish(create: Callable[[], Any]) -> Any:
    try:
        return create()
    except Exception as exc:  # noqa: BLE001 - a view of saved results must never fail a paid run
        log.warning("could not publish a Prefect artifact: %s: %s", type(exc).__name__, exc)
        return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


@dataclass(frozen=True)
class WaitState:
    """Where a wait stands, from one round of polling."""

    ended: int
    total: int
    requests: dict[str, int]
    elapsed_seconds: float
    expires_at: float | None  # the earliest a pending batch is ended by the API

    @classmethod
    def of(cls, statuses: Iterable[BatchStatus], now: float) -> WaitState:
        statuses = list(statuses)
        requests: dict[str, int] = {}
        for st in statuses:
            for name, n in st.counts.items():
                if n:
                    requests[name] = requests.get(name, 0) + n
        pending = [st.record.created_at for st in statuses if st.status != "ended" and st.record.created_at]
        created = [st.record.created_at for st in statuses if st.record.created_at]
        return cls(
            ended=sum(1 for st in statuses if st.status == "ended"), total=len(statuses), requests=requests,
            elapsed_seconds=now - min(created) if created else 0.0,
            expires_at=min(pending) + BATCH_LIFETIME_SECONDS if pending else None,
        )

    @property
    def percent(self) -> float:
        return 100.0 * self.ended / self.total if self.total else 100.0

    def line(self) -> str:
        requests = ", ".join(f"{n} {name}" for name, n in self.requests.items()) or "counts not visible yet"
        text = (f"waiting: {self.ended} of {self.total} batch(es) ended, {self.total - self.ended} pending; "
                f"requests: {requests}; waiting for {_duration(self.elapsed_seconds)}")
        if self.expires_at is not None:
            text += f"; the API ends the pending ones by {_utc(self.expires_at)} at the latest"
        return text


class WaitReporter:
    """Called with every polling round: keeps one progress artifact up to date and logs a
    heartbeat when `heartbeat_seconds` passed since the last line (or the first round)."""

    def __init__(self, data_dir: Path, log_line: Callable[[str], None],
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.time):
        self.key = artifact_key(data_dir, "progress")
        self.log_line = log_line
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.artifact_id: UUID | None = None
        self.last_heartbeat: float | None = None

    def __call__(self, statuses: list[BatchStatus]) -> WaitState:
        now = self.clock()
        state = WaitState.of(statuses, now)
        if self.last_heartbeat is None or now - self.last_heartbeat >= self.heartbeat_seconds:
            self.log_line(state.line())
            self.last_heartbeat = now
        self._publish(state)
        return state

    def _publish(self, state: WaitState) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        description = state.line()
        if self.artifact_id is None:
            self.artifact_id = _publish(lambda: create_progress_artifact(
                progress=state.percent, key=self.key, description=description))
        else:
            _publish(lambda: update_progress_artifact(self.artifact_id, progress=state.percent,
                                                      description=description))
