"""What each `longbatch` command does, once flows/cli.py has parsed its arguments. Heavy
imports (Prefect, the SDK, pandas) happen inside the commands, so `--help` and the fast
checks stay fast."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


def _planning_values(args: argparse.Namespace) -> dict[str, Any]:
    """What the user gave on the command line; None (not given) leaves it to the environment
    and the defaults in longbatch/settings.py. 0 is a value (refused), not "not given"."""
    return {"data_dir": args.data_dir, "inbox": args.inbox, "model": args.model, "prompts": args.prompts,
            "max_output_tokens": args.max_output_tokens, "min_output_tokens": args.min_output_tokens,
            "betas": args.betas, "pdf_mode": args.pdf_mode, "exact_count": args.exact_count,
            "follow_links": args.follow_links, "project": args.project, "cache": args.cache}


def _preflight(settings: Any) -> None:
    """Checks that need no document: fail fast, before Prefect starts or anything is written."""
    from longbatch.api import check_api_access
    from longbatch.catalog import get_model
    from longbatch.problems import check_data_dir
    from tasks.prompts import load_prompts

    check_api_access(settings)
    check_data_dir(settings.data_dir)
    from longbatch.ledger import Ledger

    ledger = Ledger.existing(settings)  # a damaged ledger is said now, not after ingest
    if ledger is not None:
        ledger.close()
    get_model(settings.model)
    load_prompts(settings.prompts, settings.data_dir)
    _require_inbox(settings)


def _require_inbox(settings: Any) -> None:
    if not settings.inbox_dir.is_dir():
        from longbatch.errors import ConfigError

        raise ConfigError(f"Inbox {settings.inbox_dir} is not a folder. Put documents in it, or name another "
                          "folder: `longbatch run PATH`.")


def _probe(args: argparse.Namespace) -> None:
    """An API that cannot be used at all (unreachable, key refused, malformed URL) is said in
    seconds: before Prefect is even imported, let alone started, and before anything is written."""
    if args.simulate:
        return
    from longbatch.api_errors import probe_api
    from longbatch.client import make_client
    from longbatch.settings import Settings

    settings = Settings.given(data_dir=args.data_dir)
    if settings.api_key is not None:  # no key: the preflight says how to set one
        probe_api(make_client(settings))


def _freeze_imports() -> None:
    """Prefect, the SDK and pandas leave ~300,000 objects from their imports, alive for the whole
    command: out of the garbage collector's sight, they are not walked again at every
    collection that reading documents triggers (measured: ~9 % of in-process PDF reading's CPU,
    bench/ingest_parallel.py)."""
    import gc

    from longbatch.memory import fix_mmap_threshold

    gc.freeze()
    fix_mmap_threshold()  # and document-sized blocks go back to the system when freed


def cmd_run(args: argparse.Namespace) -> int:
    _probe(args)
    from flows.parameters import RunParameters

    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in _planning_values(args).items()}
    params = RunParameters(**values, wait=False if args.no_wait else None, simulate=args.simulate,
                           budget_usd=args.budget_usd, max_attempts=args.max_attempts, dask_address=args.dask_address,
                           resend_canceled=args.resend_canceled, daily_cap_usd=args.daily_cap_usd,
                           monthly_cap_usd=args.monthly_cap_usd)
    settings = params.settings()
    _preflight(settings)
    from flows.process import process_documents
    from longbatch.prefect_server import temporary_prefect_server

    _freeze_imports()
    sent_before = _requests_in_ledger(settings)
    with temporary_prefect_server():  # dies with this process, however it ends
        summary_csv = summary_written_by(lambda: process_documents(params), settings.data_dir)
    _print_summary(summary_csv, settings.data_dir)
    if _requests_in_ledger(settings) == sent_before:
        print("Nothing new to send: every document and prompt here was sent before (or cannot be, for the reason "
              "in its row). A changed document, prompt, model or output budget is sent as new work.")
    elif args.no_wait:
        print("Submitted. Run `longbatch collect" + (" --simulate" if args.simulate else "")
              + "` later (or `longbatch status`) to gather the reports.")
    return 0


def summary_written_by(run_flow: Callable[[], dict[str, Any]], data_dir: Path) -> Path:
    """Run the flow; the summary.csv it wrote. A Prefect server may hand a run's final Completed
    state back without its data (a state proposal sent again after the server stored it is
    answered with the stored copy; seen once, under load, as Prefect's MissingResult): the run
    finished, and its table is where a run always writes it. Any other ending raises as it was."""
    from prefect.exceptions import MissingResult

    try:
        return Path(run_flow()["summary_csv"])
    except MissingResult:
        from tasks.reports import summary_csv_path

        return summary_csv_path(data_dir)


def _requests_in_ledger(settings: Any) -> int:
    """How many distinct requests the ledger holds (one per piece of work ever sent or queued)."""
    from longbatch.ledger import Ledger

    ledger = Ledger.existing(settings)
    if ledger is None:
        return 0
    try:
        return ledger.request_count()
    finally:
        ledger.close()


def _clip(column: Any, width: int) -> Any:
    """Cut text to `width` characters, with an ellipsis where something was cut."""
    text = column.fillna("").astype(str)
    return text.where(text.str.len() <= width, text.str.slice(0, width - 1) + "…")


def cmd_plan(args: argparse.Namespace) -> int:
    import pandas as pd

    from flows.planning import build_plan
    from longbatch.fsutil import atomic_write_text, csv_text
    from longbatch.problems import check_data_dir
    from longbatch.settings import Settings

    _freeze_imports()
    settings = Settings.given(**_planning_values(args), simulate=args.simulate)
    check_data_dir(settings.data_dir)
    _require_inbox(settings)
    import datetime

    from longbatch.catalog import get_model, normalize_betas, retirement_warning

    warnings = normalize_betas(settings.betas)[1] + [retirement_warning(get_model(settings.model),
                                                                        datetime.date.today())]
    for warning in filter(None, warnings):
        print(f"warning: {warning}", file=sys.stderr)
    with _counting_client(settings) as client:
        plan, model = build_plan(settings, client)
    frame = pd.DataFrame([r.csv_record() for r in plan.rows])
    if frame.empty:
        print(f"No documents in {settings.inbox_dir}.")
        return 0
    from flows.planning import expected_for

    expected, expected_note = expected_for(plan, settings)  # the expected cost beside the worst case
    frame["expected_cost_usd"] = frame["custom_id"].map(expected).round(6)
    out = settings.data_dir / "plan.csv"
    atomic_write_text(out, csv_text(frame))
    show = frame[["source", "prompt", "status", "part", "pages", "chars", "cl100k_tokens", "exact_input_tokens",
                  "est_input_tokens", "upper_input_tokens", "granted_max_tokens", "batch", "expected_cost_usd",
                  "max_cost_usd"]].copy()
    for column in ("pages", "exact_input_tokens", "batch"):
        show[column] = show[column].astype("Int64").astype("string").fillna("-")
    # A split document's parts and combining steps sit under its row, named by what they cover.
    is_step = frame["part"] != ""
    show["source"] = _clip(frame["source"], 48).where(~is_step, "  " + _clip(frame["covers"], 46))
    show["batch"] = show["batch"].where(~frame["piece"].isin(["merge", "final"]), "after parts")
    noted = ~is_step & ((frame["status"] != "ready") | frame["parts"].notna())
    if len(frame) > SUMMARY_ROWS_PRINTED:
        # A big inbox: what is not sent, and what may cost the most; every row is in plan.csv.
        not_sent = ~is_step & (frame["status"] != "ready")
        # Only rows that are sent (pandas 3 keeps NaN in nlargest when there are too few others).
        dearest = frame.loc[~is_step & ~not_sent, "max_cost_usd"].dropna().nlargest(PLAN_DEAREST_PRINTED).index
        if not not_sent.any():
            print(f"{len(frame)} rows (every one in {out}); every one is ready to send.")
        else:
            some = f"the {not_sent.sum()}" if not_sent.sum() <= SUMMARY_ROWS_PRINTED else \
                f"the first {SUMMARY_ROWS_PRINTED}"
            print(f"{len(frame)} rows (every one in {out}); {some} not sent:")
            print(show[not_sent].head(SUMMARY_ROWS_PRINTED).to_string(index=False, na_rep="-"))
        if len(dearest):
            print(f"\nThe {len(dearest)} that may cost the most:")
            print(show.loc[dearest].to_string(index=False, na_rep="-"))
        noted &= (not_sent & (not_sent.cumsum() <= SUMMARY_ROWS_PRINTED)) | frame.index.isin(dearest)
    else:
        print(show.to_string(index=False, na_rep="-"))
    notes = frame[noted][["source", "reason"]]
    if not notes.empty:
        print("\nNotes:")
        for _, r in notes.iterrows():
            print(f"  {r['source']}: {r['reason']}")
    steps = len(plan.reductions)
    unsent = sum(1 for r in plan.document_rows if r.status != "ready")
    print(f"\n{len(plan.document_rows)} document row(s), {len(plan.requests)} request(s) in {len(plan.batches)} "
          f"batch(es)" + (f" and {steps} combining step(s) sent once their parts are done" if steps else "")
          + f", for {model.id}. Expected cost ${sum(expected.values()):,.2f} ({expected_note}, cache reads "
          f"and writes as planned); at most ${plan.max_cost_usd:,.2f} if every granted output token is used "
          f"(batch prices, 50% off)"
          + (f"; the {unsent} row(s) that do not fit, cannot be read or are duplicates are not sent and not "
             f"counted" if unsent else "") + f". Written to {out}.")
    return 0


@contextlib.contextmanager
def _counting_client(settings: Any) -> Iterator[Any]:
    """A client for count_tokens when one can be had: the simulator with --simulate (in memory:
    plan leaves nothing behind), the API when a key is set; else None (the plan then says
    which documents await an exact count)."""
    if settings.simulate or settings.api_key is not None:
        from longbatch.api import open_api  # the SDK only when it is used (~0.8 s to import)

        with open_api(settings, keep_state=False) as client:
            yield client
    else:
        if settings.exact_count:
            from longbatch.errors import MissingApiKeyError

            raise MissingApiKeyError()
        yield None


def cmd_collect(args: argparse.Namespace) -> int:
    from flows.process import collect_batches
    from longbatch.api import check_api_access
    from longbatch.problems import check_data_dir
    from longbatch.settings import Settings

    settings = Settings.given(data_dir=args.data_dir, simulate=args.simulate, inbox=args.inbox, project=args.project)
    check_data_dir(settings.data_dir, write=False)
    if not _pending_work(settings):  # nothing to do: no key needed, no Prefect started
        print(f"Nothing pending in {settings.data_dir}: every batch sent from there has been collected.")
        return 0
    check_data_dir(settings.data_dir)
    _probe(args)
    check_api_access(settings)
    from longbatch.prefect_server import temporary_prefect_server

    with temporary_prefect_server():  # dies with this process, however it ends
        summary_csv = summary_written_by(
            lambda: collect_batches(data_dir=str(settings.data_dir), simulate=settings.simulate, wait=args.wait,
                                    inbox=str(args.inbox) if args.inbox else None, project=args.project,
                                    resend_canceled=args.resend_canceled), settings.data_dir)
    _print_summary(summary_csv, settings.data_dir)
    return 0


def _pending_work(settings: Any) -> bool:
    """Anything `collect` would act on: batches not collected, requests to send or resend,
    combining steps waiting for their parts."""
    from longbatch.ledger import Ledger
    from longbatch.records import PENDING_BATCH_STATES, RequestState, StepState

    ledger = Ledger.existing(settings)
    if ledger is None:
        return False
    try:
        return bool(ledger.batches_in_state(*PENDING_BATCH_STATES)
                    or ledger.requests_in_state(RequestState.QUEUED, RequestState.SUBMITTING, RequestState.RETRYABLE)
                    or ledger.reductions_in_state(StepState.WAITING))
    finally:
        ledger.close()


def _ledger_to_read(args: argparse.Namespace, nothing: str) -> Any:
    """The data dir's ledger for a command that only reads it; None (having said `nothing`) when
    there is none."""
    from longbatch.ledger import Ledger
    from longbatch.problems import check_data_dir
    from longbatch.settings import Settings

    settings = Settings.given(data_dir=args.data_dir, project=args.project)
    check_data_dir(settings.data_dir, write=False)
    ledger = Ledger.existing(settings)
    if ledger is None:
        print(f"No ledger in {settings.data_dir}: {nothing}.")
    return ledger


def cmd_status(args: argparse.Namespace) -> int:
    from longbatch.records import PENDING_BATCH_STATES, RequestState, StepState

    ledger = _ledger_to_read(args, "nothing has been submitted from there yet")
    if ledger is None:
        return 0
    pending = ledger.batches_in_state(*PENDING_BATCH_STATES)
    now = time.time()
    if not pending:
        print("No pending batches.")
    for b in pending:
        age = now - (b.created_at or b.intent_at)
        print(f"{b.api_id or b.id}  {b.state:<9}  {b.request_count:>6} request(s)  age {_age(age)}")
    states: dict[str, int] = {}
    for state in RequestState:
        n = len(ledger.requests_in_state(state))
        if n:
            states[state] = n
    print("Requests: " + (", ".join(f"{v} {k}" for k, v in states.items()) or "none"))
    steps = {state: len(ledger.reductions_in_state(state)) for state in StepState}
    if any(steps.values()):
        print("Steps combining part reports: " + ", ".join(f"{v} {k}" for k, v in steps.items() if v)
              + " (waiting = some parts not done yet)")
    ledger.close()
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from flows.usage import usage_report

    ledger = _ledger_to_read(args, "nothing spent")
    if ledger is None:
        return 0
    try:
        records = ledger.usage_rows()
    finally:
        ledger.close()
    try:
        print(usage_report(records, args.by.split(","), args.csv))
    except ValueError as exc:
        print(f"longbatch: --by: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from flows.cancel import cancel_batches

    result = cancel_batches(args.batch_ids, args.all_in_flight, str(args.data_dir) if args.data_dir else None,
                            args.simulate)
    print("\n".join(result["lines"]))
    return 1 if result["failed"] else 0


def cmd_simulator(args: argparse.Namespace) -> int:
    from simulator.engine import SimConfig
    from simulator.server import SimulatorServer

    given = {k: v for k, v in vars(args).items()
             if v is not None and k in SimConfig.model_fields}
    server = SimulatorServer(SimConfig(**given), host=args.host, port=args.port)
    print(f"longbatch simulator on {server.url} — set ANTHROPIC_BASE_URL={server.url} and any "
          "ANTHROPIC_API_KEY. Ctrl-C stops it.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# More rows than this, and the summary printed is the rows that are not complete, then the counts
# (`plan`: the rows that are not sent, and the PLAN_DEAREST_PRINTED that may cost the most).
SUMMARY_ROWS_PRINTED = 50
PLAN_DEAREST_PRINTED = 10


def _print_summary(path: Path, data_dir: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(path)
    if frame.empty:
        print("The inbox is empty: nothing to do.")
        return
    shown = frame
    if len(frame) > SUMMARY_ROWS_PRINTED:
        # A big inbox: the rows that need a look, then the counts; every row is in the table.
        needs_look = frame[frame["status"] != "complete"]
        shown = needs_look.head(SUMMARY_ROWS_PRINTED)
        if shown.empty:
            print(f"{len(frame)} rows, every one complete.")
            _print_counts(frame, path, data_dir)
            return
        some = f"the {len(shown)}" if len(shown) == len(needs_look) else f"the first {len(shown)} of {len(needs_look)}"
        print(f"{len(frame)} rows; {some} not complete:")
    show = shown[["source", "prompt", "status", "output_tokens", "cost_usd", "reason"]].copy()
    # Whole numbers, and "-" where there are none (an Int64 column prints <NA> whatever na_rep says).
    show["output_tokens"] = show["output_tokens"].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    show["source"] = _clip(show["source"], 48)
    show["reason"] = _clip(show["reason"], 70)
    print(show.to_string(index=False, na_rep="-"))
    _print_counts(frame, path, data_dir)


def _print_counts(frame: Any, path: Path, data_dir: Path) -> None:
    counts = frame["status"].value_counts()
    print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()) + f". Reports in {data_dir / 'reports'}; "
          f"table in {path}.")


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "collect": cmd_collect, "status": cmd_status,
            "usage": cmd_usage, "simulator": cmd_simulator, "cancel": cmd_cancel}
