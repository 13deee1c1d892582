"""Reading many documents: worker processes keep input order and lose only the document whose
worker died; the ingest cache is used when it may be and never when it must not be."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tasks import ingest_cache, ingest_pool
from tasks.ingest import Document, IngestFailure, read_document
from tasks.ingest_cache import Extract, IngestCache
from tasks.ingest_pool import read_documents

CORPUS_FILES = [
    "pdf/paper_tracemonkey_pldi2009_14p.pdf",
    "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf",
    "text/udhr_article1_multilingual.txt",
    "pdf/ligatures_copy_paste.pdf",
    "pdf/broken_truncated_60pct_nist_sp800-223.pdf",
    "pdf/enc_owner_restricted_rc4_dmca_18p.pdf",
    "text/sec_10k_apple.md",
    "pdf/scanned_with_ocr_text_layer_vicksburg_6p.pdf",
]


@pytest.fixture
def inbox(tmp_path, corpus) -> Path:
    """Corpus files under names that sort in the order above (the order must survive the pool)."""
    box = tmp_path / "inbox"
    box.mkdir()
    for i, rel in enumerate(CORPUS_FILES):
        shutil.copy(corpus / rel, box / f"{i:02d}-{Path(rel).name}")
    return box


@pytest.fixture
def always_pooled(monkeypatch):
    monkeypatch.setattr(ingest_pool, "POOL_MIN_BYTES", 0)


def _paths(inbox: Path) -> list[Path]:
    return sorted(inbox.iterdir())


def test_workers_give_what_reading_in_process_gives_in_input_order(inbox, always_pooled):
    paths = _paths(inbox)
    expected = [read_document(p, inbox) for p in paths]
    got = list(read_documents(paths, inbox, workers=2))
    assert [item.source for item in got] == [p.name for p in paths]
    assert got == expected
    assert sum(isinstance(i, IngestFailure) for i in got) == 2  # the encrypted and the truncated PDF


def test_order_holds_when_early_documents_are_the_slow_ones(inbox, corpus, always_pooled):
    # A 352-page book first, then small files: the small ones finish first but wait their turn.
    shutil.copy(corpus / "pdf/long_freeculture_lessig_2004_352p.pdf", inbox / "00-a-book.pdf")
    paths = _paths(inbox)
    got = list(read_documents(paths, inbox, workers=2))
    assert [item.source for item in got] == [p.name for p in paths]
    assert got[0].page_count == 352


def test_a_dying_worker_fails_its_document_only(inbox, always_pooled, monkeypatch):
    paths = _paths(inbox)
    victim = paths[3].name  # the ligatures PDF
    monkeypatch.setenv("LONGBATCH_FAILPOINT", f"reading:{victim}")  # its worker SIGKILLs itself
    got = list(read_documents(paths, inbox, workers=2))
    assert [item.source for item in got] == [p.name for p in paths]
    dead = got[3]
    assert isinstance(dead, IngestFailure) and dead.category == "unreadable"
    assert "killed by signal 9" in dead.reason and "crash" in dead.reason
    monkeypatch.delenv("LONGBATCH_FAILPOINT")
    for path, item in zip(paths, got, strict=True):
        if path.name != victim:
            assert item == read_document(path, inbox), path.name


def _small_texts(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    for i in range(n):
        (folder / f"note-{i:03d}.txt").write_text(f"Note {i}. " + "A short paragraph of minutes. " * (5 + i % 7))
    return sorted(folder.iterdir())


def test_small_files_go_to_a_worker_many_at_a_time_and_a_big_one_alone(tmp_path):
    paths = _small_texts(tmp_path / "box", 100)
    big = tmp_path / "box" / "note-049-big.txt"
    big.write_bytes(b"x" * (ingest_pool.JOB_BYTES + 1))
    paths = sorted(paths + [big, tmp_path / "box" / "note-050-gone.txt"])  # one that cannot be stat'ed
    jobs = list(ingest_pool.size_chunks(paths, ingest_pool.JOB_FILES, ingest_pool.JOB_BYTES))
    assert [i for job in jobs for i in job] == list(range(len(paths)))
    # notes 0-48; the big one ("note-049-big" sorts before "note-049") alone; the rest, the gone one too
    assert [len(job) for job in jobs] == [49, 1, 52]
    assert paths[jobs[1][0]] == big
    small = [p for p in paths if p != big][:70]
    assert [len(job) for job in ingest_pool.size_chunks(small, ingest_pool.JOB_FILES, ingest_pool.JOB_BYTES)] == [64, 6]


def test_a_worker_dying_in_a_job_of_many_small_files_fails_only_the_file_it_was_reading(tmp_path, always_pooled,
                                                                                       monkeypatch):
    inbox = tmp_path / "box"
    paths = _small_texts(inbox, 150)
    victim = paths[70]  # in the second job, with 63 others
    monkeypatch.setenv("LONGBATCH_FAILPOINT", f"reading:{victim.name}")
    got = list(read_documents(paths, inbox, workers=2))
    monkeypatch.delenv("LONGBATCH_FAILPOINT")
    assert [item.source for item in got] == [p.name for p in paths]
    assert isinstance(got[70], IngestFailure) and "killed by signal 9" in got[70].reason
    assert all(item == read_document(p, inbox) for p, item in zip(paths, got, strict=True) if p != victim)


def test_two_jobs_dying_one_after_the_other_do_not_stop_the_read(tmp_path, always_pooled, monkeypatch):
    # The second job dies while the first one's files are read again one by one: its own files
    # must wait behind those, or the jobs sent ahead fill up with later documents and the read
    # waits for a worker that reads nothing (it hung so before).
    inbox = tmp_path / "box"
    paths = _small_texts(inbox, 400)
    victims = {paths[0], paths[73]}  # in the first job and the second
    monkeypatch.setenv("LONGBATCH_FAILPOINT", "|".join(f"reading:{p.name}" for p in victims))
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(read_documents(paths, inbox, workers=2)), daemon=True)
    reader.start()
    reader.join(timeout=120)
    assert not reader.is_alive(), f"the read hung after {len(got)} of {len(paths)} documents"
    assert [item.source for item in got] == [p.name for p in paths]
    assert {p.name for p, item in zip(paths, got) if isinstance(item, IngestFailure)} == {p.name for p in victims}


def test_a_read_closed_after_its_pool_leaves_no_worker_running(tmp_path, always_pooled):
    inbox = tmp_path / "box"
    paths = _small_texts(inbox, 70)  # two jobs, one each: both workers are idle once the first is yielded
    before = _workers_running()
    with ingest_pool.WorkerPool(2) as pool:
        reader = read_documents(paths, inbox, pool=pool)
        next(reader)  # an ingest task raised here, its suspended read kept alive by the traceback
    reader.close()  # closed only later, when the traceback goes
    assert _workers_running() - before == set()


def _workers_running() -> set[int]:
    """This process's ingest workers still running."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "tasks.ingest_worker"], capture_output=True,
                         text=True)
    return {int(pid) for pid in out.stdout.split()}


def test_small_jobs_and_one_worker_read_in_process(inbox, monkeypatch):
    # The failpoint only exists in workers: with none started, nothing dies.
    monkeypatch.setenv("LONGBATCH_FAILPOINT", f"reading:{_paths(inbox)[0].name}")
    for workers in (1, 4):  # 4 workers, but the inbox is under POOL_MIN_BYTES
        got = list(read_documents(_paths(inbox), inbox, workers=workers))
        assert isinstance(got[0], Document) and got[0].page_count == 14


def test_stopping_early_stops_the_workers(inbox, always_pooled):
    reader = read_documents(_paths(inbox), inbox, workers=2)
    first = next(reader)
    started = time.monotonic()
    reader.close()
    assert isinstance(first, Document) and time.monotonic() - started < 15


def test_default_workers_is_the_cores_this_process_may_use():
    assert ingest_pool.default_workers() == len(os.sched_getaffinity(0))


# -- the cache -------------------------------------------------------------------------------

def _entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "ingest").glob("*/*.json"))


def test_a_second_read_comes_from_the_cache(inbox, tmp_path):
    cache_dir = tmp_path / "cache"
    paths = _paths(inbox)
    first = list(read_documents(paths, inbox, cache_dir=cache_dir))
    # Every PDF (refusals included) and the text files over 64 KB have an entry.
    assert len(_entries(cache_dir)) == len(paths)
    # Proof that the next read uses the entry, not the file: plant different text in it.
    doc = first[0]
    IngestCache(cache_dir).put(doc.sha256, "pdf", "text", Extract("pdf", ("planted text",), 3, ()))
    again = list(read_documents(paths, inbox, cache_dir=cache_dir))
    assert again[0].body == "--- Page 1 ---\nplanted text" and again[0].body_cl100k == 3
    assert again[1:] == first[1:]


def test_a_renamed_file_hits_its_entry_under_its_new_name(inbox, tmp_path):
    cache_dir = tmp_path / "cache"
    path = _paths(inbox)[0]
    first = read_document(path, inbox, cache_dir=cache_dir)
    moved = inbox / "sub" / "renamed.pdf"
    moved.parent.mkdir()
    path.rename(moved)
    [doc] = read_documents([moved], inbox, cache_dir=cache_dir)
    assert doc.source == "sub/renamed.pdf" and doc.doc_id != first.doc_id
    assert (doc.pages, doc.body_cl100k, doc.sha256) == (first.pages, first.body_cl100k, first.sha256)
    assert len(_entries(cache_dir)) == 1


def test_a_changed_file_is_read_again(tmp_path):
    inbox, cache_dir = tmp_path / "inbox", tmp_path / "cache"
    inbox.mkdir()
    path = inbox / "notes.txt"
    path.write_text("first version. " * 10_000)
    first = read_document(path, inbox, cache_dir=cache_dir)
    path.write_text("second version, longer. " * 10_000)
    [second] = read_documents([path], inbox, cache_dir=cache_dir)
    assert second.body.startswith("second version") and second.sha256 != first.sha256
    assert len(_entries(cache_dir)) == 2


def test_a_new_extractor_version_misses_old_entries(inbox, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    path = _paths(inbox)[0]
    doc = read_document(path, inbox, cache_dir=cache_dir)
    IngestCache(cache_dir).put(doc.sha256, "pdf", "text", Extract("pdf", ("planted text",), 3, ()))
    monkeypatch.setattr(ingest_cache, "INGEST_RULES_VERSION", ingest_cache.INGEST_RULES_VERSION + 1)
    ingest_cache.extractor_version.cache_clear()
    try:
        [again] = read_documents([path], inbox, cache_dir=cache_dir)
        assert again.pages == doc.pages  # read from the file, not the planted entry
        assert len(_entries(cache_dir)) == 2
    finally:
        monkeypatch.undo()
        ingest_cache.extractor_version.cache_clear()


def test_pdf_mode_is_part_of_the_key(corpus, tmp_path):
    # A scan is refused in text mode (and the refusal cached) but read from its images natively.
    inbox, cache_dir = corpus / "pdf", tmp_path / "cache"
    path = inbox / "scanned_image_only_ccitt_irs_i1040nr_24p.pdf"
    as_text = read_document(path, inbox, cache_dir=cache_dir)
    [as_text_again] = read_documents([path], inbox, cache_dir=cache_dir)
    [native] = read_documents([path], inbox, native_pdf=True, cache_dir=cache_dir)
    assert isinstance(as_text, IngestFailure) and as_text_again == as_text
    assert isinstance(native, Document) and native.page_count == 24
    assert len(_entries(cache_dir)) == 2


@pytest.mark.parametrize("damage", [
    b"",
    b"{not json",
    b'{"key": "someone else\'s", "kind": "pdf", "pages": ["x"], "cl100k": 1, "notes": [], "chars": 1}',
    "wrong key",
    "wrong length",
    "wrong types",
])
def test_a_damaged_entry_is_ignored_and_rewritten(inbox, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    path = _paths(inbox)[0]
    doc = read_document(path, inbox, cache_dir=cache_dir)
    [entry] = _entries(cache_dir)
    good = json.loads(entry.read_bytes())
    if damage == "wrong key":
        damage = json.dumps({**good, "key": good["key"].replace("rules", "other rules")}).encode()
    elif damage == "wrong length":
        damage = json.dumps({**good, "pages": ["short"] + good["pages"][1:]}).encode()
    elif damage == "wrong types":
        damage = json.dumps({**good, "cl100k": "many"}).encode()
    entry.write_bytes(damage)
    [again] = read_documents([path], inbox, cache_dir=cache_dir)
    assert again == doc
    assert json.loads(entry.read_bytes()) == good  # rewritten whole


def test_prune_removes_the_least_recently_used_entries(tmp_path):
    cache = IngestCache(tmp_path)
    for i in range(5):
        cache.put(f"{i:064x}", "text", "text", Extract("text", ("x" * 1000,), 250, ()))
        path = cache.path_for(f"{i:064x}", "text", "text")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert cache.get(f"{0:064x}", "text", "text") is not None  # used now: the newest
    size = cache.path_for(f"{0:064x}", "text", "text").stat().st_size
    assert cache.prune(max_bytes=2 * size) == 3
    assert cache.get(f"{0:064x}", "text", "text") is not None
    assert cache.get(f"{4:064x}", "text", "text") is not None
    assert [cache.get(f"{i:064x}", "text", "text") for i in (1, 2, 3)] == [None, None, None]


def test_workers_fill_the_cache_the_next_run_reads(inbox, tmp_path, always_pooled):
    cache_dir = tmp_path / "cache"
    paths = _paths(inbox)
    first = list(read_documents(paths, inbox, cache_dir=cache_dir, workers=2))
    assert len(_entries(cache_dir)) == len(paths)
    assert list(read_documents(paths, inbox, cache_dir=cache_dir, workers=2)) == first


def test_an_unwritable_cache_only_costs_speed(inbox, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    path = _paths(inbox)[0]
    assert read_document(path, inbox, cache_dir=blocker) == read_document(path, inbox)


def test_ingest_tasks_take_up_to_a_thousand_files_and_big_files_close_a_task_sooner(tmp_path, corpus, monkeypatch):
    """The flow's ingest tasks (flows/reading.py): every path once, in order; at most INGEST_CHUNK
    files a task, and a task whose files pass INGEST_CHUNK_BYTES ends there (a big file alone
    still makes a task). Entries that cannot be stat'ed are kept, for reading to say why."""
    from flows import reading

    small = tmp_path / "small"
    small.mkdir()
    paths = []
    for i in range(2_345):
        (small / f"note-{i:04d}.txt").write_text(f"Note {i}.")
        paths.append(small / f"note-{i:04d}.txt")
    chunks = list(reading.ingest_chunks(paths))
    assert [len(c) for c in chunks] == [1_000, 1_000, 345] and [p for c in chunks for p in c] == paths

    big = sorted((corpus / "pdf").glob("*.pdf"), key=lambda p: p.stat().st_size)[-3:]
    cap = big[0].stat().st_size + big[1].stat().st_size  # the two smallest of these fit, all three do not
    monkeypatch.setattr(reading, "INGEST_CHUNK_BYTES", cap)
    gone = tmp_path / "vanished.txt"
    mixed = [big[0], big[1], big[2], gone, *paths[:3]]
    # The biggest is over the cap by itself: a task of its own, and the rest go on in the next.
    assert list(reading.ingest_chunks(mixed)) == [[big[0], big[1]], [big[2]], [gone, *paths[:3]]]
    monkeypatch.setattr(reading, "INGEST_CHUNK_BYTES", 1)
    assert list(reading.ingest_chunks(big)) == [[big[0]], [big[1]], [big[2]]]
