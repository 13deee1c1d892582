"""The flows: documents -> plan -> batches -> results -> reports.

`process_documents` is the main job (`longbatch run`); `collect_batches` finishes what a
`--no-wait` run or a crashed run left pending (`longbatch collect`, and the collector
deployment). Both can be called from Python.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import anthropic
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from longbatch.catalog import DEFAULT_MODEL, ModelSpec, get_model, normalize_betas, refreshed_catalog
from longbatch.client import make_client
from longbatch.errors import ConfigError
from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.settings import Settings
from tasks import batches as batch_io
from tasks.collect import CollectStats, collect_batch, settle_retries
from tasks.counting import count_near_limits
from tasks.ingest import Document, IngestFailure, discover, read_document
from tasks.packing import pack
from tasks.build import PlannedRequest
from tasks.plan import PART, REDUCE, Plan, make_plan, rebuild_request
from tasks.prompts import Prompt, load_prompts
from tasks.reduce import advance_reductions, rebuild_reduce_request
from tasks.reports import request_meta, write_summary

SIMULATED_KEY = "simulated-no-key-needed"
log = logging.getLogger(__name__)


class RunParameters(BaseModel):
    """What a run needs. In the Prefect UI these fields are the form of a run."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field("data", description="Data directory: reports/, results/ and the ledger live here.")
    inbox: str | None = Field(None, description="Folder of documents (.pdf, .txt, .md); default: <data_dir>/inbox.")
    model: str = Field(DEFAULT_MODEL, description="Claude model id, e.g. claude-sonnet-4-6 or claude-opus-4-6.")
    prompts: list[str] = Field(["report"], description="Prompt names (built-in: report, summary) or template files.")
    max_output_tokens: int | None = Field(
        None, ge=1, description="Output tokens asked per document; empty = the most the model allows in a batch.")
    min_output_tokens: int = Field(8_192, ge=1, description="A document that cannot get this much output does not fit.")
    wait: bool = Field(True, description="Wait for the batches and write reports; off = submit and return.")
    budget_usd: float | None = Field(
        None, ge=0, description="Refuse to submit when the most this run could cost exceeds this many dollars.")
    simulate: bool = Field(False, description="Use the built-in local simulator instead of the Anthropic API.")
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per request for expired/canceled/transient errors.")
    exact_count: bool = Field(
        False, description="Count every document with count_tokens, not only those near a limit.")
    betas: list[str] = Field(
        default_factory=list, description="Extra beta headers for every batch (the retired context-1m is dropped).")
    pdf_mode: Literal["text", "native"] = Field(
        "text", description="PDFs as extracted text (default), or as the PDF itself, for tables and figures "
                            "(document blocks; split into page ranges over 600 pages or 32 MB).")
    follow_links: bool = Field(False, description="Read files and folders that links in the inbox point to, "
                                                  "even outside it (off: such links are refused, each with a row).")

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            "data_dir": Path(self.data_dir), "model": self.model, "prompts": self.prompts,
            "max_output_tokens": self.max_output_tokens, "min_output_tokens": self.min_output_tokens,
            "budget_usd": self.budget_usd, "simulate": self.simulate, "betas": self.betas,
            "pdf_mode": self.pdf_mode, "follow_links": self.follow_links,
        }
        if "min_output_tokens" not in self.model_fields_set:
            del values["min_output_tokens"]  # the default yields to a smaller maximum; a given one is checked
        return Settings(**values)

    @property
    def inbox_path(self) -> Path:
        return Path(self.inbox) if self.inbox else Path(self.data_dir) / "inbox"


class BudgetExceededError(ConfigError):
    pass


def check_api_access(settings: Settings) -> None:
    """Fail before anything is created when there is no way to reach an API."""
    if not settings.simulate:
        make_client(settings)  # raises MissingApiKeyError with what to do


@contextlib.contextmanager
def api_session(settings: Settings) -> Iterator[anthropic.Anthropic]:
    """The client for this run: the real API (or ANTHROPIC_BASE_URL), or the built-in
    simulator on 127.0.0.1 whose state lives in the data dir, so `collect` finds its batches."""
    if not settings.simulate:
        yield make_client(settings)
        return
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    # Speed, report length and faults come from LONGBATCH_SIM_* variables (see SimConfig).
    config = SimConfig(state_dir=settings.data_dir / "simulator")
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key=SIMULATED_KEY, base_url=server.url, max_retries=4)
        yield client


# -- tasks: thin wrappers around the stages -------------------------------------------------

@task(name="ingest-document", cache_policy=NO_CACHE)
def ingest_document(path: Path, inbox: Path, native_pdf: bool = False,
                    follow_links: bool = False) -> Document | IngestFailure:
    item = read_document(path, inbox, native_pdf, follow_links)
    if isinstance(item, IngestFailure):
        get_run_logger().warning("%s: %s (%s)", item.source, item.reason, item.category)
    return item


@task(name="make-plan", cache_policy=NO_CACHE)
def plan_task(items: list[Document | IngestFailure], prompts: list[Prompt], model: ModelSpec,
              settings: Settings, exact_counts: dict[str, int] | None = None) -> Plan:
    return plan_with(items, prompts, model, settings, exact_counts)


def plan_with(items: list[Document | IngestFailure], prompts: list[Prompt], model: ModelSpec,
              settings: Settings, exact_counts: dict[str, int] | None = None) -> Plan:
    betas, _ = normalize_betas(settings.betas)
    return make_plan(items, prompts, model, settings.max_output_tokens, settings.min_output_tokens, exact_counts,
                     betas, settings.pdf_mode)


def claim_plan(ledger: Ledger, plan: Plan) -> None:
    """Record this plan's new work in the ledger as queued, and the combining steps of split
    documents as waiting. Work the ledger already knows (same fingerprint or recipe, from an
    earlier or a concurrent run) is not claimed again."""
    rows = {r.custom_id: r for r in plan.rows if r.custom_id and r.status != REDUCE}
    known = ledger.known_fingerprints([r.fingerprint for r in plan.requests])
    for req in plan.requests:
        if req.fingerprint not in known:
            row = rows[req.custom_id]
            ledger.claim({"fingerprint": req.fingerprint, "custom_id": req.custom_id, "doc_id": req.doc_id,
                          "source": row.source, "sha256": row.sha256, "prompt": req.prompt, "model": req.model,
                          "max_tokens": req.max_tokens, "betas": ",".join(req.betas),
                          "meta": json.dumps(req.meta) if req.meta else None})
        ledger.supersede(req.custom_id, req.fingerprint)
    for node in plan.reductions:
        ledger.claim_reduction(node.record())


@task(name="submit-batches", cache_policy=NO_CACHE)
def submit_task(client: anthropic.Anthropic, ledger: Ledger,
                requests: list[PlannedRequest]) -> list[batch_io.SubmitOutcome]:
    """Pack those of `requests` that are queued in the ledger and submit each batch once."""
    by_fp = {r.fingerprint: r for r in requests}
    for row in ledger.requests_in_state("failed"):
        if row["error_type"] == "create_failed" and row["fingerprint"] in by_fp:
            ledger.requeue(row["fingerprint"], "failed")  # never reached the API: safe to send
    queued = [by_fp[r["fingerprint"]] for r in ledger.requests_in_state("queued") if r["fingerprint"] in by_fp]
    outcomes = []
    for batch_plan in pack(queued):
        outcome = batch_io.submit_batch(client, ledger, batch_plan)
        outcomes.append(outcome)
        if outcome.state == "failed":
            get_run_logger().error("batch of %d requests was not created: %s", len(batch_plan.requests),
                                   outcome.error)
    return outcomes


@task(name="reconcile-ledger", cache_policy=NO_CACHE)
def reconcile_task(client: anthropic.Anthropic, ledger: Ledger, settings: Settings) -> None:
    """Resolve creates whose outcome was never heard (a crash or a dropped connection)."""
    ledger.stale_intents_to_unknown(settings.intent_grace_seconds)
    try:
        adopted = batch_io.recover_unknown_batches(client, ledger, settings.create_grace_seconds,
                                                   settings.data_dir / "results")
    except Exception as exc:  # noqa: BLE001 - a transient failure leaves them for the next round
        if not batch_io.is_transient(exc):
            raise
        get_run_logger().warning("could not list batches to resolve unconfirmed creates: %s", type(exc).__name__)
        return
    for api_id in adopted:
        get_run_logger().info("adopted batch %s from an unconfirmed create", api_id)


# Rounds of submit -> resolve unconfirmed creates -> submit what never reached the server.
MAX_SUBMIT_ROUNDS = 50


def submit_until_settled(client: anthropic.Anthropic, ledger: Ledger, requests: list[PlannedRequest],
                         settings: Settings) -> None:
    """Submit the queued ones of `requests`; while creates are unconfirmed, look them up and
    resubmit only what provably never reached the server."""
    mine = {r.fingerprint for r in requests}
    for _ in range(MAX_SUBMIT_ROUNDS):
        submit_task(client, ledger, requests)
        reconcile_task(client, ledger, settings)
        unknown = ledger.batches_in_state("unknown")
        queued = [r for r in ledger.requests_in_state("queued") if r["fingerprint"] in mine]
        if not unknown and not queued:
            return
        time.sleep(min(settings.poll_initial_seconds, settings.create_grace_seconds))
    get_run_logger().warning("some creates are still unconfirmed; `longbatch collect` or the next run resolves them")


@task(name="wait-for-batches", cache_policy=NO_CACHE)
def wait_task(client: anthropic.Anthropic, ledger: Ledger, settings: Settings) -> None:
    logger = get_run_logger()
    last: list[str] = []

    def progress(statuses: list[batch_io.BatchStatus]) -> None:
        lines = []
        for st in statuses:
            counts = ", ".join(f"{v} {k}" for k, v in st.counts.items() if v) or "not visible yet"
            lines.append(f"batch {st.record.api_id}: {st.status} ({counts})")
        if lines != last:
            for line in lines:
                logger.info(line)
            last[:] = lines

    batch_io.wait_for_batches(client, ledger, settings.poll_initial_seconds, settings.poll_max_seconds,
                              settings.wait_timeout_seconds, progress)


@task(name="collect-batch", cache_policy=NO_CACHE)
def collect_task(client: anthropic.Anthropic, ledger: Ledger, data_dir: Path) -> list[CollectStats]:
    stats = []
    for record in ledger.batches_in_state("ended"):
        st = collect_batch(client, ledger, record, data_dir)
        get_run_logger().info("collected batch %s: %s", st.batch_id,
                              ", ".join(f"{v} {k}" for k, v in sorted(st.counts.items())))
        stats.append(st)
    return stats


def finish_pending(client: anthropic.Anthropic, ledger: Ledger, settings: Settings, max_attempts: int,
                   requests: list[PlannedRequest] | None, inbox: Path) -> None:
    """Wait, collect, and resend what may be retried, until nothing is pending. `requests` are
    the run's own; others (from earlier runs, or all of them for collect) are rebuilt."""
    while True:
        wait_task(client, ledger, settings)
        collect_task(client, ledger, settings.data_dir)
        requeued = settle_retries(ledger, max_attempts)
        combining = advance_reductions(ledger, settings.data_dir)
        if not requeued and not combining:
            return
        if requeued:
            get_run_logger().info("resubmitting %d request(s) that expired, were canceled or hit transient errors",
                                  len(requeued))
        if combining:
            get_run_logger().info("sending %d step(s) combining the part reports of split documents", len(combining))
        failpoint("before-retry")
        known = (requests or []) + combining
        submit_until_settled(client, ledger, queued_requests(ledger, inbox, settings.data_dir, known), settings)


def queued_requests(ledger: Ledger, inbox: Path, data_dir: Path,
                    known: list[PlannedRequest] | None = None) -> list[PlannedRequest]:
    """The exact requests behind the ledger's queued work: taken from `known` (this run's plan)
    where there, rebuilt from the inbox otherwise. One whose document or prompt changed since
    it was planned cannot be rebuilt the same: it fails with the reason (the next `run` plans
    the new version)."""
    by_fp = {r.fingerprint: r for r in known or []}
    out = []
    for row in ledger.requests_in_state("queued"):
        step = request_meta(row)
        found = by_fp.get(row["fingerprint"])
        if found is None and step and step["role"] in ("merge", "final"):
            found = rebuild_reduce_request(ledger, step, data_dir)
            if not isinstance(found, str) and found.fingerprint != row["fingerprint"]:
                found = "the part reports it combines changed since it was built"
        found = found or rebuild_request(row, inbox, data_dir)
        if isinstance(found, str):
            ledger.set_request_state([row["fingerprint"]], "failed", error_type="not_rebuildable",
                                     error_message=found)
        else:
            out.append(found)
    return out


def _check_budget(plan: Plan, ledger: Ledger, budget: float | None) -> None:
    """Refuse before sending when the new work could cost more than the budget. Work the
    ledger already holds was paid for (or is in flight) and does not count again."""
    if budget is None:
        return
    fingerprints = {r.custom_id: r.fingerprint for r in plan.requests}
    known = ledger.known_fingerprints(list(fingerprints.values()))
    known_steps = ledger.known_reductions([n.key for n in plan.reductions])
    # Requests (whole documents and parts) and combining steps; a split document's own row
    # only sums those.
    new_cost = sum(row.max_cost_usd for row in plan.rows
                   if (row.status == REDUCE and row.reduction not in known_steps)
                   or (row.status != REDUCE and row.custom_id and fingerprints[row.custom_id] not in known))
    if new_cost > budget:
        raise BudgetExceededError(
            f"This run could cost up to ${new_cost:,.2f} (every granted output token used), over the budget "
            f"of ${budget:,.2f}. Nothing was sent. Lower --max-output-tokens, use fewer documents or "
            f"prompts, or raise --budget-usd. `longbatch plan` shows the cost per document."
        )


def model_from_api(client: anthropic.Anthropic, model_id: str) -> ModelSpec:
    """The model's facts as the Models API reports them now; the built-in table when the API
    cannot be asked (a transient failure is logged, not fatal)."""
    try:
        catalog = refreshed_catalog(client.models.list(limit=1000))
    except Exception as exc:  # noqa: BLE001 - only transient errors fall back
        if not batch_io.is_transient(exc) and not isinstance(exc, anthropic.NotFoundError):
            raise
        log.warning("Models API unavailable (%s): using the built-in model table", type(exc).__name__)
        return get_model(model_id)
    return get_model(model_id, catalog)


@task(name="count-tokens", cache_policy=NO_CACHE)
def exact_count_task(client: anthropic.Anthropic, ledger: Ledger, plan: Plan, items: list[Document | IngestFailure],
                     prompts: list[Prompt], model: ModelSpec, settings: Settings, everything: bool) -> Plan:
    """Replan with count_tokens' figures for documents near a limit (or all, with exact_count)."""
    if not everything and not any(r.needs_exact for r in plan.rows):
        return plan
    docs = [d for d in items if isinstance(d, Document)]
    counts = count_near_limits(client, plan, docs, prompts, model, ledger.token_counts(),
                               settings.count_tokens_per_minute, ledger.record_token_count, everything)
    return plan_with(items, prompts, model, settings, counts)


def build_plan(params: RunParameters, settings: Settings,
               client: anthropic.Anthropic | None = None) -> tuple[Plan, ModelSpec]:
    """Ingest and plan without Prefect (`longbatch plan`). Nothing is submitted; with a client,
    documents near a limit are counted exactly (count_tokens is free and sends no work)."""
    model = get_model(settings.model)
    prompts = load_prompts(settings.prompts, settings.data_dir)
    inbox = params.inbox_path
    items = [read_document(path, inbox, settings.pdf_mode == "native", settings.follow_links)
             for path in discover(inbox, settings.follow_links)]
    if client is not None:
        model = model_from_api(client, settings.model)
    plan = plan_with(items, prompts, model, settings)
    if client is not None and (params.exact_count or any(r.needs_exact for r in plan.rows)):
        docs = [d for d in items if isinstance(d, Document)]
        counts = count_near_limits(client, plan, docs, prompts, model, {}, settings.count_tokens_per_minute,
                                   everything=params.exact_count)
        plan = plan_with(items, prompts, model, settings, counts)
    return plan, model


@flow(name="process-documents")
def process_documents(params: RunParameters = RunParameters()) -> dict[str, Any]:  # noqa: B008 - immutable use
    """Ingest every document in the inbox, check each fits with its output budget, submit the
    new work as batches, wait for them, and write the reports and summary.csv."""
    settings = params.settings()
    logger = get_run_logger()
    check_api_access(settings)
    model = get_model(settings.model)
    prompts = load_prompts(settings.prompts, settings.data_dir)
    inbox = params.inbox_path
    paths = discover(inbox, settings.follow_links)
    logger.info("inbox %s: %d file(s); model %s; prompts %s", inbox, len(paths), model.id,
                ", ".join(p.name for p in prompts))

    native = settings.pdf_mode == "native"
    items = (ingest_document.map(paths, inbox=inbox, native_pdf=native, follow_links=settings.follow_links).result()
             if paths else [])
    for warning in normalize_betas(settings.betas)[1]:
        logger.warning(warning)
    plan = plan_task(items, prompts, model, settings)
    failpoint("after-ingest")
    ledger = Ledger.for_data_dir(settings.data_dir)
    try:
        with api_session(settings) as client:
            online = model_from_api(client, settings.model)
            if online != model:  # the service's facts differ from the built-in table: plan with them
                model = online
                plan = plan_task(items, prompts, model, settings)
            plan = exact_count_task(client, ledger, plan, items, prompts, model, settings, params.exact_count)
            ledger.record_plan(_plan_records(plan))
            failpoint("after-plan")
            _check_budget(plan, ledger, settings.budget_usd)
            claim_plan(ledger, plan)
            reconcile_task(client, ledger, settings)
            submit_until_settled(client, ledger, plan.requests, settings)
            if params.wait:
                finish_pending(client, ledger, settings, params.max_attempts, plan.requests, inbox)
        summary = write_summary(ledger, settings.data_dir)
    finally:
        ledger.close()
    return _result(summary)


@flow(name="collect-batches")
def collect_batches(
    data_dir: str = "data",
    simulate: bool = False,
    wait: bool = False,
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3,
    inbox: str | None = None,
) -> dict[str, Any]:
    """Look at every pending batch, assemble what ended, resubmit what may be retried (rebuilt
    from the inbox), and with `wait` go on until nothing is pending.

    Args:
        data_dir: Data directory holding the ledger, results and reports.
        simulate: Talk to the built-in simulator instead of the Anthropic API.
        wait: Wait until every pending batch has ended.
        max_attempts: Tries per request before giving up on it.
        inbox: Where the documents are, to rebuild retried requests; default: <data_dir>/inbox.
    """
    settings = Settings(data_dir=Path(data_dir), simulate=simulate)
    inbox_path = Path(inbox) if inbox else settings.inbox
    check_api_access(settings)
    ledger = Ledger.for_data_dir(settings.data_dir)
    try:
        with api_session(settings) as client:
            reconcile_task(client, ledger, settings)
            submit_until_settled(client, ledger, queued_requests(ledger, inbox_path, settings.data_dir), settings)
            if wait:
                finish_pending(client, ledger, settings, max_attempts, None, inbox_path)
            else:
                batch_io.poll_round(client, ledger)
                collect_task(client, ledger, settings.data_dir)
                requeued = settle_retries(ledger, max_attempts)
                combining = advance_reductions(ledger, settings.data_dir)
                if requeued or combining:
                    submit_until_settled(client, ledger,
                                         queued_requests(ledger, inbox_path, settings.data_dir, combining), settings)
        summary = write_summary(ledger, settings.data_dir)
    finally:
        ledger.close()
    return _result(summary)


def _plan_records(plan: Plan) -> list[dict[str, Any]]:
    """The document rows (one per document and prompt) for summary.csv; a split document's
    row carries its parts' fingerprints and its final step's key."""
    fingerprints = {r.custom_id: r.fingerprint for r in plan.requests}
    parts: dict[tuple[str, str], list[str]] = {}
    for row in plan.rows:
        if row.status == PART:
            parts.setdefault((row.source, row.prompt), []).append(fingerprints[row.custom_id or ""])
    return [{**asdict(row), "fingerprint": fingerprints.get(row.custom_id or ""),
             "part_fingerprints": parts.get((row.source, row.prompt), [])} for row in plan.document_rows]


def _result(summary_path: Path) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_csv(summary_path)
    return {"summary_csv": str(summary_path), "rows": len(frame),
            "by_status": {str(k): int(v) for k, v in frame["status"].value_counts().items()}}

