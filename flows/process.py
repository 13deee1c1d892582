"""The flows: documents -> plan -> batches -> results -> reports.

`process_documents` is the main job (`longbatch run`); `collect_batches` finishes what a
`--no-wait` run or a crashed run left pending (`longbatch collect`, and the collector
deployment). Both can be called from Python. This module only orchestrates: every decision
is made in the stages under tasks/.
"""

from __future__ import annotations

import datetime
import importlib
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import anthropic
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.utilities.annotations import quote
from pydantic import Field

from flows.artifacts import WaitReporter, publish_run_artifacts
from flows.cancel import resend_canceled as resend_canceled_requests
from flows import heartbeats
from flows.parameters import RunParameters
from flows.reading import Inbox
from longbatch.api import check_api_access, model_from_api, open_api
from longbatch.catalog import ModelSpec, get_model, normalize_betas, retirement_warning
from longbatch.failpoints import failpoint
from longbatch.ledger import Ledger
from longbatch.memory import fix_mmap_threshold
from longbatch.records import CREATE_FAILED, NOT_REBUILDABLE, BatchState, RequestState
from longbatch.settings import Settings
from longbatch.transient import tolerate_transient
from tasks import batches as batch_io
from tasks.build import PlannedRequest
from tasks.caps import standing_caps
from tasks.claim import check_budget, claim_plan, new_work_usd, plan_records
from tasks.collect import CollectStats, collect_batch, settle_retries
from tasks.counting import count_near_limits
from tasks.batch_body import Renderer
from tasks.ingest import discover
from tasks.packing import pack
from tasks.plan import Plan
from tasks.priming import release_primed
from tasks.prompts import Prompt, load_prompts
from tasks.rebuild import queued_requests
from tasks.recover import recover_from_reports
from tasks.reduce import advance_reductions
from tasks.reports import write_summary

heartbeats.install()  # a flow run ends when its work does, not up to 1 s later

__all__ = ["RunParameters", "collect_batches", "process_documents"]

# Rounds of submit -> resolve unconfirmed creates -> submit what never reached the server.
MAX_SUBMIT_ROUNDS = 50


# -- tasks: thin wrappers around the stages -------------------------------------------------

# Large arguments (plans, requests) are passed as quote(...): Prefect would otherwise walk every
# nested element of them looking for futures, on each task call (issue 10).

@task(name="count-tokens", cache_policy=NO_CACHE)
def exact_count_task(client: anthropic.Anthropic, ledger: Ledger, plan: Plan, inbox: Inbox,
                     prompts: list[Prompt], model: ModelSpec, settings: Settings) -> Plan:
    """Replan with count_tokens' figures for documents near a limit (or all, with exact_count)."""
    if not settings.exact_count and not any(r.needs_exact for r in plan.rows):
        return plan
    sources = {r.source for r in plan.document_rows if r.needs_exact or (settings.exact_count and r.count_key)}
    counts = count_near_limits(client, plan, inbox.documents(sources), prompts, model, ledger.token_counts(),
                               settings.count_tokens_per_minute, ledger.record_token_count, settings.exact_count)
    return inbox.plan(prompts, model, counts)


@task(name="submit-batches", cache_policy=NO_CACHE)
def submit_task(client: anthropic.Anthropic, ledger: Ledger, requests: list[PlannedRequest],
                settings: Settings) -> list[batch_io.SubmitOutcome]:
    """Pack those of `requests` that are queued in the ledger and submit each batch once, its
    requests' text rendered as its body is written (a spool file in the data dir)."""
    by_fp = {r.fingerprint: r for r in requests}
    for record in ledger.requests_in_state(RequestState.FAILED):
        if record.fingerprint in by_fp and (record.error_type == CREATE_FAILED or (
                # its document read differently when its batch was written (being rewritten, or
                # edited and undone), and it never reached the API: this plan made it again
                record.error_type == NOT_REBUILDABLE and record.attempts == 0)):
            ledger.requeue(record.fingerprint, RequestState.FAILED)  # never reached the API: safe to send
    queued = [by_fp[r.fingerprint] for r in ledger.requests_in_state(RequestState.QUEUED) if r.fingerprint in by_fp]
    outcomes = []
    render = Renderer(ledger, settings.inbox_dir, settings.data_dir, settings.follow_links)
    render.prepare(queued)
    for batch_plan in pack(queued):
        outcome = batch_io.submit_batch(client, ledger, batch_plan, render, settings.data_dir)
        outcomes.append(outcome)
        if outcome.state == "failed":
            get_run_logger().error("batch of %d requests was not created: %s", len(batch_plan.requests),
                                   outcome.error)
    return outcomes


@task(name="reconcile-ledger", cache_policy=NO_CACHE)
def reconcile_task(client: anthropic.Anthropic, ledger: Ledger, settings: Settings) -> None:
    """Resolve creates whose outcome was never heard (a crash or a dropped connection)."""
    ledger.stale_intents_to_unknown(settings.intent_grace_seconds)
    adopted = tolerate_transient(
        lambda: batch_io.recover_unknown_batches(client, ledger, settings.create_grace_seconds,
                                                 settings.data_dir / "results"),
        [], "could not list batches to resolve unconfirmed creates; the next round tries again", get_run_logger())
    for api_id in adopted:
        get_run_logger().info("adopted batch %s from an unconfirmed create", api_id)


@task(name="wait-for-batches", cache_policy=NO_CACHE)
def wait_task(client: anthropic.Anthropic, ledger: Ledger, settings: Settings) -> None:
    logger = get_run_logger()
    # The summary at the end needs pandas (~0.4-0.8 s to import): import it while this thread
    # sleeps between polls rather than after the last batch ends.
    threading.Thread(target=importlib.import_module, args=("pandas",), name="import-pandas", daemon=True).start()
    last: list[str] = []
    report_wait = WaitReporter(settings.data_dir, logger.info)  # progress artifact + heartbeat

    def progress(statuses: list[batch_io.BatchStatus]) -> None:
        report_wait(statuses)
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
    for record in ledger.batches_in_state(BatchState.ENDED):
        st = collect_batch(client, ledger, record, data_dir)
        get_run_logger().info("collected batch %s: %s", st.batch_id,
                              ", ".join(f"{v} {k}" for k, v in sorted(st.counts.items())))
        stats.append(st)
    return stats


# -- the steps both flows share ------------------------------------------------------------

def submit_until_settled(client: anthropic.Anthropic, ledger: Ledger, requests: list[PlannedRequest],
                         settings: Settings) -> None:
    """Submit the queued ones of `requests`; while creates are unconfirmed, look them up and
    resubmit only what provably never reached the server."""
    mine = {r.fingerprint for r in requests}
    for _ in range(MAX_SUBMIT_ROUNDS):
        submit_task(client, ledger, quote(requests), settings)
        reconcile_task(client, ledger, settings)
        unknown = ledger.batches_in_state(BatchState.UNKNOWN)
        queued = [r for r in ledger.requests_in_state(RequestState.QUEUED) if r.fingerprint in mine]
        if not unknown and not queued:
            return
        time.sleep(min(settings.poll_initial_seconds, settings.create_grace_seconds))
    get_run_logger().warning("some creates are still unconfirmed; `longbatch collect` or the next run resolves them")


def advance(client: anthropic.Anthropic, ledger: Ledger, settings: Settings,
            known: list[PlannedRequest] | None = None) -> bool:
    """One round after waiting: collect the batches that ended, settle what may be retried,
    build the combining steps whose parts are done, and send all of it. `known` are this run's
    own requests; everything else queued is rebuilt from the inbox and the ledger. True when
    something was sent, so there is more to wait for."""
    collect_task(client, ledger, settings.data_dir)
    requeued = settle_retries(ledger, settings.max_attempts)
    primed = release_primed(ledger)  # issue 12: requests held until their document's cache was primed
    combining = advance_reductions(ledger, settings.data_dir)
    if not requeued and not combining and not primed:
        return False
    if primed:
        get_run_logger().info("sending %d request(s) that read a document cached by an earlier one", len(primed))
    if requeued:
        get_run_logger().info("resubmitting %d request(s) that expired, were canceled or hit transient errors",
                              len(requeued))
    if combining:
        get_run_logger().info("sending %d step(s) combining the part reports of split documents", len(combining))
    failpoint("before-retry")
    submit_until_settled(client, ledger, queued_requests(ledger, settings.inbox_dir, settings.data_dir,
                                                         (known or []) + combining, settings.follow_links), settings)
    return True


def finish_pending(client: anthropic.Anthropic, ledger: Ledger, settings: Settings,
                   known: list[PlannedRequest] | None = None) -> None:
    """Wait and advance until nothing is pending."""
    while True:
        wait_task(client, ledger, settings)
        if not advance(client, ledger, settings, known):
            return


# -- the flows -----------------------------------------------------------------------------

@flow(name="process-documents")
def process_documents(params: RunParameters = RunParameters()) -> dict[str, Any]:  # noqa: B008 - immutable use
    """Ingest every document in the inbox, check each fits with its output budget, submit the
    new work as batches, wait for them, and write the reports and summary.csv."""
    settings = params.settings()
    logger = get_run_logger()
    fix_mmap_threshold()  # a deployment's run too: freed documents go back to the system
    check_api_access(settings)
    model = get_model(settings.model)
    if warning := retirement_warning(model, datetime.date.today()):  # issue 13: retiring soon
        logger.warning(warning)
    prompts = load_prompts(settings.prompts, settings.data_dir)
    inbox = settings.inbox_dir
    paths = discover(inbox, settings.follow_links)
    logger.info("inbox %s: %d file(s); model %s; prompts %s", inbox, len(paths), model.id,
                ", ".join(p.name for p in prompts))

    inbox_docs = Inbox(paths, settings)
    for warning in normalize_betas(settings.betas)[1]:
        logger.warning(warning)
    plan = inbox_docs.plan(prompts, model)
    failpoint("after-ingest")
    ledger = Ledger.open(settings)
    try:
        with open_api(settings) as client:
            online = model_from_api(client, settings.model)
            if online != model:  # the service's facts differ from the built-in table: plan with them
                model = online
                plan = inbox_docs.plan(prompts, model)
            plan = exact_count_task(client, ledger, quote(plan), inbox_docs, prompts, model, settings)
            recover_from_reports(ledger, settings.data_dir)  # a lost ledger: what was paid for is not sent again
            ledger.record_plan(plan_records(plan), {row.source for row in plan.rows})
            failpoint("after-plan")
            check_budget(plan, ledger, settings.budget_usd)
            with standing_caps(ledger, new_work_usd(plan, ledger), settings.daily_cap_usd,  # issue 12
                               settings.monthly_cap_usd):
                claim_plan(ledger, plan)
            if settings.resend_canceled:
                resend_canceled_requests(ledger)  # issue 12: only when asked
            reconcile_task(client, ledger, settings)
            submit_until_settled(client, ledger, plan.requests, settings)
            if settings.wait:
                finish_pending(client, ledger, settings, plan.requests)
        summary = write_summary(ledger, settings.data_dir)
    finally:
        ledger.close()
    return _finished(summary, settings.data_dir, "longbatch run")


@flow(name="collect-batches")
def collect_batches(
    data_dir: str | None = None,
    simulate: bool | None = None,
    wait: bool = False,
    max_attempts: Annotated[int | None, Field(ge=1, le=10)] = None,
    inbox: str | None = None,
    project: str | None = None,
    resend_canceled: bool = False,
) -> dict[str, Any]:
    """Look at every pending batch, assemble what ended, resubmit what may be retried (rebuilt
    from the inbox), and with `wait` go on until nothing is pending.

    Args:
        data_dir: Data directory holding the ledger, results and reports. Empty: LONGBATCH_DATA_DIR if set, else data.
        simulate: Talk to the built-in simulator instead of the Anthropic API. Empty: LONGBATCH_SIMULATE if set.
        wait: Wait until every pending batch has ended.
        max_attempts: Tries per request before giving up on it. Empty: LONGBATCH_MAX_ATTEMPTS if set, else 3.
        inbox: Where the documents are, to rebuild retried requests. Empty: the data directory's inbox/.
        project: On a shared ledger, the project whose work to collect. Empty: LONGBATCH_PROJECT if set, else
            the data directory's resolved path.
        resend_canceled: Send again the requests whose batch the user canceled (never done unasked).
    """
    settings = Settings.given(data_dir=data_dir, simulate=simulate, max_attempts=max_attempts, inbox=inbox,
                              project=project)
    check_api_access(settings)
    ledger = Ledger.open(settings)
    try:
        with open_api(settings) as client:
            if resend_canceled:
                resend_canceled_requests(ledger)  # issue 12: only when asked
            reconcile_task(client, ledger, settings)
            submit_until_settled(client, ledger, queued_requests(ledger, settings.inbox_dir, settings.data_dir,
                                                                 follow_links=settings.follow_links), settings)
            if wait:
                finish_pending(client, ledger, settings)
            else:
                batch_io.poll_round(client, ledger)
                advance(client, ledger, settings)
        summary = write_summary(ledger, settings.data_dir)
    finally:
        ledger.close()
    return _finished(summary, settings.data_dir, "longbatch collect")


def _finished(summary_path: Path, data_dir: Path, title: str) -> State:
    """Publish the run's artifacts; the final state says what happened ("5 complete, 3 error,
    $0.61"), and callers of the flow still get the result dict."""
    outcome = publish_run_artifacts(summary_path, data_dir, title)
    get_run_logger().info("%s. Reports in %s; table in %s.", outcome.message, data_dir.resolve() / "reports",
                          summary_path.resolve())
    return Completed(message=outcome.message, data=_result(summary_path))


def _result(summary_path: Path) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_csv(summary_path)
    return {"summary_csv": str(summary_path), "rows": len(frame),
            "by_status": {str(k): int(v) for k, v in frame["status"].value_counts().items()}}
