"""Exactly once, nothing lost: SIGKILL at every point of the lifecycle, transient faults on every
endpoint, and two runs at once. The proof is read from the simulator's own records of creates."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, cli_env, longbatch_cmd
from longbatch.failpoints import POINTS
from simulator.engine import SimConfig
from simulator.server import SimulatorServer

TERMINAL = {"complete", "truncated", "refused", "failed", "error", "does_not_fit", "duplicate"}
PROSE = "The auditors examined every ledger entry for the fiscal year. Their findings follow below. " * 25


def make_inbox(inbox: Path, corpus: Path) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(corpus / "text/sec_10k_apple.md", inbox / "apple.md")
    shutil.copy(corpus / "pdf/enc_owner_restricted_rc4_dmca_18p.pdf", inbox / "dmca.pdf")
    shutil.copy(corpus / "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf", inbox / "locked.pdf")
    (inbox / "memo.txt").write_text(PROSE, encoding="utf-8")
    (inbox / "expires.txt").write_text(PROSE + "[[simulate:expired]]", encoding="utf-8")


def creates_per_custom_id(state_dir: Path) -> Counter:
    counts: Counter = Counter()
    for path in state_dir.glob("msgbatch_*.json"):
        counts.update(json.loads(path.read_text())["custom_ids"])  # the simulator's record of each create
    return counts


def assert_every_document_settled(data_dir: Path) -> pd.DataFrame:
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert set(summary["status"]) <= TERMINAL, summary[["source", "status", "reason"]].to_string()
    for _, row in summary[summary["status"] == "complete"].iterrows():
        assert (data_dir / row["report"]).is_file()
        assert (data_dir / row["report"]).with_suffix(".json").is_file()
    return summary


@pytest.fixture(autouse=True)
def shared_ledger(ledger_url, monkeypatch):
    """Every test here runs on the data dir's own SQLite ledger, then on a PostgreSQL database
    (runs started as processes inherit it through the environment)."""
    if ledger_url:
        monkeypatch.setenv("LONGBATCH_DATABASE_URL", ledger_url)
    return ledger_url


def succeeded_per_custom_id(state_dir: Path) -> Counter:
    """From the simulator's own records: how many times each custom_id succeeded (was billed)."""
    batches = list(state_dir.glob("msgbatch_*.json"))
    results = list(state_dir.glob("msgbatch_*.results.jsonl"))
    assert len(results) == len(batches), "every batch the server made was collected"
    counts: Counter = Counter()
    for path in results:
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if item["result"]["type"] == "succeeded":
                counts[item["custom_id"]] += 1
    return counts


def fast_polling(monkeypatch: pytest.MonkeyPatch, create_grace: str) -> None:
    """In-process runs: poll fast; `create_grace` is how long a lost create may take to appear."""
    monkeypatch.setenv("LONGBATCH_POLL_INITIAL_SECONDS", "0.2")
    monkeypatch.setenv("LONGBATCH_POLL_MAX_SECONDS", "0.5")
    monkeypatch.setenv("LONGBATCH_CREATE_GRACE_SECONDS", create_grace)


def crash_env(url: str, **extra: str) -> dict[str, str]:
    return cli_env(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-crash-test",
                   LONGBATCH_POLL_INITIAL_SECONDS="0.2", LONGBATCH_POLL_MAX_SECONDS="0.5",
                   # The killed process is gone for good: its intents need no waiting for.
                   LONGBATCH_INTENT_GRACE_SECONDS="0", LONGBATCH_CREATE_GRACE_SECONDS="1", **extra)


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_anywhere_then_rerun_pays_once_and_loses_nothing(point, tmp_path, corpus, standalone_simulator):
    url, state = standalone_simulator
    data_dir = tmp_path / "data"
    make_inbox(data_dir / "inbox", corpus)
    args = ["run", "--data-dir", str(data_dir), "--max-output-tokens", "3000", "--max-attempts", "2"]

    crashed = subprocess.run([*longbatch_cmd(), *args], capture_output=True, text=True, timeout=300,
                             env=crash_env(url, LONGBATCH_FAILPOINT=point))
    assert crashed.returncode == -signal.SIGKILL, f"{point} was not reached:\n{crashed.stderr[-3000:]}"

    rerun = subprocess.run([*longbatch_cmd(), *args], capture_output=True, text=True, timeout=300,
                           env=crash_env(url))
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    summary = assert_every_document_settled(data_dir)
    status = dict(zip(summary["source"], summary["status"]))
    assert status == {"apple.md": "complete", "dmca.pdf": "complete", "memo.txt": "complete",
                      "locked.pdf": "error", "expires.txt": "failed"}
    creates = creates_per_custom_id(state)
    expected = {cid: 1 for cid in creates if "expires" not in cid}
    assert {c: n for c, n in creates.items() if "expires" not in c} == expected, creates
    assert len(expected) == 3, creates  # apple, dmca, memo: each created exactly once
    assert [n for c, n in creates.items() if "expires" in c] == [2]  # two attempts, as allowed
    assert not list(data_dir.rglob("*.part")) and not list(data_dir.rglob("*.tmp"))


def test_twenty_percent_faults_everywhere_complete_with_no_duplicates(tmp_path, corpus, monkeypatch):
    config = SimConfig(processing_seconds=0.3, output_tokens=300, fault_rate=0.2, drop_after_create_rate=0.2,
                       not_found_after_create_seconds=0.5, errored_rate=0.15, expired_rate=0.1,
                       results_bytes_per_second=200_000, seed=5)  # seed 5: the first create is dropped
    data_dir = tmp_path / "data"
    shutil.copytree(REPO / "data" / "inbox", data_dir / "inbox")  # the shipped sample inbox
    for i in range(8):
        (data_dir / "inbox" / f"note-{i}.txt").write_text(f"Note {i}. " + PROSE, encoding="utf-8")
    fast_polling(monkeypatch, create_grace="0.5")
    from flows.process import RunParameters, process_documents

    with SimulatorServer(config) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fault-test")
        process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=2_000, max_attempts=10))
        sim = server.sim
        # Paid at most once: across every batch the server made, no request succeeded twice.
        succeeded: Counter = Counter()
        for batch_id, _ in sim.create_log:
            for line in sim.results(batch_id).splitlines():
                item = json.loads(line)
                if item["result"]["type"] == "succeeded":
                    succeeded[item["custom_id"]] += 1
        faults = dict(sim.faults)
        created = Counter(cid for _, ids in sim.create_log for cid in ids)
    summary = assert_every_document_settled(data_dir)
    readable = summary[~summary["source"].str.startswith("problems/")]
    assert set(readable["status"]) == {"complete"}, readable[["source", "status", "reason"]].to_string()
    assert set(summary[summary["source"].str.startswith("problems/")]["status"]) == {"error"}
    assert len(succeeded) == 13 and max(succeeded.values()) == 1
    # A request was created again only after an unbilled outcome (errored, expired): never while live.
    from longbatch.ledger import Ledger
    from longbatch.settings import Settings

    ledger = Ledger.open(Settings.given(data_dir=data_dir))
    for cid, n in created.items():
        attempts = ledger.usage_rows()
        assert n == sum(1 for r in attempts if r.result.custom_id == cid), cid
    ledger.close()
    assert faults.get("create:dropped", 0) >= 1 and sum(faults.values()) >= 5, faults


def test_two_runs_at_once_submit_each_request_once(tmp_path, corpus, standalone_simulator):
    url, state = standalone_simulator
    data_dir = tmp_path / "data"
    make_inbox(data_dir / "inbox", corpus)
    (data_dir / "inbox" / "expires.txt").unlink()
    for i in range(6):
        (data_dir / "inbox" / f"extra-{i}.txt").write_text(f"Extra {i}. " + PROSE, encoding="utf-8")
    args = [*longbatch_cmd(), "run", "--data-dir", str(data_dir), "--max-output-tokens", "2000"]
    procs = []
    barrier = threading.Barrier(2)

    def start() -> None:
        barrier.wait()
        procs.append(subprocess.run(args, capture_output=True, text=True, timeout=300, env=crash_env(url)))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, p in enumerate(procs):
        (tmp_path / f"run{i}.stderr").write_text(p.stderr)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-2000:] for p in procs]
    creates = creates_per_custom_id(state)
    assert len(creates) == 9 and set(creates.values()) == {1}, creates
    summary = assert_every_document_settled(data_dir)
    assert (summary["status"] == "complete").sum() == 9


def test_two_lost_creates_of_equal_size_are_told_apart_by_custom_ids(tmp_path, monkeypatch):
    """Two unconfirmed creates with the same request count close together: one reached the
    server, one did not. Recovery must adopt the right one and resend only the other."""
    import anthropic

    from longbatch.ledger import Ledger
    from longbatch.records import NewRequest
    from tasks import batches as batch_io

    config = SimConfig(processing_seconds=0.1)
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        ledger = Ledger.for_data_dir(tmp_path)
        for fp, cid in (("a" * 64, "first--report"), ("b" * 64, "second--report")):
            ledger.claim(NewRequest(fp, cid, cid.split("--")[0], cid, "0" * 64, "report", "claude-sonnet-4-6", 1000, ()))
        lost, _ = ledger.record_intent((), [("first--report", "a" * 64)])  # never reached the server
        ledger.record_create_failed(lost, "HTTP 500", unknown=True)
        dropped, _ = ledger.record_intent((), [("second--report", "b" * 64)])  # made, answer lost
        client.beta.messages.batches.create(requests=[{"custom_id": "second--report", "params": {
            "model": "claude-sonnet-4-6", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi."}]}}])
        ledger.record_create_failed(dropped, "connection dropped", unknown=True)
        time.sleep(0.3)  # the made batch has ended: its custom_ids are readable
        adopted = batch_io.recover_unknown_batches(client, ledger, 0.0, tmp_path / "results")
        assert len(adopted) == 1
        assert {b.id for b in ledger.batches_in_state("submitted")} == {dropped}
        assert ledger.request("a" * 64).state == "queued"  # only the lost one goes out again
        assert ledger.request("b" * 64).state == "submitted"
        ledger.close()


def test_a_lost_create_whose_batch_is_listed_but_not_yet_retrievable_is_adopted_later(tmp_path, monkeypatch):
    """Every create's answer is lost; the batch ends at once but answers 404 for 2 s (the
    service's visibility lag). Recovery must wait for it, not fail the run or resend."""
    config = SimConfig(processing_seconds=0.0, output_tokens=200, drop_after_create_rate=1.0,
                       not_found_after_create_seconds=2.0)
    data_dir = tmp_path / "data"
    (data_dir / "inbox").mkdir(parents=True)
    (data_dir / "inbox" / "memo.txt").write_text(PROSE, encoding="utf-8")
    fast_polling(monkeypatch, create_grace="30")
    from flows.process import RunParameters, process_documents

    with SimulatorServer(config) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-lag-test")
        result = process_documents(RunParameters(data_dir=str(data_dir), max_output_tokens=1_000))
        created = [cid for _, ids in server.sim.create_log for cid in ids]
        assert server.sim.faults.get("create:dropped", 0) >= 1
    assert result["by_status"] == {"complete": 1}
    assert len(created) == 1  # adopted once visible: never sent again


@pytest.mark.sim_env(LONGBATCH_SIM_ERRORED_RATE="0.3", LONGBATCH_SIM_SEED="11")
def test_two_data_dirs_and_two_runs_each_on_one_database(tmp_path, corpus, standalone_simulator, shared_ledger):
    """Issue 11: two data dirs on one ledger database, two runs of each at once, 30 % of requests
    errored (retried): every run exits 0, each data dir's reports are in it and only it, and no
    request succeeds twice on the server."""
    url, state = standalone_simulator
    database = shared_ledger or f"sqlite:///{tmp_path / 'shared.sqlite'}"
    dirs = {name: tmp_path / name for name in ("A", "B")}
    for name, d in dirs.items():
        (d / "inbox").mkdir(parents=True)
        for i in range(5):
            (d / "inbox" / f"doc_{i:02d}.txt").write_text(f"{name} document {i}. " + PROSE, encoding="utf-8")
    shutil.copy(corpus / "text/sec_10k_apple.md", dirs["A"] / "inbox" / "apple.md")
    shutil.copy(corpus / "text/sec_10k_apple.md", dirs["B"] / "inbox" / "apple.md")  # the same file in both
    runs = [d for d in dirs.values() for _ in range(2)]
    procs: list[subprocess.CompletedProcess] = []
    barrier = threading.Barrier(len(runs))

    def start(d: Path) -> None:
        barrier.wait()
        procs.append(subprocess.run(
            [*longbatch_cmd(), "run", "--data-dir", str(d), "--max-output-tokens", "2000", "--max-attempts", "10"],
            capture_output=True, text=True, timeout=600, env=crash_env(url, LONGBATCH_DATABASE_URL=database)))

    threads = [threading.Thread(target=start, args=(d,)) for d in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.returncode for p in procs] == [0] * 4, [p.stderr[-2000:] for p in procs]
    succeeded = succeeded_per_custom_id(state)
    assert max(succeeded.values()) <= 2 and sum(1 for v in succeeded.values() if v == 2) <= 1, succeeded
    for name, d in dirs.items():
        summary = assert_every_document_settled(d)
        assert sorted(summary["source"]) == ["apple.md"] + [f"doc_{i:02d}.txt" for i in range(5)]
        assert set(summary["status"]) == {"complete"}, summary[["source", "status", "reason"]].to_string()
        reports = sorted((d / "reports").glob("*/*/report.json"))
        assert len(reports) == 6
        for path in reports:  # each report was made from this data dir's own file
            meta = json.loads(path.read_text())
            assert meta["source_sha256"] == hashlib.sha256((d / "inbox" / meta["source"]).read_bytes()).hexdigest()
    # Each data dir paid once for each of its documents: apple.md, in both, was sent by each.
    apple = [c for c in succeeded if c.startswith("apple")]
    assert len(apple) == 1 and succeeded[apple[0]] == 2
    assert sum(succeeded.values()) == 12 and len(succeeded) == 11
