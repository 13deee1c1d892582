"""Issue 13, the API side of a first contact: the key never written anywhere (defect 5), an
unreachable API said fast (6), a refused key, a malformed base URL and an unreadable create
answer each one clear line (7), and a model catalogue checked against its sources (11)."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import anthropic
import pandas as pd
import pytest

from conftest import cli_env, longbatch_cmd
from longbatch.catalog import (ALIASES, BUILTIN_MODELS, OUTPUT_300K_BETA, TOK_2025, TOK_2026, get_model,
                               retirement_warning)
from longbatch.errors import ApiAuthError, ApiResponseError, ApiUnreachableError, ConfigError, UnknownModelError
from longbatch.ledger import Ledger
from longbatch.records import NewRequest
from longbatch.redact import REDACTED, install_log_redaction, redact, redact_file, register_secret
from simulator.engine import SimConfig
from simulator.server import SimulatorServer

SECRET = "sk-ant-api03-ECHOED-by-a-server-0123456789abcdef"
OTHER_SHAPED = "sk-ant-admin01-someone-elses-key-ABCDEF"
REFUSED_PORT_URL = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused


def run_cli(*args: str, env: dict[str, str], timeout: float = 240):
    import subprocess

    return subprocess.run([*longbatch_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=env)


def memo_data_dir(tmp_path: Path) -> Path:
    """A data dir whose inbox holds one short memo."""
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    (data_dir / "inbox" / "memo.txt").write_text("The board approved the budget on Monday. " * 50)
    return data_dir


# -- defect 5: redaction ---------------------------------------------------------------------

def test_redact_removes_the_key_key_shapes_and_auth_headers(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "plain-configured-key-42")
    text = ("invalid request; headers: {'x-api-key': 'plain-configured-key-42', 'Authorization': 'Bearer tok.en-1'} "
            f"also {OTHER_SHAPED} and x-api-key=abc123def and authorization: Basic dXNlcjpwdw== end")
    out = redact(text)
    for secret in ("plain-configured-key-42", "tok.en-1", OTHER_SHAPED, "abc123def", "dXNlcjpwdw=="):
        assert secret not in out
    assert out.count(REDACTED) >= 5 and out.startswith("invalid request; headers:") and out.endswith(" end")
    # Ordinary text is left alone, and empty stays empty.
    assert redact("max_tokens: 500000 > 300000 for claude-sonnet-4-6") == "max_tokens: 500000 > 300000 for claude-sonnet-4-6"
    assert redact(None) is None and redact("") == ""


def test_a_registered_key_is_redacted_even_when_not_key_shaped(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    register_secret("proxy-token-7f3a9b2c")
    assert redact("echo: proxy-token-7f3a9b2c!") == f"echo: {REDACTED}!"
    register_secret("x")  # too short to be a secret on its own: not blanked everywhere
    assert redact("x marks the spot") == "x marks the spot"


def test_results_archive_is_rewritten_redacted_and_stays_json(tmp_path):
    import json

    path = tmp_path / "b.jsonl"
    good = json.dumps({"custom_id": "a", "result": {"type": "succeeded"}})
    bad = json.dumps({"custom_id": "b", "result": {"type": "errored", "error": {"error": {
        "type": "invalid_request_error", "message": f"bad (x-api-key: {SECRET})"}}}})
    path.write_text(good + "\n" + bad + "\n")
    assert redact_file(path) is True
    lines = path.read_text().splitlines()
    assert SECRET not in path.read_text() and lines[0] == good
    assert REDACTED in json.loads(lines[1])["result"]["error"]["error"]["message"]
    clean = tmp_path / "c.jsonl"
    clean.write_text(good + "\n")
    assert redact_file(clean) is False and clean.read_text() == good + "\n"


def test_log_records_are_redacted_message_and_traceback():
    import io

    install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("longbatch.test-redaction")
    logger.addHandler(handler)
    try:
        logger.error("create failed: %s", f"x-api-key: {SECRET}")
        try:
            raise RuntimeError(f"server said Authorization: Bearer {SECRET}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out and out.count(REDACTED) >= 2 and "RuntimeError" in out


def _all_text_under(path: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in path.rglob("*") if p.is_file()]


def _prefect_records() -> tuple[list[str], list[str]]:
    """Every log message and every flow run's parameters and state message Prefect holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as prefect_client:
        logs = []
        while batch := prefect_client.read_logs(limit=200, offset=len(logs)):
            logs.extend(batch)
        runs = prefect_client.read_flow_runs(limit=200, sort=FlowRunSort.ID_DESC)
    return [log.message for log in logs], [f"{run.parameters} {run.state.message if run.state else ''}"
                                           for run in runs]


def _assert_key_nowhere(data_dir: Path, *outputs: str) -> None:
    for path, data in _all_text_under(data_dir):
        assert SECRET.encode() not in data, path
    for output in outputs:
        assert SECRET not in output
    logs, runs = _prefect_records()
    assert not any(SECRET in m for m in logs)
    assert not any(SECRET in r for r in runs)


@pytest.mark.sim_env(LONGBATCH_SIM_ECHO_KEY_IN_ERRORS="true")
def test_key_echoed_in_errored_results_is_written_nowhere(tmp_path, standalone_simulator):
    url, _ = standalone_simulator
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    (data_dir / "inbox" / "bad.txt").write_text("A memo. [[simulate:error=invalid_request_error]] " * 50)
    (data_dir / "inbox" / "good.txt").write_text("The board approved the budget on Monday. " * 50)
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET, LONGBATCH_POLL_INITIAL_SECONDS="0.2",
                  PREFECT_LOGGING_LEVEL="DEBUG")
    proc = run_cli("run", "--data-dir", str(data_dir), "--max-output-tokens", "2000", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = pd.read_csv(data_dir / "reports" / "summary.csv").set_index("source")
    assert summary.loc["good.txt", "status"] == "complete"
    # The server did echo the key (so this test tests something), and it was redacted.
    assert summary.loc["bad.txt", "status"] == "failed" and REDACTED in summary.loc["bad.txt", "reason"]
    _assert_key_nowhere(data_dir, proc.stdout, proc.stderr)


@pytest.mark.sim_env(LONGBATCH_SIM_ECHO_KEY_IN_ERRORS="true", LONGBATCH_SIM_FAULT_RATE="1",
                     LONGBATCH_SIM_FAULT_ENDPOINTS='["create"]', LONGBATCH_SIM_FAULT_STATUSES="[400]")
def test_key_echoed_in_a_400_on_create_is_written_nowhere(tmp_path, standalone_simulator):
    url, _ = standalone_simulator
    data_dir = memo_data_dir(tmp_path)
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET, LONGBATCH_POLL_INITIAL_SECONDS="0.2",
                  PREFECT_LOGGING_LEVEL="DEBUG")
    proc = run_cli("run", "--data-dir", str(data_dir), "--max-output-tokens", "2000", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = pd.read_csv(data_dir / "reports" / "summary.csv").iloc[0]
    assert "HTTP 400" in row["reason"] and REDACTED in row["reason"]
    with sqlite3.connect(data_dir / "ledger.sqlite") as db:
        errors = [e for (e,) in db.execute("select error from batches")]
    assert errors and all(REDACTED in e for e in errors)
    _assert_key_nowhere(data_dir, proc.stdout, proc.stderr)


# -- defect 6: an API that cannot be reached -------------------------------------------------

def test_unreachable_api_is_one_line_fast_and_leaves_nothing_pending(tmp_path):
    data_dir = memo_data_dir(tmp_path)
    env = cli_env(ANTHROPIC_BASE_URL=REFUSED_PORT_URL, ANTHROPIC_API_KEY=SECRET)
    started = time.monotonic()
    proc = run_cli("run", "--data-dir", str(data_dir), env=env)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert took < 30, f"took {took:.0f} s"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot reach the API" in lines[0] and "Nothing was sent" in lines[0]
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    assert not (data_dir / "ledger.sqlite").exists()  # nothing planned, nothing pending
    status = run_cli("status", "--data-dir", str(data_dir), env=env)
    assert "pending" not in status.stdout.replace("No pending", "")


def test_unreachable_api_stops_the_flow_before_anything_is_claimed(data_dir, monkeypatch):
    from flows.process import RunParameters, process_documents

    (data_dir / "inbox" / "memo.txt").write_text("The board approved the budget on Monday. " * 50)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", REFUSED_PORT_URL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    started = time.monotonic()
    with pytest.raises(ApiUnreachableError, match="Cannot reach"):
        process_documents(RunParameters(data_dir=str(data_dir)))
    assert time.monotonic() - started < 60
    ledger = Ledger.for_data_dir(data_dir)
    try:
        assert ledger.batches_in_state("intent", "unknown", "submitted") == []
        assert ledger.requests_in_state("queued") == [] and ledger.requests_in_state("submitting") == []
    finally:
        ledger.close()


def _one_batch_plan(tmp_path: Path):
    from tasks.build import build_request
    from tasks.ingest import read_document
    from tasks.packing import pack
    from tasks.prompts import load_prompts

    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    (inbox / "memo.txt").write_text("The board approved the budget on Monday. " * 50)
    doc = read_document(inbox / "memo.txt", inbox)
    req = build_request(doc, load_prompts(["report"], tmp_path)[0], get_model("claude-sonnet-4-6"), 2_000)
    ledger = Ledger.for_data_dir(tmp_path)
    ledger.claim(NewRequest(req.fingerprint, req.custom_id, req.doc_id, "memo.txt", doc.sha256, req.prompt,
                            req.model, req.max_tokens, req.betas))
    (plan,) = pack([req])
    return ledger, plan, req


def test_a_refused_connection_on_create_is_a_plain_failure_not_an_unknown(tmp_path):
    from tasks.batches import submit_batch

    ledger, plan, req = _one_batch_plan(tmp_path)
    client = anthropic.Anthropic(api_key=SECRET, base_url=REFUSED_PORT_URL, max_retries=0)
    with pytest.raises(ApiUnreachableError):
        submit_batch(client, ledger, plan)
    assert ledger.batches_in_state("unknown") == []
    (row,) = ledger.requests_in_state("failed")
    assert row.error_type == "create_failed"  # never reached the API: the next run sends it
    ledger.close()


def test_a_connection_dropped_after_create_stays_unknown(tmp_path):
    from tasks.batches import submit_batch

    ledger, plan, _ = _one_batch_plan(tmp_path)
    with SimulatorServer(SimConfig(drop_after_create_rate=1.0)) as server:
        client = anthropic.Anthropic(api_key=SECRET, base_url=server.url, max_retries=0)
        outcome = submit_batch(client, ledger, plan)
    assert outcome.state == "unknown" and len(ledger.batches_in_state("unknown")) == 1
    ledger.close()


# -- defect 7: a refused key, a malformed URL, an unreadable create answer ---------------------

@pytest.mark.sim_env(LONGBATCH_SIM_REQUIRE_API_KEY="sk-ant-api03-the-only-good-key-000000")
def test_a_refused_key_says_check_the_key(tmp_path, standalone_simulator):
    url, state = standalone_simulator
    data_dir = memo_data_dir(tmp_path)
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET)
    for command in ("run", "plan", "collect"):  # collect is asked after the refused run left work pending
        if command == "collect":
            Ledger.for_data_dir(data_dir).claim(NewRequest("f" * 64, "memo--report", "memo", "memo.txt", "0" * 64,
                                                           "report", "claude-sonnet-4-6", 1000, ()))
        proc = run_cli(command, "--data-dir", str(data_dir), *(["--exact-count"] if command == "plan" else []),
                       env=env)
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "ANTHROPIC_API_KEY" in lines[0] and "401" in lines[0], (command, proc.stderr)
        assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    assert not list(state.glob("msgbatch_*.json"))


def test_a_refused_key_on_create_stops_the_run(tmp_path):
    from tasks.batches import submit_batch

    ledger, plan, _ = _one_batch_plan(tmp_path)
    with SimulatorServer(SimConfig(require_api_key="sk-ant-api03-the-only-good-key-000000")) as server:
        client = anthropic.Anthropic(api_key=SECRET, base_url=server.url, max_retries=0)
        with pytest.raises(ApiAuthError, match="ANTHROPIC_API_KEY"):
            submit_batch(client, ledger, plan)
    assert ledger.requests_in_state("failed")[0].error_type == "create_failed"
    ledger.close()


@pytest.mark.parametrize("base_url", ["127.0.0.1:8765", "http//api.anthropic.com", "ftp://example.org",
                                      "not a url", "http://", "https://host:port"])
def test_a_malformed_base_url_is_one_line_before_anything(tmp_path, base_url):
    from longbatch.client import check_base_url

    with pytest.raises(ConfigError, match="ANTHROPIC_BASE_URL"):
        check_base_url(base_url)
    if base_url == "127.0.0.1:8765":  # and through the CLI, as a user meets it
        (tmp_path / "inbox").mkdir()
        proc = run_cli("run", "--data-dir", str(tmp_path), env=cli_env(ANTHROPIC_BASE_URL=base_url,
                                                                          ANTHROPIC_API_KEY=SECRET))
        assert proc.returncode == 2 and "http:// or https://" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / "ledger.sqlite").exists()


def test_good_base_urls_pass():
    from longbatch.client import check_base_url

    for url in (None, "https://api.anthropic.com", "http://127.0.0.1:8765", "https://proxy.example/v1/"):
        check_base_url(url)


@pytest.mark.parametrize("body", ["json", "html"])
def test_an_unreadable_create_answer_is_unknown_and_recovered_without_a_second_create(tmp_path, body):
    from tasks.batches import recover_unknown_batches, submit_batch

    ledger, plan, req = _one_batch_plan(tmp_path)
    config = SimConfig(bogus_create_body=body, processing_seconds=0.2)
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key=SECRET, base_url=server.url, max_retries=0)
        with pytest.raises(ApiResponseError, match="may have been made"):
            submit_batch(client, ledger, plan)
        # The batch exists on the server; the ledger says "unknown", never "failed": a rerun
        # must not send it again.
        (made,) = server.sim.create_log
        assert [b.state for b in ledger.batches_in_state("unknown")] == ["unknown"]
        assert ledger.requests_in_state("queued") == [] and ledger.requests_in_state("failed") == []
        adopted = recover_unknown_batches(client, ledger, 120.0, tmp_path / "results")
        assert adopted == [made[0]] and len(server.sim.create_log) == 1
    ledger.close()


@pytest.mark.sim_env(LONGBATCH_SIM_BOGUS_CREATE_BODY="json")
def test_an_unreadable_create_answer_through_the_cli(tmp_path, standalone_simulator):
    url, state = standalone_simulator
    data_dir = memo_data_dir(tmp_path)
    env = cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=SECRET)
    proc = run_cli("run", "--data-dir", str(data_dir), "--max-output-tokens", "2000", env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "not a batch" in proc.stderr and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("longbatch:")] == \
        [proc.stderr.strip().splitlines()[-1]]
    assert len(list(state.glob("msgbatch_*.json"))) == 1
    status = run_cli("status", "--data-dir", str(data_dir), env=env)
    assert "unknown" in status.stdout


# -- defect 11: the model catalogue ----------------------------------------------------------

TODAY = dt.date(2026, 11, 24)


def test_sonnet_45_warns_of_its_retirement_with_date_and_replacement():
    spec = get_model("claude-sonnet-4-5-20250929")
    warning = retirement_warning(spec, TODAY)
    assert warning is not None and "2026-11-30" in warning and "claude-sonnet-5-5" in warning and "6 days" in warning
    assert retirement_warning(spec, dt.date(2026, 10, 30)) is None  # 31 days ahead
    assert retirement_warning(spec, dt.date(2026, 10, 31)) is not None  # exactly 30 days ahead
    assert retirement_warning(spec, dt.date(2026, 10, 29)) is None  # 32 days ahead
    assert "due to retire" in retirement_warning(spec, dt.date(2026, 12, 2))
    for model_id in ("claude-sonnet-4-6", "claude-opus-5-5", "claude-haiku-4-5"):
        assert retirement_warning(get_model(model_id), TODAY) is None


@pytest.mark.parametrize(("model_id", "replacement"), [
    ("claude-sonnet-4-0", "claude-sonnet-4-6"), ("claude-sonnet-4-20250514", "claude-sonnet-4-6"),
    ("claude-opus-4-0", "claude-opus-4-8"), ("claude-opus-4-20250514", "claude-opus-4-8")])
def test_models_retired_on_2026_06_15_are_refused_with_their_replacement(model_id, replacement):
    with pytest.raises(UnknownModelError, match=f"2026-06-15.*{replacement}"):
        get_model(model_id)


def test_catalogue_facts_match_their_sources():
    m = BUILTIN_MODELS
    # Windows and outputs (model pages); 300K beta per DESIGN and the model pages; never Haiku.
    for model_id in ("claude-opus-5-5", "claude-sonnet-5-5", "claude-opus-5", "claude-sonnet-5", "claude-opus-4-8",
                     "claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6"):
        assert (m[model_id].context_window, m[model_id].max_output, m[model_id].supports_300k) == \
            (1_000_000, 128_000, True)
        assert m[model_id].betas_for(300_000) == (OUTPUT_300K_BETA,) and m[model_id].betas_for(128_000) == ()
    for model_id in ("claude-sonnet-4-5", "claude-haiku-4-5"):
        assert (m[model_id].context_window, m[model_id].max_output, m[model_id].supports_300k) == \
            (200_000, 64_000, False)
    prices = {"claude-opus-5-5": (4, 20), "claude-sonnet-5-5": (2, 10), "claude-opus-5": (5, 25),
              "claude-sonnet-5": (2, 10), "claude-opus-4-8": (5, 25), "claude-opus-4-6": (5, 25),
              "claude-sonnet-4-6": (3, 15), "claude-sonnet-4-5": (3, 15), "claude-haiku-4-5": (1, 5)}
    for model_id, (inp, out) in prices.items():
        assert (m[model_id].input_usd_per_mtok, m[model_id].output_usd_per_mtok) == (inp, out), model_id
    # Tokenizers: the newer one from Opus 4.7 on.
    assert {i for i, s in m.items() if s.tokenizer == TOK_2025} == {
        "claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-sonnet-4-0",
        "claude-opus-4-0"}
    assert m["claude-opus-4-7"].tokenizer == TOK_2026
    # Minimum cacheable prompt: sourced figures, None where no source was found.
    assert {i: s.min_cache_tokens for i, s in m.items() if s.lifecycle != "retired"} == {
        "claude-opus-5-5": None, "claude-sonnet-5-5": None, "claude-opus-5": 512, "claude-sonnet-5": 1_024,
        "claude-opus-4-8": 1_024, "claude-opus-4-7": 2_048, "claude-opus-4-6": 4_096, "claude-sonnet-4-6": 1_024,
        "claude-sonnet-4-5": 1_024, "claude-haiku-4-5": 4_096}
    # Lifecycle: only Sonnet 4.5 deprecated (retiring 2026-11-30); two retired; aliases resolve.
    assert {i: (s.lifecycle, s.retires_on) for i, s in m.items() if s.lifecycle != "active"} == {
        "claude-sonnet-4-5": ("deprecated", dt.date(2026, 11, 30)),
        "claude-sonnet-4-0": ("retired", dt.date(2026, 6, 15)), "claude-opus-4-0": ("retired", dt.date(2026, 6, 15))}
    assert all(target in m for target in ALIASES.values())
    assert all(s.replacement in m for s in m.values() if s.replacement)


def test_simulator_models_api_serves_the_same_catalogue(client):
    served = {info.id: info for info in client.models.list(limit=1000)}
    assert set(served) == set(BUILTIN_MODELS)
    for model_id, spec in BUILTIN_MODELS.items():
        info = served[model_id]
        assert (info.max_input_tokens, info.max_tokens, info.lifecycle) == \
            (spec.context_window, spec.max_output, spec.lifecycle)


def test_run_warns_of_a_model_retiring_soon(tmp_path):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "memo.txt").write_text("The board approved the budget on Monday. " * 50)
    proc = run_cli("plan", "--data-dir", str(tmp_path), "--model", "claude-sonnet-4-5", env=cli_env())
    assert proc.returncode == 0, proc.stderr
    if dt.date.today() <= dt.date(2026, 11, 30):  # the warning is about a real date
        assert "warning: claude-sonnet-4-5 retires on 2026-11-30" in proc.stderr and "claude-sonnet-5-5" in proc.stderr


# -- no request sends sampling parameters (the newest models refuse non-defaults) --------------

SAMPLING = {"temperature", "top_p", "top_k"}


def test_no_request_of_any_kind_sends_sampling_parameters(data_dir, monkeypatch, corpus):
    """Whole documents, parts, combining steps (text mode) and native PDF requests, as sent over
    HTTP to a simulator that (like Opus 4.7 and later) refuses non-default sampling values."""
    from flows.process import RunParameters, process_documents

    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.1")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.3")
    paragraph = "The treasurer reported on the reserve fund and the board asked three questions about it. " * 6
    (data_dir / "inbox" / "long.txt").write_text("\n\n".join(f"Item {i}. {paragraph}" for i in range(120)))
    (data_dir / "inbox" / "short.txt").write_text("A short memo about the budget. " * 40)
    shutil.copy(corpus / "pdf/paper_tracemonkey_pldi2009_14p.pdf", data_dir / "inbox" / "paper.pdf")
    config = SimConfig(processing_seconds=0.2, output_tokens=300,
                       model_overrides={"claude-opus-5-5": {"context_window": 30_000}})
    with SimulatorServer(config) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-sampling-test")
        for mode in ("text", "native"):
            process_documents(RunParameters(data_dir=str(data_dir), model="claude-opus-5-5", pdf_mode=mode,
                                            max_output_tokens=4_000, min_output_tokens=1_000))
        sent = [r for batch in server.sim._batches.values() for r in batch.requests]
    kinds = set()
    for request in sent:
        assert not SAMPLING & set(request["params"]), request["custom_id"]
        cid = request["custom_id"]
        content = request["params"]["messages"][0]["content"]
        blocks = content if isinstance(content, list) else []  # text is a list of blocks too (cacheable)
        native = any(isinstance(b, dict) and b.get("type") == "document" for b in blocks)
        kinds.add("native" if native else "part" if "-p" in cid.split("--")[-1]
                  else "final" if cid.endswith("-f") else "whole")
    assert kinds == {"whole", "part", "final", "native"}
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert set(summary["status"]) == {"complete"}, summary[["source", "status", "reason"]]


def test_a_failure_quoting_the_key_is_raised_redacted(tmp_path):
    """A non-transient error while polling (here a 400 that echoes the headers) reaches Prefect
    and the user as an ApiError without the key."""
    from tasks.batches import poll_round

    ledger, plan, _ = _one_batch_plan(tmp_path)
    from tasks.batches import submit_batch

    config = SimConfig(echo_key_in_errors=True, processing_seconds=30)
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key=SECRET, base_url=server.url, max_retries=0)
        assert submit_batch(client, ledger, plan).state == "submitted"
        server.sim.config.fault_rate, server.sim.config.fault_statuses = 1.0, [400]
        server.sim.config.fault_endpoints = ["retrieve"]
        with pytest.raises(Exception) as raised:
            poll_round(client, ledger)
    assert SECRET not in str(raised.value) and REDACTED in str(raised.value) and "HTTP 400" in str(raised.value)
    ledger.close()
