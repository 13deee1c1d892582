"""Fit math, request building, custom_ids and packing: the pure stages."""

from __future__ import annotations

import json

import pytest

from longbatch.catalog import OUTPUT_300K_BETA, get_model
from longbatch.errors import UnknownModelError
from longbatch.piece import Piece, PieceKind
from tasks.build import CUSTOM_ID_RE, build_request, make_custom_id, serialise
from tasks.fit import WINDOW_MARGIN, check_fit
from tasks.ingest import Document
from tasks.packing import MAX_BODY_BYTES, MAX_REQUESTS, RequestTooLargeError, pack
from tasks.plan import DUPLICATE, FAILED, NOT_FIT, READY, make_plan
from tasks.prompts import load_prompt

OPUS46, SONNET46, SONNET45 = get_model("claude-opus-4-6"), get_model("claude-sonnet-4-6"), get_model("claude-sonnet-4-5")


def doc(text: str, name: str = "doc.txt", cl100k: int | None = None) -> Document:
    import hashlib

    sha = hashlib.sha256(text.encode()).hexdigest()
    return Document(f"{name.split('.')[0]}-{sha[:12]}", name, "text", sha, len(text), (text,), text,
                    cl100k if cl100k is not None else len(text) // 4)


def test_800k_input_asking_300k_gets_what_is_left_of_1m():
    fit = check_fit(800_000, OPUS46, 300_000, min_output=8_192)
    assert fit.fits
    assert fit.granted == 1_000_000 - 800_000 - WINDOW_MARGIN
    assert fit.granted + 800_000 <= OPUS46.context_window


def test_same_input_does_not_fit_sonnet45_200k_window():
    fit = check_fit(800_000, SONNET45, 300_000, min_output=8_192)
    assert not fit.fits and fit.granted == 0
    assert "200,000" in fit.reason and "800,000" in fit.reason


def test_grant_is_capped_by_request_and_model_maximum():
    assert check_fit(10_000, OPUS46, None, 8_192).granted == 300_000  # default: the most a batch allows
    assert check_fit(10_000, OPUS46, 50_000, 8_192).granted == 50_000
    assert check_fit(10_000, SONNET45, None, 8_192).granted == 64_000  # no 300K beta on 4.5
    assert check_fit(10_000, SONNET45, 300_000, 8_192).granted == 64_000


def test_useful_minimum_output_decides_fit():
    room = 1_000_000 - 990_000 - WINDOW_MARGIN
    assert not check_fit(990_000, OPUS46, None, min_output=room + 1).fits
    assert check_fit(990_000, OPUS46, None, min_output=room).granted == room


def test_beta_header_only_above_standard_max():
    assert OPUS46.betas_for(128_000) == ()
    assert OPUS46.betas_for(128_001) == (OUTPUT_300K_BETA,)
    assert SONNET45.betas_for(64_000) == ()


def test_build_request_keeps_betas_out_of_params(tmp_path):
    prompt = load_prompt("report", tmp_path)
    req = build_request(doc("Some text. " * 100), prompt, SONNET46, 200_000)
    assert req.betas == (OUTPUT_300K_BETA,)
    assert "betas" not in req.params
    assert req.params["max_tokens"] == 200_000
    assert req.body_bytes == len(serialise(req.as_request()))
    small = build_request(doc("Some text. " * 100), prompt, SONNET46, 100_000)
    assert small.betas == () and small.fingerprint != req.fingerprint


def test_request_puts_document_before_instructions(tmp_path):
    prompt = load_prompt("report", tmp_path)
    req = build_request(doc("UNIQUE-BODY-MARKER sentence."), prompt, SONNET46, 20_000)
    document, instructions = req.params["messages"][0]["content"]
    assert "UNIQUE-BODY-MARKER" in document["text"] and "UNIQUE-BODY-MARKER" not in instructions["text"]
    assert document["text"].startswith("<document ") and "Structure:" in instructions["text"]


@pytest.mark.parametrize("doc_id", ["a", "x" * 45, "report-2024-" + "f" * 12])
@pytest.mark.parametrize("prompt", ["report", "a-very-long-prompt-name-indeed"])
def test_custom_ids_follow_api_rule(doc_id, prompt):
    cid = make_custom_id(doc_id, prompt)
    assert CUSTOM_ID_RE.match(cid) and len(cid) <= 64
    assert make_custom_id(doc_id, prompt) == cid  # deterministic
    # Every piece of a split document has its own id, still within the rule at the largest numbers.
    pieces = [Piece(PieceKind.PART, 999, 999), Piece(PieceKind.MERGE, 999), Piece(PieceKind.FINAL)]
    ids = {make_custom_id(doc_id, prompt, piece) for piece in pieces} | {cid}
    assert len(ids) == 4 and all(CUSTOM_ID_RE.match(i) and len(i) <= 64 for i in ids)


def test_long_prompt_names_stay_distinct():
    a = make_custom_id("doc-0123456789ab", "summary-of-risks")
    b = make_custom_id("doc-0123456789ab", "summary-of-terms")
    assert a != b and CUSTOM_ID_RE.match(a) and CUSTOM_ID_RE.match(b)


def test_custom_id_rejects_what_api_would():
    with pytest.raises(ValueError):
        make_custom_id("bad id with spaces", "report")
    with pytest.raises(ValueError):
        make_custom_id("x" * 60, "report")


def test_plan_rows_for_every_document_and_prompt(tmp_path, corpus):
    from tasks.ingest import read_document

    items = [
        read_document(corpus / "pdf/enc_aes256_r6_userpw-foo_ownerpw-bar.pdf", corpus),
        doc("Short real text. " * 50, "a.txt"),
        doc("Short real text. " * 50, "copy-of-a.txt"),  # same content: processed once
        doc("x", "huge.txt", cl100k=900_000),
    ]
    prompts = [load_prompt("report", tmp_path), load_prompt("summary", tmp_path)]
    plan = make_plan(items, prompts, SONNET46, None, 8_192)
    assert len(plan.rows) == 8
    statuses = [(r.source.split("/")[-1], r.prompt, r.status) for r in plan.rows]
    assert statuses.count(("a.txt", "report", READY)) == 1
    assert ("copy-of-a.txt", "summary", DUPLICATE) in statuses
    assert ("huge.txt", "report", NOT_FIT) in statuses
    assert sum(1 for s in statuses if s[2] == FAILED) == 2
    assert len(plan.requests) == 2 and len({r.custom_id for r in plan.requests}) == 2
    ready = [r for r in plan.rows if r.status == READY]
    assert all(r.batch == 0 and r.max_cost_usd > r.est_input_usd > 0 for r in ready)
    assert all(r.upper_input_tokens >= r.est_input_tokens >= r.cl100k_tokens for r in ready)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownModelError, match="claude-opus-4-6"):
        get_model("claude-opus-9")


# -- packing ------------------------------------------------------------------------------

def _planned(n: int, text_size: int, tmp_path, max_tokens: int = 1_000, model=SONNET46):
    prompt = load_prompt("summary", tmp_path)
    body = "y" * text_size
    return [build_request(doc(body + str(i), f"d{i}.txt"), prompt, model, max_tokens) for i in range(n)]


def test_more_than_256mb_splits_into_batches_within_both_limits(tmp_path):
    # 12 requests of ~25 MB each: ~300 MB, over one batch's 256 MB.
    requests = _planned(12, 25_000_000, tmp_path)
    batches = pack(requests)
    assert len(batches) >= 2
    assert sum(len(b.requests) for b in batches) == 12
    for b in batches:
        body = serialise({"requests": [r.as_request() for r in b.requests]})
        assert len(body) == b.body_bytes  # the size we account is the size sent
        assert b.body_bytes <= MAX_BODY_BYTES < 256_000_000
        assert len(b.requests) <= MAX_REQUESTS


def test_more_than_100k_requests_split(tmp_path):
    requests = _planned(1, 10, tmp_path) * 0
    base = _planned(1, 10, tmp_path)[0]
    import dataclasses

    requests = [dataclasses.replace(base, custom_id=f"r{i}") for i in range(MAX_REQUESTS + 1)]
    batches = pack(requests)
    assert [len(b.requests) for b in batches] == [MAX_REQUESTS, 1]


def test_different_beta_sets_never_share_a_batch(tmp_path):
    plain = _planned(2, 100, tmp_path, max_tokens=1_000)
    big = _planned(2, 100, tmp_path, max_tokens=200_000)
    batches = pack(plain + big)
    assert sorted(b.betas for b in batches) == [(), (OUTPUT_300K_BETA,)]
    for b in batches:
        assert {r.betas for r in b.requests} == {b.betas}


def test_single_request_over_the_limit_is_refused(tmp_path):
    requests = _planned(1, 1_000, tmp_path)
    with pytest.raises(RequestTooLargeError):
        pack(requests, max_bytes=500)


def test_packing_preserves_all_requests_in_order(tmp_path):
    requests = _planned(50, 1_000, tmp_path)
    batches = pack(requests, max_requests=7)
    flat = [r.custom_id for b in batches for r in b.requests]
    assert flat == [r.custom_id for r in requests]
    assert all(len(b.requests) <= 7 for b in batches)
    json.dumps([b.body_bytes for b in batches])


def test_exact_count_is_needed_only_when_the_band_straddles_a_limit():
    from tasks.fit import needs_exact_count

    # Surely a full grant: even the upper bound leaves 300K of output.
    assert not needs_exact_count(100_000, 200_000, SONNET46, None, 8_192)
    # Surely refused: even the lower bound leaves less than the minimum.
    assert not needs_exact_count(995_000, 1_900_000, SONNET46, None, 8_192)
    # Between: the estimate alone could wrongly refuse or shrink the grant.
    assert needs_exact_count(500_000, 1_100_000, SONNET46, None, 8_192)
    assert needs_exact_count(650_000, 750_000, SONNET46, None, 8_192)  # 300K grant in doubt


def test_exact_counts_replace_the_estimate(tmp_path):
    from tasks.build import count_key

    prompt = load_prompt("report", tmp_path)
    big = doc("x", "big.txt", cl100k=800_000)  # estimate 960K, upper 1.22M: refused on its estimate
    first = make_plan([big], [prompt], SONNET46, None, 8_192).rows[0]
    assert first.status == NOT_FIT and first.needs_exact and "exact count" in first.reason
    counted = make_plan([big], [prompt], SONNET46, None, 8_192, {count_key(SONNET46.id, big, prompt): 700_000}).rows[0]
    assert counted.status == READY and counted.exact_input_tokens == 700_000 and not counted.needs_exact
    assert counted.granted_max_tokens == 1_000_000 - 714_000 - WINDOW_MARGIN  # 2 % margin on the exact count


def test_a_batch_never_holds_one_custom_id_twice(tmp_path):
    import dataclasses

    base = _planned(3, 100, tmp_path)
    again = dataclasses.replace(base[1], fingerprint="other")
    batches = pack(base + [again])
    for b in batches:
        ids = [r.custom_id for r in b.requests]
        assert len(ids) == len(set(ids))
    assert sum(len(b.requests) for b in batches) == 4


def test_retired_context_1m_beta_is_dropped_and_others_kept(tmp_path):
    from longbatch.catalog import normalize_betas

    kept, warnings = normalize_betas(["context-1m-2025-08-07", "some-feature-2026-01-01", OUTPUT_300K_BETA])
    assert kept == ("some-feature-2026-01-01",)
    assert any("retired" in w for w in warnings) and any("automatically" in w or "added by" in w for w in warnings)
    prompt = load_prompt("summary", tmp_path)
    plan = make_plan([doc("Text. " * 100)], [prompt], SONNET45, 10_000, 8_192, extra_betas=kept)
    [req] = plan.requests
    assert req.betas == ("some-feature-2026-01-01",) and "betas" not in req.params


def test_one_document_three_models_three_correct_plans(tmp_path, corpus, client):
    from tasks.counting import count_near_limits
    from tasks.ingest import read_document

    book = read_document(corpus / "pdf/long_freeculture_lessig_2004_352p.pdf", corpus)  # ~195K cl100k tokens
    prompt = load_prompt("report", tmp_path)
    plans = {m.id: make_plan([book], [prompt], m, None, 8_192).rows[0] for m in (OPUS46, SONNET46, SONNET45)}
    for model_id, window in (("claude-opus-4-6", 1_000_000), ("claude-sonnet-4-6", 1_000_000)):
        row = plans[model_id]
        assert row.status == READY and row.granted_max_tokens == 300_000 and row.betas == (OUTPUT_300K_BETA,)
        assert row.upper_input_tokens + row.granted_max_tokens <= window
    s45 = plans["claude-sonnet-4-5"]
    assert s45.status == NOT_FIT and "200,000" in s45.reason  # 296K upper bound > a 200K window
    assert s45.needs_exact  # ... but only by the estimate: count_tokens decides
    offline = make_plan([book], [prompt], SONNET45, None, 8_192)
    counts = count_near_limits(client, offline, [book], [prompt], SONNET45, {}, per_minute=0)
    split = make_plan([book], [prompt], SONNET45, None, 8_192, counts)
    assert split.rows[0].status == READY and split.rows[0].parts >= 2  # too long even counted: read in parts
    for row in split.rows[1:]:
        assert row.upper_input_tokens + row.granted_max_tokens <= 200_000
    assert [r.part for r in split.rows[1:]][-1] == "final" and split.rows[0].granted_max_tokens == 64_000
    assert plans["claude-opus-4-6"].max_cost_usd > plans["claude-sonnet-4-6"].max_cost_usd  # $25 vs $15 output
