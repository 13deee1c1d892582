"""cl100k counting in pieces: the same count as one pass, in memory bounded by the piece."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from longbatch.tokens import _encoding, _paragraph_cl100k, cl100k_count, cl100k_count_paragraphs


def _whole(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


@pytest.mark.parametrize("name", ["war_and_peace_tolstoy.txt", "sec_edgar_raw_submission_ishares_485apos.txt",
                                  "udhr_article1_multilingual.txt"])
@pytest.mark.parametrize("chunk", [997, 20_000])
def test_counting_in_pieces_at_spaces_is_exact(corpus, name, chunk):
    text = (corpus / "text" / name).read_text(encoding="utf-8", errors="replace")[:600_000]
    assert cl100k_count(text, chunk) == _whole(text)


@pytest.mark.parametrize("text", [
    "word " * 5000,                      # a space at every cut
    "a  b   c    d     e " * 2000,       # runs of spaces: never cut inside one
    ("Sentence one.\n\n  Indented, then tabs\t\tand 123456789 digits! " * 400),
    " leading and trailing spaces " * 900 + "    ",
])
def test_cuts_next_to_other_whitespace_keep_the_count(text):
    assert cl100k_count(text, 1000) == _whole(text)


def test_text_without_spaces_is_within_a_token_or_two_per_cut(corpus):
    # Chinese has no spaces: pieces are cut where they stand.
    raw = (corpus / "text/hongloumeng_dream_of_the_red_chamber_GB18030.txt").read_bytes()[:400_000]
    text = raw.decode("gb18030", errors="replace")
    cuts = len(text) // 5000
    assert abs(cl100k_count(text, 10_000) - _whole(text)) <= 2 * cuts


@pytest.mark.parametrize("name", ["war_and_peace_tolstoy.txt", "sec_edgar_raw_submission_ishares_485apos.txt",
                                  "udhr_article1_multilingual.txt"])
def test_counting_by_paragraph_is_exact_on_real_text(corpus, name):
    text = (corpus / "text" / name).read_text(encoding="utf-8", errors="replace")[:300_000]
    assert text.count("\n\n") > 20
    assert cl100k_count_paragraphs(text) == _whole(text)


def test_counting_by_paragraph_is_exact_next_to_every_kind_of_character():
    """Blank lines beside punctuation, quotes, contractions, digits, CJK, other line breaks and
    spaces: the count never differs from one pass (the remembered paragraphs forgotten each time)."""
    pieces = ["\n", "\n\n", " ", "\r\n", "\t", "a", "Word", "'s", "'S", "12", "1234", ".", '"', ">", "<", "-",
              "#", "漢字", "é", "\u00a0", "\u2028", "!?", "  ", "'"]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        _paragraph_cl100k.cache_clear()
        assert cl100k_count_paragraphs(text) == _whole(text), repr(text)


def test_short_text_is_one_pass():
    assert cl100k_count("") == 0
    assert cl100k_count("hello world", 1_000_000) == _whole("hello world")


def test_an_unbroken_line_is_counted_in_memory_bounded_by_the_piece():
    # 3 M letters with no space at all: one tiktoken pass needs ~46 bytes a character (~140 MB
    # here; 7.9 GB for a 150 MB file). In 200 K-character pieces it grew by ~27 MB here.
    script = textwrap.dedent("""
        import random, resource
        from longbatch.tokens import cl100k_count
        rng = random.Random(3)
        text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=3_000_000))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = cl100k_count(text, 200_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(count, (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    count, grown_mb = map(int, out.stdout.split())
    assert 1_000_000 < count < 3_000_000
    assert grown_mb < 60, grown_mb
