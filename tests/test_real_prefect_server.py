"""longbatch on a real Prefect server, as its users run it (README, "Run it with Prefect"):
`prefect server start` with its scheduler, the `longbatch` process work pool, `prefect deploy`
from deployments/prefect.yaml, `prefect worker start`, and deployments/serve.py. Runs are
started through the API with parameters, as the UI's Run button does, and by the scheduler.

Every process is started in its own session and killed with its children at the end, pass or
fail. Prefect state lives in a fresh PREFECT_HOME; nothing is written into the repository."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.exceptions import ObjectNotFound

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE_INBOX = REPO / "data" / "inbox"

# The README's commands, run here as written (from the repository root).
WORK_POOL = "prefect work-pool create longbatch --type process"
DEPLOY = "prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml"
LIST = "prefect deployment ls"
WORKER = "prefect worker start --pool longbatch"
SERVE = "python deployments/serve.py"
RUN_ON_DEMAND = "prefect deployment run process-documents/on-demand --params"
NOTIFY = "python deployments/notify_on_failure.py"

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Every process this test starts, each in its own session, ended with its children."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with_children = proc.pid
        try:  # flow runs a worker started are in its session: leave none behind
            os.killpg(with_children, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for proc, _ in reversed(self.started):
            self.stop(proc)

    def tail(self) -> str:
        return "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-6000:] for _, log in self.started)


def cli(command: str, env: dict[str, str], *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One of the README's commands, with this venv's executables."""
    argv = command.split()
    argv[0] = str(BIN / argv[0])
    proc = subprocess.run([*argv, *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def wait_for(what: str, check: Callable[[], Any], timeout: float, procs: Processes, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{procs.tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Processes, Path]]:
    """`prefect server start` on a free port, scheduler on (looking every 5 s rather than 60),
    with its own PREFECT_HOME; yields (API URL, the environment every command gets, the
    process keeper, a scratch folder)."""
    scratch = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANTHROPIC_", "LONGBATCH_"))}
    env.update({
        "PREFECT_HOME": str(scratch / "prefect-home"), "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        # Runs on the simulator, fast enough for a test.
        "LONGBATCH_SIM_PROCESSING_SECONDS": "1", "LONGBATCH_SIM_OUTPUT_TOKENS": "400",
        "LONGBATCH_POLL_INITIAL_SECONDS": "0.5", "LONGBATCH_POLL_MAX_SECONDS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    procs = Processes(scratch)
    try:
        procs.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    env, scratch)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_for("the Prefect server to start", healthy, 150, procs)
        yield api, env, procs, scratch
    finally:
        procs.stop_all()


def sample_inbox(data_dir: Path, only: list[str] | None = None) -> Path:
    inbox = data_dir / "inbox"
    if only is None:
        shutil.copytree(SAMPLE_INBOX, inbox)
    else:
        inbox.mkdir(parents=True)
        for name in only:
            shutil.copy(SAMPLE_INBOX / name, inbox / name)
    return data_dir


class WebhookReceiver:
    """A webhook on 127.0.0.1 that keeps what is posted to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def deployment(client: SyncPrefectClient, name: str):
    return client.read_deployment_by_name(name)


def final_state(client: SyncPrefectClient, flow_run_id, timeout: float, procs: Processes):
    def done():
        run = client.read_flow_run(flow_run_id)
        return run if run.state and run.state.type.value in FINAL else None

    return wait_for(f"flow run {flow_run_id} to finish", done, timeout, procs)


def table_artifact_rows(client: SyncPrefectClient, flow_run_id) -> list[dict[str, Any]]:
    artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    table = next(a for a in artifacts if a.type == "table")
    return table.data if isinstance(table.data, list) else json.loads(table.data)


def assert_rows_match_summary(rows: list[dict[str, Any]], data_dir: Path) -> pd.DataFrame:
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert [(r["document"], r["prompt"], r["status"]) for r in rows] == \
        list(zip(summary["source"], summary["prompt"], summary["status"], strict=True))
    for row in rows:
        if row["status"] == "complete":
            assert (data_dir / row["report"]).is_file()
    return summary


def flow_runs_of(client: SyncPrefectClient, deployment_id) -> list:
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_deploy_from_prefect_yaml_with_a_worker_then_serve(server, tmp_path):
    api, env, procs, _ = server
    client = SyncPrefectClient(api=api)
    with client:
        # -- the work pool and `prefect deploy --all`: all three deployments, the CLI lists them
        cli(WORK_POOL, env)
        deployed = cli(DEPLOY, env, timeout=180)
        listed = cli(LIST, env).stdout
        for name in ("process-documents/nightly", "process-documents/on-demand", "collect-batches/collector"):
            assert deployment(client, name).work_pool_name == "longbatch", deployed.stdout
            assert name.split("/")[1] in listed
        nightly, on_demand, collector = (deployment(client, n) for n in (
            "process-documents/nightly", "process-documents/on-demand", "collect-batches/collector"))
        assert nightly.parameters["params"]["wait"] is False  # the collector does the waiting

        # The scheduler fills the shipped schedules with runs (02:00 UTC; every 15 minutes).
        wait_for("the scheduler to create the shipped schedules' runs",
                 lambda: flow_runs_of(client, nightly.id) and flow_runs_of(client, collector.id), 60, procs)

        worker = procs.start("worker", [str(BIN / "prefect"), *WORKER.split()[1:]], env, tmp_path)

        # -- an on-demand run with parameters, as the UI's Run button starts it
        ondemand_dir = sample_inbox(tmp_path / "ondemand")
        run = client.create_flow_run_from_deployment(
            on_demand.id, parameters={"params": {"data_dir": str(ondemand_dir), "simulate": True,
                                                 "max_output_tokens": 2000, "model": "claude-sonnet-4-6"}})
        run = final_state(client, run.id, 200, procs)
        assert run.state.type.value == "COMPLETED", procs.tail()
        assert run.state.message.startswith("5 complete, 3 error, $"), run.state.message
        summary = assert_rows_match_summary(table_artifact_rows(client, run.id), ondemand_dir)
        assert len(summary) == 8

        # -- a failed run reaches the webhook of the README's automation
        receiver = WebhookReceiver()
        try:
            cli(NOTIFY, env, receiver.url)
            over_dir = sample_inbox(tmp_path / "over-budget", ["dmca_summary_1998.pdf"])
            run = client.create_flow_run_from_deployment(
                on_demand.id, parameters={"params": {"data_dir": str(over_dir), "simulate": True,
                                                     "budget_usd": 0.0001}})
            run = final_state(client, run.id, 150, procs)
            assert run.state.type.value == "FAILED" and "budget" in run.state.message, run.state.message
            [posted] = wait_for("the failure notification", lambda: receiver.received, 90, procs)
            assert f"run {run.name} ended Failed" in posted["text"] and "over the budget" in posted["text"]
        finally:
            receiver.close()

        # -- scheduled: the nightly submits and returns, then the collector writes the reports
        sched_dir = sample_inbox(tmp_path / "scheduled", ["apple_10k_fy2024.md", "dmca_summary_1998.pdf"])
        every_10s = IntervalSchedule(interval=timedelta(seconds=10))
        [fast_nightly] = client.create_deployment_schedules(
            nightly.id, [(every_10s, True)], max_scheduled_runs=1,
            parameters={"params": {"data_dir": str(sched_dir), "simulate": True, "wait": False}})

        def a_finished_run(deployment_id) -> Any:
            return next((r for r in flow_runs_of(client, deployment_id)
                         if r.state and r.state.type.value in FINAL and r.auto_scheduled), None)

        submitted = wait_for("a scheduled nightly run to finish", lambda: a_finished_run(nightly.id), 150, procs)
        client.delete_deployment_schedule(nightly.id, fast_nightly.id)
        assert submitted.state.type.value == "COMPLETED" and submitted.state.message.startswith("2 pending"), \
            submitted.state.message

        client.create_deployment_schedules(collector.id, [(every_10s, True)], max_scheduled_runs=1,
                                           parameters={"data_dir": str(sched_dir), "simulate": True})

        def collected_all() -> Any:
            return next((r for r in flow_runs_of(client, collector.id)
                         if r.auto_scheduled and r.state and r.state.type.value == "COMPLETED"
                         and r.state.message.startswith("2 complete")), None)

        collected = wait_for("a scheduled collector run to write both reports", collected_all, 150, procs)
        assert_rows_match_summary(table_artifact_rows(client, collected.id), sched_dir)
        procs.stop(worker)

        # -- serve.py instead of a work pool: the same three deployments, served by one process
        # (an alternative, not an addition: the work-pool deployments and their runs go first)
        for d in (nightly, on_demand, collector):
            client.delete_deployment(d.id)
        served_dir = sample_inbox(tmp_path / "served", ["dmca_summary_1998.pdf"])
        serving = procs.start("serve", [str(BIN / "python"), *SERVE.split()[1:], str(served_dir)], env, REPO)
        def registered() -> Any:
            try:  # all three, the collector last
                deployment(client, "collect-batches/collector")
                return deployment(client, "process-documents/nightly")
            except ObjectNotFound:
                return None

        served = wait_for("serve.py to register its deployments", registered, 120, procs)
        assert served.parameters["params"]["data_dir"] == str(served_dir)
        assert served.parameters["params"]["wait"] is False and served.schedules
        params = json.dumps({"params": {"data_dir": str(served_dir), "simulate": True}})
        started = cli(RUN_ON_DEMAND, env, params).stdout
        run_id = next(line.split()[-1] for line in started.splitlines() if "UUID" in line)
        run = final_state(client, run_id, 150, procs)
        assert run.state.type.value == "COMPLETED" and run.state.message.startswith("1 complete, $"), procs.tail()
        assert_rows_match_summary(table_artifact_rows(client, run.id), served_dir)
        procs.stop(serving)


def test_readme_says_what_this_test_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run it with Prefect", 1)[1].split("\n## ", 1)[0]
    for command in (WORK_POOL, DEPLOY, LIST, WORKER, SERVE, RUN_ON_DEMAND, NOTIFY, "prefect server start"):
        assert command in section, command
