"""The simulator validates and answers like the real service, over real HTTP with the real SDK."""

from __future__ import annotations

import json
import time
from collections import Counter

import anthropic
import pytest

from longbatch.catalog import OUTPUT_300K_BETA
from simulator.engine import SimConfig
from simulator.requests import count_request_tokens
from simulator.server import SimulatorServer
from simulator.tokens import count_text
from tasks.results import to_outcome


def params(text="<document>\n--- Page 1 ---\nThe board approved the budget for next year. Revenue grew by ten percent.\n</document>\nReport.",
           model="claude-sonnet-4-6", max_tokens=2_000, **extra):
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}], **extra}


def run_batch(client, requests, betas=None, timeout=10.0):
    batch = client.beta.messages.batches.create(requests=requests, **({"betas": betas} if betas else {}))
    deadline = time.time() + timeout
    while (b := client.beta.messages.batches.retrieve(batch.id)).processing_status != "ended":
        assert time.time() < deadline, "batch did not end"
        time.sleep(0.1)
    with client.beta.messages.batches.with_streaming_response.results(batch.id) as resp:
        lines = [line for line in resp.iter_lines() if line.strip()]
    return b, {o.custom_id: o for o in map(to_outcome, lines)}


def test_custom_id_format_is_checked_at_create(client):
    for bad in ["has space", "x" * 65, "", "ünïcode", "semi;colon"]:
        with pytest.raises(anthropic.BadRequestError, match="custom_id"):
            client.beta.messages.batches.create(requests=[{"custom_id": bad, "params": params()}])


def test_duplicate_custom_ids_rejected(client):
    with pytest.raises(anthropic.BadRequestError, match="duplicate"):
        client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params()}] * 2)


def test_more_than_100k_requests_rejected(client):
    requests = [{"custom_id": f"r{i}", "params": {"model": "m"}} for i in range(100_001)]
    with pytest.raises(anthropic.BadRequestError, match="100,000"):
        client.beta.messages.batches.create(requests=requests)


def test_body_over_256mb_is_413(client):
    huge = "z" * 256_000_001
    with pytest.raises(anthropic.APIStatusError) as info:
        client.beta.messages.batches.create(requests=[{"custom_id": "big", "params": params(text=huge)}])
    assert info.value.status_code == 413


def test_missing_api_key_is_401(sim):
    import httpx

    r = httpx.get(f"{sim.url}/v1/messages/batches")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_params_are_validated_asynchronously(client):
    big_doc = "word " * 1_100_000  # ~1.1M simulator tokens: over a 1M window on its own
    batch, out = run_batch(client, [
        {"custom_id": "ok", "params": params()},
        {"custom_id": "over-max-no-beta", "params": params(max_tokens=200_000)},
        {"custom_id": "betas-in-params", "params": params(betas=[OUTPUT_300K_BETA])},
        {"custom_id": "unknown-model", "params": params(model="claude-nope")},
        {"custom_id": "too-long", "params": params(text=big_doc, max_tokens=1_000)},
        {"custom_id": "extra-field", "params": params(frobnicate=True)},
    ])
    assert batch.request_counts.succeeded == 1 and batch.request_counts.errored == 5
    assert out["ok"].result_type == "succeeded"
    for cid in ["over-max-no-beta", "betas-in-params", "unknown-model", "too-long", "extra-field"]:
        assert out[cid].result_type == "errored"
        assert out[cid].error_type == "invalid_request_error"
        assert not out[cid].retryable
    assert "maximum allowed number of output tokens" in out["over-max-no-beta"].error_message
    assert "prompt is too long" in out["too-long"].error_message


def test_300k_beta_is_honoured_only_where_supported(client):
    _, out = run_batch(client, [
        {"custom_id": "s46", "params": params(max_tokens=300_000)},
        {"custom_id": "s45", "params": params(model="claude-sonnet-4-5", max_tokens=100_000)},
        {"custom_id": "too-much", "params": params(max_tokens=300_001)},
    ], betas=[OUTPUT_300K_BETA])
    assert out["s46"].result_type == "succeeded"
    assert out["s45"].result_type == "errored" and "64000" in out["s45"].error_message
    assert out["too-much"].result_type == "errored"


def test_input_plus_max_tokens_over_window_stops_early():
    doc = "<document>\n" + "The quarterly figures rose again this year. " * 80_000 + "\n</document>"
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=300_000)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        p = params(text=doc, max_tokens=300_000)
        input_tokens = client.messages.count_tokens(model=p["model"], messages=p["messages"]).input_tokens
        assert 700_000 < input_tokens < 1_000_000
        _, out = run_batch(client, [{"custom_id": "edge", "params": p}], betas=[OUTPUT_300K_BETA], timeout=60)
    o = out["edge"]
    assert o.stop_reason == "model_context_window_exceeded" and o.truncated
    assert o.input_tokens == input_tokens
    assert o.input_tokens + o.output_tokens <= 1_000_000
    assert o.output_tokens > 1_000_000 - input_tokens - 50


def test_output_length_is_controllable_and_max_tokens_truncates():
    text = "<document>\n" + "\n".join(f"--- Page {i} ---\n" + f"Clause {i} sets a duty for the seller. " * 40
                                      for i in range(1, 200)) + "\n</document>"
    with SimulatorServer(SimConfig(processing_seconds=0.2, output_tokens=3_000)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        _, out = run_batch(client, [
            {"custom_id": "full", "params": params(text=text, max_tokens=10_000)},
            {"custom_id": "cut", "params": params(text=text, max_tokens=500)},
            {"custom_id": "marker", "params": params(text=text + "[[simulate:output_tokens=800]]", max_tokens=10_000)},
        ])
    assert out["full"].stop_reason == "end_turn" and 2_900 <= out["full"].output_tokens <= 3_000
    assert out["cut"].stop_reason == "max_tokens" and out["cut"].truncated and out["cut"].output_tokens <= 500
    assert out["marker"].output_tokens <= 800
    assert out["full"].output_tokens == count_text(out["full"].text)  # usage agrees with its own rule


def test_output_is_deterministic_labelled_and_from_the_document(client):
    p = params()
    _, first = run_batch(client, [{"custom_id": "a", "params": p}])
    _, second = run_batch(client, [{"custom_id": "a", "params": p}])
    assert first["a"].text == second["a"].text
    assert "Simulated report" in first["a"].text
    assert "The board approved the budget for next year." in first["a"].text


def test_usage_matches_count_tokens_and_family_rule(client):
    text = "Termination. Either party may terminate this agreement upon thirty days written notice. " * 20
    counts = {}
    for model in ["claude-sonnet-4-6", "claude-opus-4-7"]:
        p = params(text=text, model=model)
        counted = client.messages.count_tokens(model=model, messages=p["messages"]).input_tokens
        _, out = run_batch(client, [{"custom_id": "u", "params": p}])
        assert out["u"].input_tokens == counted
        counts[model] = counted
    assert 1.25 < counts["claude-opus-4-7"] / counts["claude-sonnet-4-6"] < 1.35


def test_markers_route_every_result_type():
    with SimulatorServer(SimConfig(processing_seconds=0.2)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        _, out = run_batch(client, [
            {"custom_id": "refuse", "params": params(text="Report on this. [[simulate:refusal]]")},
            {"custom_id": "overload", "params": params(text="x [[simulate:error=overloaded_error]]")},
            {"custom_id": "expire", "params": params(text="x [[simulate:expired]]")},
        ])
    assert out["refuse"].refused and out["refuse"].result_type == "succeeded"
    assert out["overload"].result_type == "errored" and out["overload"].retryable
    assert out["expire"].result_type == "expired" and out["expire"].retryable


def test_cancel_gives_canceled_results():
    with SimulatorServer(SimConfig(processing_seconds=30)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        batch = client.beta.messages.batches.create(
            requests=[{"custom_id": f"c{i}", "params": params()} for i in range(3)])
        canceled = client.beta.messages.batches.cancel(batch.id)
        assert canceled.cancel_initiated_at is not None
        ended = client.beta.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 3
        results = list(client.beta.messages.batches.results(batch.id))
        assert {r.result.type for r in results} == {"canceled"}


def test_24h_expiry_scaled_down_expires_unfinished_requests():
    with SimulatorServer(SimConfig(processing_seconds=10, expiry_seconds=0.5)) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        batch, out = run_batch(client, [{"custom_id": f"e{i}", "params": params()} for i in range(4)])
    assert batch.request_counts.expired == 4 and {o.result_type for o in out.values()} == {"expired"}


def test_results_come_back_out_of_request_order(client):
    ids = [f"r{i:02d}" for i in range(10)]
    _, out = run_batch(client, [{"custom_id": i, "params": params()} for i in ids])
    assert set(out) == set(ids) and list(out) != ids


def test_list_pages_and_delete(client):
    made = [client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params()}]).id
            for _ in range(3)]
    page = client.beta.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    assert [b.id for b in client.beta.messages.batches.list(limit=100)] == made[::-1]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.messages.batches.delete(made[0])  # not ended yet
    time.sleep(0.4)
    client.beta.messages.batches.delete(made[0])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.messages.batches.retrieve(made[0])


def test_models_endpoint_serves_the_catalogue(client):
    ids = {m.id for m in client.models.list()}
    assert {"claude-opus-4-6", "claude-sonnet-4-6", "claude-sonnet-4-5"} <= ids
    s45 = client.models.retrieve("claude-sonnet-4-5")
    assert s45.max_input_tokens == 200_000 and s45.max_tokens == 64_000
    assert client.models.retrieve("claude-opus-4-6").max_input_tokens == 1_000_000


def test_state_survives_a_restart(tmp_path):
    config = SimConfig(processing_seconds=0.2, state_dir=tmp_path / "sim")
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        batch = client.beta.messages.batches.create(requests=[{"custom_id": "keep", "params": params()}])
    time.sleep(0.3)
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        again = client.beta.messages.batches.retrieve(batch.id)
        assert again.processing_status == "ended" and again.request_counts.succeeded == 1
        first = client.beta.messages.batches.with_raw_response.results(batch.id).http_response.read()
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        assert client.beta.messages.batches.with_raw_response.results(batch.id).http_response.read() == first


def test_a_state_dir_keeps_batch_bodies_on_disk_not_in_memory(tmp_path):
    """Issue 10: a simulator inside `run --simulate` held every batch it was sent (1.8 GB for
    644 MB of documents); with a state dir it holds a batch's requests only while making its
    results. State files written before requests were spilled still load."""
    config = SimConfig(processing_seconds=0.2, state_dir=tmp_path / "sim")
    requests = [{"custom_id": f"r{i}", "params": params()} for i in range(3)]
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        batch = client.beta.messages.batches.create(requests=requests)
        assert server.sim._batches[batch.id].requests is None  # spilled at create
        assert server.sim.store.requests_of(server.sim._batches[batch.id]) == requests
        assert server.sim.create_log == [(batch.id, ["r0", "r1", "r2"])]
        time.sleep(0.3)
        assert client.beta.messages.batches.retrieve(batch.id).request_counts.succeeded == 3
        first = client.beta.messages.batches.with_raw_response.results(batch.id).http_response.read()
    old_format = tmp_path / "sim" / "msgbatch_oldformat0000000000000000.json"
    old_format.write_text(json.dumps({"id": old_format.stem, "created_at": time.time() - 10, "betas": [],
                                      "requests": requests[:1], "cancel_at": None}))
    with SimulatorServer(config) as server:
        client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0)
        assert client.beta.messages.batches.with_raw_response.results(batch.id).http_response.read() == first
        assert client.beta.messages.batches.retrieve(old_format.stem).request_counts.succeeded == 1
        client.beta.messages.batches.delete(batch.id)
    assert sorted(p.name for p in (tmp_path / "sim").iterdir() if batch.id in p.name) == []


def test_request_tokens_count_system_and_messages():
    from longbatch.catalog import get_model

    spec = get_model("claude-sonnet-4-6")
    base = count_request_tokens(params(text="hello world"), spec)
    with_system = count_request_tokens({**params(text="hello world"), "system": "You are careful."}, spec)
    assert with_system > base


# -- fault injection -------------------------------------------------------------------------

def sim_client(server, retries=0):
    return anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=retries)


def test_faults_hit_only_the_named_endpoints_with_the_named_statuses():
    config = SimConfig(processing_seconds=0.1, fault_rate=1.0, fault_statuses=[529], fault_endpoints=["list"])
    with SimulatorServer(config) as server:
        client = sim_client(server)
        batch = client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params()}])
        assert client.beta.messages.batches.retrieve(batch.id).id == batch.id
        with pytest.raises(anthropic.APIStatusError) as info:
            client.beta.messages.batches.list()
        assert info.value.status_code == 529 and server.sim.faults == {"list:529": 1}


def test_429_carries_retry_after_and_the_sdk_retries_through_it():
    config = SimConfig(fault_rate=0.5, fault_statuses=[429], fault_endpoints=["models"], seed=3)
    with SimulatorServer(config) as server:
        for _ in range(10):
            assert sim_client(server, retries=8).models.list().data  # every call gets through
        assert server.sim.faults.get("models:429", 0) >= 3


def test_404_window_right_after_create():
    with SimulatorServer(SimConfig(processing_seconds=0.1, not_found_after_create_seconds=0.5)) as server:
        client = sim_client(server)
        batch = client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params()}])
        with pytest.raises(anthropic.NotFoundError):
            client.beta.messages.batches.retrieve(batch.id)
        time.sleep(0.6)
        assert client.beta.messages.batches.retrieve(batch.id).processing_status == "ended"


def test_dropped_connection_after_create_leaves_the_batch_made():
    with SimulatorServer(SimConfig(processing_seconds=0.1, drop_after_create_rate=1.0)) as server:
        client = sim_client(server)
        with pytest.raises(anthropic.APIConnectionError):
            client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params()}])
        made = list(client.beta.messages.batches.list())
        assert len(made) == 1 and server.sim.faults == {"create:dropped": 1}


def test_per_request_errored_and_expired_rates():
    config = SimConfig(processing_seconds=0.1, errored_rate=0.3, expired_rate=0.3, seed=1)
    with SimulatorServer(config) as server:
        batch, out = run_batch(sim_client(server), [{"custom_id": f"r{i}", "params": params()} for i in range(60)])
    kinds = Counter(o.result_type for o in out.values())
    assert kinds["errored"] >= 8 and kinds["expired"] >= 8 and kinds["succeeded"] >= 8
    assert all(o.retryable for o in out.values() if o.result_type != "succeeded")


def test_slow_results_download_is_throttled():
    config = SimConfig(processing_seconds=0.1, output_tokens=20_000, results_bytes_per_second=100_000)
    text = "<document>\n" + "A sentence of the contract is here. " * 30_000 + "\n</document>"
    with SimulatorServer(config) as server:
        client = sim_client(server)
        batch = client.beta.messages.batches.create(requests=[{"custom_id": "a", "params": params(text=text, max_tokens=30_000)}])
        time.sleep(0.2)
        start = time.time()
        body = client.beta.messages.batches.with_raw_response.results(batch.id).http_response.read()
        elapsed = time.time() - start
    assert len(body) > 60_000 and elapsed >= len(body) / 100_000 * 0.7
