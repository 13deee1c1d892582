"""Deployments: the schedules exist, parameters validate, and the UI form has descriptions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from flows.process import RunParameters, collect_batches, process_documents
from longbatch.catalog import get_model

REPO = Path(__file__).resolve().parents[1]


def test_prefect_yaml_entrypoints_and_parameters_are_valid():
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"nightly", "on-demand", "collector"}
    assert deployments["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments["collector"]["schedules"][0]["interval"] == 900
    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and func in (REPO / path).read_text()
        if func == "process_documents":
            RunParameters(**d["parameters"]["params"])  # raises if a field is wrong


def test_serve_builds_three_deployments_with_schedules():
    spec = importlib.util.spec_from_file_location("serve", REPO / "deployments" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing serves nothing
    built = {d.name: d for d in module.build_deployments("somewhere")}
    assert set(built) == {"nightly", "on-demand", "collector"}
    assert built["nightly"].schedules and built["collector"].schedules and not built["on-demand"].schedules
    assert built["nightly"].parameters["params"]["data_dir"] == "somewhere"


def test_ui_form_fields_have_descriptions():
    schema = parameter_schema(process_documents.fn).model_dump()
    fields = schema["definitions"]["RunParameters"]["properties"]
    assert {"model", "prompts", "max_output_tokens", "budget_usd", "simulate", "wait"} <= set(fields)
    assert all(f.get("description") for f in fields.values())
    collect = parameter_schema(collect_batches.fn).model_dump()["properties"]
    assert all(f.get("description") for f in collect.values())


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q"
    assert command in readme and command in ci


def test_a_workers_environment_reaches_a_run_started_from_a_deployment(tmp_path, monkeypatch):
    """A deployment names no model; the worker's LONGBATCH_MODEL decides it. The run is started
    through the API (as the UI's Run button does) and executed by a Prefect runner in its own
    process, as a worker executes it."""
    import asyncio
    import shutil

    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    data_dir = tmp_path / "data"
    shutil.copytree(REPO / "data" / "inbox", data_dir / "inbox", ignore=shutil.ignore_patterns("problems"))
    deployment = process_documents.to_deployment(
        name="env-reaches-the-run", parameters={"params": RunParameters(data_dir=str(data_dir)).model_dump()})
    deployment.apply()
    assert deployment.parameters["params"]["model"] is None  # the form leaves the model to the environment
    flow_run = run_deployment(f"process-documents/{deployment.name}", timeout=0)
    monkeypatch.setenv("LONGBATCH_MODEL", "claude-opus-4-6")
    monkeypatch.setenv("LONGBATCH_SIMULATE", "true")
    monkeypatch.setenv("LONGBATCH_SIM_PROCESSING_SECONDS", "0.3")
    monkeypatch.chdir(REPO)  # a worker runs from the folder `prefect deploy` recorded: the repository root
    asyncio.run(Runner().execute_flow_run(flow_run.id))

    async def final_state():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state

    assert asyncio.run(final_state()).is_completed()
    summary = pd.read_csv(data_dir / "reports" / "summary.csv")
    assert len(summary) >= 4 and set(summary["model"]) == {"claude-opus-4-6"}
    assert set(summary["status"]) == {"complete"}


def test_nightly_submits_and_leaves_the_waiting_to_the_collector():
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["parameters"]["params"]["wait"] is False
    assert "pull" not in spec  # `prefect deploy` records the repository root: no env var to set
    module_spec = importlib.util.spec_from_file_location("serve", REPO / "deployments" / "serve.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    built = {d.name: d for d in module.build_deployments("somewhere")}
    assert RunParameters(**built["nightly"].parameters["params"]).settings().wait is False
    assert RunParameters(**built["on-demand"].parameters["params"]).settings().wait is True


def test_run_form_offers_choices_and_descriptions_render_as_written():
    from longbatch.catalog import BUILTIN_MODELS, DEFAULT_MODEL, model_choices

    fields = parameter_schema(process_documents.fn).model_dump()["definitions"]["RunParameters"]["properties"]
    def choices(field: dict) -> list:  # empty is a choice too: the environment's default
        assert {"type": "null"} in field["anyOf"]
        return next(b["enum"] for b in field["anyOf"] if b.get("type") == "string")

    assert choices(fields["model"]) == model_choices() and DEFAULT_MODEL in model_choices()
    assert set(model_choices()) == {m.id for m in BUILTIN_MODELS.values() if m.lifecycle != "retired"}
    assert choices(fields["pdf_mode"]) == ["text", "native"]
    collect = parameter_schema(collect_batches.fn).model_dump()["properties"]
    for field in [*fields.values(), *collect.values()]:  # the UI renders Markdown: a <tag> vanishes
        assert "<" not in field["description"] and ">" not in field["description"], field["description"]


def test_a_model_outside_the_form_still_gets_the_catalogues_own_error():
    from longbatch.errors import UnknownModelError

    params = RunParameters(model="claude-opus-99")  # Python and the CLI are not limited to the form
    with pytest.raises(UnknownModelError, match="claude-sonnet-4-6"):
        get_model(params.settings().model)
