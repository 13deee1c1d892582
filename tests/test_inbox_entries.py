"""Inbox entries that are not plain, well-named files: odd names, links, FIFOs, sockets.
Each ends as a document or a row with a reason; nothing outside the inbox is read unasked."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time

import pytest

from longbatch.catalog import get_model
from tasks.build import serialise
from tasks import ingest
from tasks.ingest import Document, IngestFailure, discover, read_document
from tasks.ingest_pool import read_documents
from tasks.plan import FAILED, READY, make_plan
from tasks.prompts import load_prompts

TEXT = "An ordinary document about the migration of swallows across the Mediterranean. " * 30


def _write(folder, name: bytes, text: str = TEXT):
    with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
        fh.write(text.encode())
    return folder / os.fsdecode(name)


def _plan(items, tmp_path):
    return make_plan(items, load_prompts(["report"], tmp_path), get_model("claude-sonnet-4-6"), 16_000, 8_192)


def test_a_name_that_is_not_utf8_is_read_planned_and_sent(tmp_path):
    path = _write(tmp_path, b"bad_\xff\xfe.txt")
    [found] = discover(tmp_path)
    doc = read_document(found, tmp_path)
    assert isinstance(doc, Document) and doc.source == "bad_\\xff\\xfe.txt"
    plan = _plan([doc], tmp_path)
    [request] = plan.requests  # before the fix: UnicodeEncodeError (surrogates) here
    assert plan.rows[0].status == READY
    content = json.loads(serialise(request.as_request()))["params"]["messages"][0]["content"]
    sent = "".join(block["text"] for block in content) if isinstance(content, list) else content
    assert '<document name="bad_\\xff\\xfe.txt">' in sent
    assert ingest.find_source(tmp_path, doc.source) == path  # a retry can find the file again


@pytest.mark.parametrize("raw, shown", [
    (b"carriage\rreturn.txt", "carriage\\rreturn.txt"),
    (b"new\nline.txt", "new\\nline.txt"),
    (b"tab\tand \x1b[31m.txt", "tab\\tand \\x1b[31m.txt"),
    (b"caf\xc3\xa9 \xe2\x80\xa8sep.txt", "café \\u2028sep.txt"),
])
def test_names_with_control_characters_are_shown_on_one_line(tmp_path, raw, shown):
    path = _write(tmp_path, raw)
    doc = read_document(path, tmp_path)
    assert isinstance(doc, Document) and doc.source == shown
    assert ingest.display_name(shown) == shown  # already safe: shown as is
    assert ingest.find_source(tmp_path, doc.source) == path
    # One CSV line per row, whatever the reader.
    buf = io.StringIO()
    csv.writer(buf).writerow([doc.source, "x"])
    assert len(buf.getvalue().splitlines()) == 1


def _atime_trap(path):
    """Put atime before mtime, so that any read of the file moves it (relatime)."""
    os.utime(path, (0, time.time()))
    return os.stat(path).st_atime


def test_a_link_leaving_the_inbox_is_refused_without_reading_its_target(tmp_path):
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir(), outside.mkdir()
    secret = _write(outside, b"secret.txt", "SECRET " + TEXT)
    before = _atime_trap(secret)
    (inbox / "x.txt").symlink_to(secret)
    (inbox / "dotdot.txt").symlink_to("../outside/secret.txt")
    items = [read_document(p, inbox) for p in discover(inbox)]
    assert [(i.source, i.category) for i in items] == [("dotdot.txt", "link_outside_inbox"),
                                                      ("x.txt", "link_outside_inbox")]
    assert all(isinstance(i, IngestFailure) and "--follow-links" in i.reason for i in items)
    assert os.stat(secret).st_atime == before  # not read
    rows = _plan(items, inbox).rows
    assert [r.status for r in rows] == [FAILED, FAILED] and "outside the inbox" in rows[0].reason


def test_a_folder_swapped_for_a_link_out_during_a_read_is_refused(tmp_path):
    # Folders' real paths are kept for the whole read: one replaced by a link meanwhile must
    # not let the next file in it through as if it were still in the inbox.
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "sub").mkdir(parents=True), outside.mkdir()
    _write(inbox / "sub", b"a.txt"), _write(inbox / "sub", b"b.txt")
    _write(outside, b"b.txt", "SECRET " + TEXT)
    reader = read_documents(sorted((inbox / "sub").iterdir()), inbox)
    first = next(reader)
    (inbox / "sub").rename(tmp_path / "moved")
    (inbox / "sub").symlink_to(outside)
    second = next(reader)
    assert isinstance(first, Document) and first.source == "sub/a.txt"
    assert isinstance(second, IngestFailure) and second.category == "link_outside_inbox"


def test_follow_links_reads_what_links_point_to_when_asked(tmp_path):
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir(), (outside / "folder").mkdir(parents=True)
    secret = _write(outside, b"secret.txt", "SECRET " + TEXT)
    _write(outside / "folder", b"deep.txt")
    (inbox / "x.txt").symlink_to(secret)
    (inbox / "linked").symlink_to(outside / "folder")
    (inbox / "linked_again").symlink_to(outside / "folder")
    items = {i.source: i for i in (read_document(p, inbox, follow_links=True)
                                   for p in discover(inbox, follow_links=True))}
    assert isinstance(items["x.txt"], Document) and items["x.txt"].body.startswith("SECRET")
    assert isinstance(items["linked/deep.txt"], Document)
    assert items["linked_again"].category == "link_to_folder"  # the same folder is walked once


def test_links_inside_the_inbox_work_and_loops_end(tmp_path):
    real = _write(tmp_path, b"real.txt")
    (tmp_path / "alias.txt").symlink_to("real.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")  # a loop
    items = {i.source: i for i in (read_document(p, tmp_path) for p in discover(tmp_path))}
    assert isinstance(items["alias.txt"], Document) and items["alias.txt"].sha256 == items["real.txt"].sha256
    assert items["sub/up"].category == "link_to_folder"
    loop_followed = discover(tmp_path, follow_links=True)  # ends: each real folder once
    assert sorted(p.name for p in loop_followed) == ["alias.txt", "real.txt", "up"]
    assert real.exists()


def test_fifos_sockets_and_broken_links_get_a_row_instead_of_vanishing(tmp_path):
    _write(tmp_path, b"ok.txt")
    os.mkfifo(tmp_path / "pipe.txt")  # reading it would block the run forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.md"))
    sock.close()
    (tmp_path / "broken.txt").symlink_to("gone.txt")
    paths = discover(tmp_path)
    assert [p.name for p in paths] == ["broken.txt", "ok.txt", "pipe.txt", "sock.md"]  # before: ok.txt only
    items = {i.source: i for i in (read_document(p, tmp_path) for p in paths)}
    assert items["pipe.txt"].category == "not_a_regular_file" and "FIFO" in items["pipe.txt"].reason
    assert items["sock.md"].category == "not_a_regular_file" and "socket" in items["sock.md"].reason
    assert items["broken.txt"].category == "broken_link" and "gone.txt" in items["broken.txt"].reason
    rows = {r.source: r for r in _plan(list(items.values()), tmp_path).rows}
    assert rows["pipe.txt"].status == FAILED and rows["pipe.txt"].reason.startswith("not_a_regular_file: ")
    assert rows["ok.txt"].status == READY


def test_tables_keep_one_row_per_line_when_a_cell_holds_a_carriage_return():
    import pandas as pd

    from longbatch.fsutil import csv_text

    frame = pd.DataFrame({"source": ["a.txt", "b.txt"], "reason": ["the API said:\rno", None], "n": [1, 2]})
    def rows(text: str) -> int:
        return len(list(csv.reader(io.StringIO(text, newline=""))))

    assert rows(frame.to_csv(index=False)) == 4  # pandas alone: the bare \r splits a row in two
    text = csv_text(frame)
    assert rows(text) == 3 and "\r" not in text
    back = pd.read_csv(io.StringIO(text))
    assert back["reason"].tolist()[0] == "the API said:\nno" and back["n"].tolist() == [1, 2]
