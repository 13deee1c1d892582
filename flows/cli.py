"""The `longbatch` command. Errors the user can act on become one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flows.commands import COMMANDS, EXIT_USER_ERROR


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
        from longbatch.problems import explain

        if record.exc_info and record.exc_info[1] is not None and explain(record.exc_info[1]):
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
    p.add_argument("--project", help="on a shared ledger (LONGBATCH_DATABASE_URL), the project this work belongs "
                                     "to; runs of one project share it (default: LONGBATCH_PROJECT, else the data "
                                     "directory's resolved path)")


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
    p.add_argument("--follow-links", action="store_true", default=None,
                   help="read files and folders that links in the inbox point to, even outside it (default: such "
                        "links are refused, each with a row in the summary saying so)")
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
    run.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                     help="read and count the documents on this Dask scheduler's workers (pip install "
                          "'longbatch[dask]'; they must see the inbox at the same path; default: "
                          "LONGBATCH_DASK_ADDRESS, else this machine)")

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

    status = sub.add_parser("status", help="pending batches and requests",
                            description="List the batches sent from the data dir that are not collected yet (their "
                                        "state, request count and age), the ledger's requests by state, and any "
                                        "steps waiting to combine the part reports of split documents. Reads the "
                                        "ledger only: nothing is sent and no key is needed.")
    _common(status)
    usage = sub.add_parser("usage", help="tokens and money spent, from the ledger",
                           description="Tokens and dollars billed for every succeeded request in the ledger, "
                                       "per day, model, prompt and run, with the cache hit rate and what prompt "
                                       "caching saved (batch prices, from the usage the API returned); errored, "
                                       "canceled and expired requests are not billed. Reads the ledger only: "
                                       "nothing is sent and no key is needed.")
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
    faults.add_argument("--upload-bytes-per-second", type=float, help="read request bodies this fast (a slow link)")
    faults.add_argument("--seed", type=int, help="seed for the fault dice")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_defaults()
    _quiet_user_errors()
    from longbatch.errors import LongbatchError
    from longbatch.problems import explain
    from longbatch.redact import install_log_redaction, redact

    install_log_redaction()
    try:
        return COMMANDS[args.command](args)
    except LongbatchError as exc:
        print(f"longbatch: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("longbatch: interrupted; submitted batches go on. `longbatch run` or `collect` resumes.",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - what the user can act on is one line; the rest is a bug
        message = explain(exc)  # bad values, a full or read-only disk, a damaged ledger
        if message is not None:
            print(f"longbatch: {redact(message)}", file=sys.stderr)
            return EXIT_USER_ERROR
        import traceback

        print(redact(traceback.format_exc()), file=sys.stderr, end="")  # a bug keeps its traceback, never the key
        return 1


if __name__ == "__main__":
    sys.exit(main())
