"""The `longbatch` command. Errors the user can act on become one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


def _prefect_defaults() -> None:
    # Prefect's ephemeral server takes ~25 s to start on small machines, over its 20 s
    # default; and there is no network for analytics. Users' own settings win.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,longbatch,flows")


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a flow's exception with its traceback. For errors the user can act on
    (budget, model, key), the one-line message is the whole story: drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from longbatch.errors import LongbatchError

        if record.exc_info and isinstance(record.exc_info[1], LongbatchError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_errors() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_UserErrorsWithoutTraceback())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path,
                   help="data directory holding inbox/, reports/, results/ and the ledger (default: "
                        "LONGBATCH_DATA_DIR, else ./data)")


def _planning(p: argparse.ArgumentParser) -> None:
    p.add_argument("inbox", nargs="?", type=Path, help="folder of documents (default: DATA_DIR/inbox)")
    p.add_argument("--model", help="Claude model id (default: LONGBATCH_MODEL, else claude-sonnet-4-6)")
    p.add_argument("--prompt", action="append", dest="prompts", metavar="NAME_OR_FILE",
                   help="prompt name (built-in: report, summary; or DATA_DIR/prompts/NAME.md) or a template "
                        "file; repeat for several reports per document (default: report)")
    p.add_argument("--max-output-tokens", type=int,
                   help="output tokens to ask per document (default: the most the model allows in a batch, "
                        "300,000 on models that take the 300K beta)")
    p.add_argument("--min-output-tokens", type=int,
                   help="a document that cannot get this much output does not fit (default: 8192)")
    p.add_argument("--beta", action="append", dest="betas", metavar="NAME",
                   help="an extra beta header for every batch (repeatable); the retired "
                        "context-1m-2025-08-07 is dropped with a warning, and the 300K-output beta is "
                        "added automatically where needed")
    p.add_argument("--pdf-mode", choices=["text", "native"],
                   help="text (default): send the text extracted from each PDF; native: send the PDF itself as a "
                        "document block, so the model sees tables, figures and layout (costs image tokens per "
                        "page; split into page ranges over 600 pages (100 below a 1M window) or 32 MB)")
    p.add_argument("--cache", choices=["auto", "prime", "off"],
                   help="prompt caching of documents several prompts read: prime sends one request per document "
                        "first and the others once it has ended; auto primes when that saves at least $0.10 more "
                        "per document and otherwise caches nothing (default: LONGBATCH_CACHE, else auto)")
    p.add_argument("--exact-count", action="store_true", default=None,
                   help="count every document with the API's count_tokens (free), not only those whose "
                        "local estimate is too close to a limit to decide")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longbatch",
        description="Long reports on very long documents with Claude's Message Batches API "
                    "(up to 300K output tokens per document, at half price).",
        epilog="Try it with no key: `longbatch run --simulate` over ./data/inbox. With a key "
               "(ANTHROPIC_API_KEY), `longbatch plan` shows what each document will cost, `longbatch run` "
               "does the job, and `longbatch status` / `collect` follow batches that outlive a run. "
               "`longbatch COMMAND --help` explains each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: ingest, check fit, submit batches, wait, write reports",
                         description="Ingest every document in the inbox, check each fits the model's context "
                                     "window with its output budget (a document that does not is read in parts "
                                     "whose reports are combined by a second batch), submit batches, wait, and "
                                     "write reports/<document>/<prompt>.md, .json and reports/summary.csv.")
    _common(run)
    _planning(run)
    run.add_argument("--simulate", action="store_true", default=None,
                     help="use the built-in local simulator (no API key, no cost; reports are simulated)")
    run.add_argument("--no-wait", action="store_true", help="submit and return; `longbatch collect` finishes")
    run.add_argument("--budget-usd", type=float, help="refuse to submit if the run could cost more than this")
    run.add_argument("--daily-cap-usd", type=float,
                     help="refuse to submit if today's (UTC) billed spend plus the worst case of everything in "
                          "flight and of this run would exceed this (default: LONGBATCH_DAILY_CAP_USD)")
    run.add_argument("--monthly-cap-usd", type=float,
                     help="the same for this month (UTC) (default: LONGBATCH_MONTHLY_CAP_USD)")
    run.add_argument("--max-attempts", type=int,
                     help="tries per request for expired or transiently failed requests (default: 3)")
    run.add_argument("--resend-canceled", action="store_true", default=None,
                     help="send again the requests whose batch the user canceled (never done unasked)")

    plan = sub.add_parser("plan", help="everything up to submission, nothing sent: sizes, tokens, fit, cost",
                          description="Show, per document and prompt, its size, estimated tokens, whether it "
                                      "fits, the granted max_tokens, its batch and the cost estimate; a document "
                                      "too long for one request shows the parts it is read in and the steps "
                                      "combining their reports. Nothing is sent; the table is also written to "
                                      "DATA_DIR/plan.csv.")
    _common(plan)
    _planning(plan)
    plan.add_argument("--simulate", action="store_true", default=None,
                      help="count near-limit documents with the built-in simulator's count_tokens")

    collect = sub.add_parser("collect", help="look at pending batches, assemble what ended, resend retries",
                             description="Poll every pending batch, write the reports of those that ended, "
                                         "resubmit expired, canceled and transiently failed requests (rebuilt "
                                         "from the inbox), and update summary.csv.")
    _common(collect)
    collect.add_argument("--simulate", action="store_true", default=None, help="talk to the built-in simulator")
    collect.add_argument("--wait", action="store_true", help="wait until every pending batch has ended")
    collect.add_argument("--inbox", type=Path,
                         help="where the documents are, to rebuild retried requests (default: DATA_DIR/inbox)")
    collect.add_argument("--resend-canceled", action="store_true",
                         help="send again the requests whose batch the user canceled (never done unasked)")

    cancel = sub.add_parser("cancel", help="cancel batches in flight; what they had not run is never resent unasked",
                            description="Cancel the named batches (see `longbatch status`), or with --all every "
                                        "batch in flight and the requests still queued. Results that finished "
                                        "before the cancel are collected and reported; the rest end as "
                                        "'canceled by user' and are sent again only with --resend-canceled.")
    _common(cancel)
    cancel.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="msgbatch_... or the ledger's lb_... id")
    cancel.add_argument("--all", action="store_true", dest="all_in_flight", help="every batch in flight")
    cancel.add_argument("--simulate", action="store_true", default=None, help="talk to the built-in simulator")

    status = sub.add_parser("status", help="pending batches and requests")
    _common(status)
    usage = sub.add_parser("usage", help="tokens and money spent, from the ledger",
                           description="Tokens and dollars billed, per day, model, prompt and run, with the cache "
                                       "hit rate and what prompt caching saved.")
    _common(usage)
    usage.add_argument("--by", default="day,model,prompt,run", metavar="GROUPS",
                       help="comma-separated groups among day, model, prompt, run (default: all four)")
    usage.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV to FILE")

    sim = sub.add_parser("simulator", help="run the local Batches API simulator as a server",
                         description="Serve the simulator on HOST:PORT. Point longbatch (or any Anthropic SDK) "
                                     "at it with ANTHROPIC_BASE_URL=http://HOST:PORT and any ANTHROPIC_API_KEY. "
                                     "Every option can also be set as LONGBATCH_SIM_<OPTION> in the environment.")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--processing-seconds", type=float, help="time a batch takes to end (default 2)")
    sim.add_argument("--output-tokens", type=int, help="length of each simulated report (default 1500)")
    sim.add_argument("--expiry-seconds", type=float, help="when unfinished batches expire (default 86400)")
    sim.add_argument("--state-dir", type=Path, help="keep batches here so they survive a restart")
    faults = sim.add_argument_group("fault injection (all off by default)")
    faults.add_argument("--fault-rate", type=float, help="chance an HTTP call fails with 429, 500 or 529")
    faults.add_argument("--fault-endpoints", nargs="+", metavar="NAME",
                        help="limit faults to these endpoints: create list retrieve results cancel count_tokens")
    faults.add_argument("--not-found-after-create-seconds", type=float,
                        help="retrieve answers 404 this long after a batch is created")
    faults.add_argument("--drop-after-create-rate", type=float,
                        help="chance a create succeeds but the connection drops before the answer")
    faults.add_argument("--errored-rate", type=float, help="chance a request ends errored (retryable)")
    faults.add_argument("--expired-rate", type=float, help="chance a request ends expired")
    faults.add_argument("--results-bytes-per-second", type=float, help="throttle results downloads")
    faults.add_argument("--seed", type=int, help="seed for the fault dice")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_defaults()
    _quiet_user_errors()
    from pydantic import ValidationError

    from longbatch.errors import LongbatchError

    try:
        return COMMANDS[args.command](args)
    except LongbatchError as exc:
        print(f"longbatch: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValidationError as exc:  # a setting that cannot work: name the flag, drop the traceback
        for error in exc.errors():
            name = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-") if error["loc"] else "settings"
            print(f"longbatch: {name}: {error['msg']}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("longbatch: interrupted; submitted batches go on. `longbatch run` or `collect` resumes.",
              file=sys.stderr)
        return 130


def _planning_values(args: argparse.Namespace) -> dict[str, Any]:
    """What the user gave on the command line; None (not given) leaves it to the environment
    and the defaults in longbatch/settings.py."""
    return {"data_dir": args.data_dir, "inbox": args.inbox, "model": args.model, "prompts": args.prompts,
            "max_output_tokens": args.max_output_tokens, "min_output_tokens": args.min_output_tokens,
            "betas": args.betas, "pdf_mode": args.pdf_mode, "exact_count": args.exact_count,
            "cache": args.cache}


def _preflight(settings: Any) -> None:
    """Checks that need no document: fail fast, before Prefect starts or anything is written."""
    from longbatch.api import check_api_access
    from longbatch.catalog import get_model
    from tasks.prompts import load_prompts

    check_api_access(settings)
    get_model(settings.model)
    load_prompts(settings.prompts, settings.data_dir)
    _require_inbox(settings)


def _require_inbox(settings: Any) -> None:
    if not settings.inbox_dir.is_dir():
        from longbatch.errors import ConfigError

        raise ConfigError(f"Inbox {settings.inbox_dir} is not a folder. Put documents in it, or name another "
                          "folder: `longbatch run PATH`.")


def cmd_run(args: argparse.Namespace) -> int:
    from flows.parameters import RunParameters

    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in _planning_values(args).items()}
    params = RunParameters(**values, wait=False if args.no_wait else None, simulate=args.simulate,
                           budget_usd=args.budget_usd, max_attempts=args.max_attempts,
                           resend_canceled=args.resend_canceled, daily_cap_usd=args.daily_cap_usd,
                           monthly_cap_usd=args.monthly_cap_usd)
    settings = params.settings()
    _preflight(settings)
    from flows.process import process_documents

    result = process_documents(params)
    _print_summary(Path(result["summary_csv"]), settings.data_dir)
    if args.no_wait:
        print("Submitted. Run `longbatch collect" + (" --simulate" if args.simulate else "")
              + "` later (or `longbatch status`) to gather the reports.")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import pandas as pd

    from flows.planning import build_plan
    from longbatch.fsutil import atomic_write_text
    from longbatch.settings import Settings

    settings = Settings.given(**_planning_values(args), simulate=args.simulate)
    _require_inbox(settings)
    from longbatch.catalog import normalize_betas

    for warning in normalize_betas(settings.betas)[1]:
        print(f"warning: {warning}", file=sys.stderr)
    with _counting_client(settings) as client:
        plan, model = build_plan(settings, client)
    frame = pd.DataFrame([r.csv_record() for r in plan.rows])
    if frame.empty:
        print(f"No documents in {settings.inbox_dir}.")
        return 0
    from flows.planning import expected_for

    expected, expected_note = expected_for(plan, settings)  # issue 12: expected beside the worst case
    frame["expected_cost_usd"] = frame["custom_id"].map(expected).round(6)
    out = settings.data_dir / "plan.csv"
    atomic_write_text(out, frame.to_csv(index=False))
    show = frame[["source", "prompt", "status", "part", "pages", "chars", "cl100k_tokens", "exact_input_tokens",
                  "est_input_tokens", "upper_input_tokens", "granted_max_tokens", "batch", "expected_cost_usd",
                  "max_cost_usd"]].copy()
    for column in ("pages", "exact_input_tokens", "batch"):
        show[column] = show[column].astype("Int64").astype("string").fillna("-")
    # A split document's parts and combining steps sit under its row, named by what they cover.
    is_step = frame["part"] != ""
    show["source"] = frame["source"].str.slice(0, 48).where(~is_step, "  " + frame["covers"].str.slice(0, 46))
    show["batch"] = show["batch"].where(~frame["piece"].isin(["merge", "final"]), "after parts")
    print(show.to_string(index=False, na_rep="-"))
    notes = frame[~is_step & ((frame["status"] != "ready") | frame["parts"].notna())][["source", "reason"]]
    if not notes.empty:
        print("\nNotes:")
        for _, r in notes.iterrows():
            print(f"  {r['source']}: {r['reason']}")
    steps = len(plan.reductions)
    print(f"\n{len(plan.document_rows)} document row(s), {len(plan.requests)} request(s) in {len(plan.batches)} "
          f"batch(es)" + (f" and {steps} combining step(s) sent once their parts are done" if steps else "")
          + f", for {model.id}. Expected cost ${sum(expected.values()):,.2f} ({expected_note}, cache reads "
          f"and writes as planned); at most ${plan.max_cost_usd:,.2f} if every granted output token is used "
          f"(batch prices, 50% off). Written to {out}.")
    return 0


@contextlib.contextmanager
def _counting_client(settings: Any) -> Iterator[Any]:
    """A client for count_tokens when one can be had: the simulator with --simulate (in memory:
    plan leaves nothing behind), the API when a key is set; else None (the plan then says
    which documents await an exact count)."""
    from longbatch.api import open_api

    if settings.simulate or settings.api_key is not None:
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
    from longbatch.settings import Settings

    settings = Settings.given(data_dir=args.data_dir, simulate=args.simulate, inbox=args.inbox)
    check_api_access(settings)
    result = collect_batches(data_dir=str(settings.data_dir), simulate=settings.simulate, wait=args.wait,
                             inbox=str(args.inbox) if args.inbox else None, resend_canceled=args.resend_canceled)
    _print_summary(Path(result["summary_csv"]), settings.data_dir)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from longbatch.ledger import Ledger
    from longbatch.records import PENDING_BATCH_STATES, RequestState, StepState
    from longbatch.settings import Settings

    settings = Settings.given(data_dir=args.data_dir)
    ledger = Ledger.existing(settings)
    if ledger is None:
        print(f"No ledger in {settings.data_dir}: nothing has been submitted from there yet.")
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
    from longbatch.ledger import Ledger
    from longbatch.settings import Settings

    ledger = Ledger.existing(Settings.given(data_dir=args.data_dir))
    if ledger is None:
        print(f"No ledger in {args.data_dir or 'the data directory'}: nothing spent.")
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


def _print_summary(path: Path, data_dir: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(path)
    if frame.empty:
        print("The inbox is empty: nothing to do.")
        return
    show = frame[["source", "prompt", "status", "output_tokens", "cost_usd", "reason"]].copy()
    show["output_tokens"] = show["output_tokens"].astype("Int64")
    show["source"] = show["source"].str.slice(0, 48)
    show["reason"] = show["reason"].fillna("").str.slice(0, 70)
    print(show.to_string(index=False, na_rep="-"))
    counts = frame["status"].value_counts()
    print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()) + f". Reports in {data_dir / 'reports'}; "
          f"table in {path}.")


def cmd_cancel(args: argparse.Namespace) -> int:
    from flows.cancel import cancel_batches

    result = cancel_batches(args.batch_ids, args.all_in_flight, str(args.data_dir) if args.data_dir else None,
                            args.simulate)
    print("\n".join(result["lines"]))
    return 1 if result["failed"] else 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "collect": cmd_collect, "status": cmd_status,
            "usage": cmd_usage, "simulator": cmd_simulator, "cancel": cmd_cancel}


if __name__ == "__main__":
    sys.exit(main())
