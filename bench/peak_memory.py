"""Peak memory of `longbatch run --no-wait` against the size of its largest batch body.

    python bench/peak_memory.py [--docs 460] [--chars 1400000] [--simulate] [--keep DIR]

Generates an inbox of `--docs` distinct text documents of `--chars` characters each (slices of
the corpus's English texts: War and Peace, the KJV, the CUAD contracts), then runs
`longbatch run --no-wait` on it in a new process and samples the resident memory of that
process and of its children (the ingest workers) every 50 ms. Against the real API the
simulator is a separate service, so by default it runs as its own process (`longbatch
simulator`) and is not counted; `--simulate` runs it inside the measured process, as
`longbatch run --simulate` does, where every batch body it receives counts too.

The yardstick is the largest batch body that was sent (the simulator's state dir holds each
batch's requests; their sizes are read from the run's ledger).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus" / "text"
SOURCES = ["war_and_peace_tolstoy.txt", "king_james_bible_full.txt", "cuad_contracts_concat_112.txt"]
PAGE = os.sysconf("SC_PAGE_SIZE")


def make_inbox(inbox: Path, docs: int, chars: int) -> int:
    text = "\n".join((CORPUS / name).read_text(encoding="utf-8", errors="replace") for name in SOURCES)
    total = 0
    for i in range(docs):
        start = (i * 7919 * 131) % max(1, len(text) - chars)
        body = f"Document {i} of {docs}: a generated annual report.\n" + text[start:start + chars]
        while len(body) < chars:
            body += text[: chars - len(body)]
        data = body[:chars].encode("utf-8")
        (inbox / f"report_{i:04d}.txt").write_bytes(data)
        total += len(data)
    return total


def tree_rss(root: int) -> dict[str, int]:
    """Resident bytes of `root` and its descendants, summed by what each process is: the run
    itself, its ingest workers, the temporary Prefect server it starts, anything else."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * PAGE
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier += children
    groups = {"run": rss.get(root, 0), "ingest workers": 0, "Prefect server": 0, "other": 0}
    for pid in tree - {root}:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        group = ("ingest workers" if "ingest_worker" in cmd else
                 "Prefect server" if "prefect" in cmd or "uvicorn" in cmd else "other")
        groups[group] += rss.get(pid, 0)
    return groups


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, dict[str, int], int, str]:
    """Wall seconds, exit code, the peak of each group of processes, the peak of the whole tree
    (at one instant); the run's output."""
    log = tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    peaks: dict[str, int] = {}
    peak_tree = 0
    while proc.poll() is None:
        groups = tree_rss(proc.pid)
        peaks = {k: max(v, peaks.get(k, 0)) for k, v in groups.items()}
        peak_tree = max(peak_tree, sum(groups.values()))
        time.sleep(0.05)
    wall = time.monotonic() - start
    log.seek(0)
    return wall, proc.returncode, peaks, peak_tree, log.read().decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_bodies(state_dir: Path) -> list[int]:
    """Each batch's size as the simulator stored it: its requests, as sent."""
    return sorted(p.stat().st_size for p in state_dir.glob("msgbatch_*.requests.jsonl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=460)
    parser.add_argument("--chars", type=int, default=1_400_000)
    parser.add_argument("--simulate", action="store_true", help="the simulator inside the measured process")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="lb-mem-"))
    inbox, data_dir = work / "inbox", work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(work / "simulator", ignore_errors=True)
    inbox.mkdir(parents=True, exist_ok=True)
    if not any(inbox.iterdir()):
        t = time.monotonic()
        size = make_inbox(inbox, args.docs, args.chars)
        print(f"inbox: {args.docs} documents, {size / 1e6:,.0f} MB, made in {time.monotonic() - t:.1f} s")
    else:
        size = sum(p.stat().st_size for p in inbox.iterdir())
        print(f"inbox (kept): {len(list(inbox.iterdir()))} documents, {size / 1e6:,.0f} MB")

    longbatch = str(Path(sys.executable).with_name("longbatch"))
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "LONGBATCH_SIM_PROCESSING_SECONDS": "3600"}
    sim = None
    if args.simulate:
        cmd = [longbatch, "run", "--simulate", "--no-wait", "--data-dir", str(data_dir), str(inbox)]
    else:
        port = free_port()
        sim_log = open(work / "simulator.log", "w")  # noqa: SIM115 - lives as long as the simulator
        sim = subprocess.Popen([longbatch, "simulator", "--port", str(port), "--processing-seconds", "3600",
                                "--state-dir", str(work / "simulator")],
                               env=env, stdout=sim_log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        env |= {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "bench-key"}
        cmd = [longbatch, "run", "--no-wait", "--data-dir", str(data_dir), str(inbox)]
    try:
        wall, code, peaks, tree, output = run_measured(cmd, env)
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait()
    if code != 0:
        print(output[-4000:])
        print(f"run failed: exit {code}")
        return 1
    ledger = sqlite3.connect(data_dir / "ledger.sqlite")
    batches = ledger.execute("SELECT batch_id, count(*) FROM batch_members GROUP BY batch_id").fetchall()
    body_sizes = batch_bodies(data_dir / "simulator" if args.simulate else work / "simulator")
    largest = max(body_sizes, default=0)
    print(f"`longbatch run --no-wait{' --simulate' if args.simulate else ''}`: {wall:.1f} s wall, "
          f"{len(batches)} batches ({', '.join(str(n) for _, n in batches)} requests)")
    own = peaks["run"]
    print("peak RSS: " + "; ".join(f"{name} {peak / 2**20:,.0f} MiB" for name, peak in peaks.items() if peak)
          + f"; all of them at once {tree / 2**20:,.0f} MiB")
    if largest:
        print(f"largest batch body {largest / 2**20:,.0f} MiB: run process / largest body = {own / largest:.2f}, "
              f"all processes / largest body = {tree / largest:.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
