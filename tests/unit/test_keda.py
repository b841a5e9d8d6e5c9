"""The KEDA examples in ops/deploy/keda/: what KEDA's Kafka scaler needs is there, and it names
what Vigil's workers really use (their group, source topic, offset reset, the CLI's options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import agents  # noqa: F401 - declares the agents the examples run
from streams.core.agent import runtime
from streams.core.groups import agent_group
from streams.core.settings import Settings

KEDA = Path(__file__).resolve().parents[2] / "ops" / "deploy" / "keda"
SCALER_KEYS = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}


def documents(name: str) -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((KEDA / name).read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), f"{name}: one document per kind"
    return by_kind


def container(pod_template: dict[str, Any]) -> dict[str, Any]:
    containers = pod_template["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def check_trigger(spec: dict[str, Any], c: dict[str, Any]) -> None:
    """A kafka trigger with the scaler's keys, string values, and the worker's own group,
    bootstrap servers and source topic; a replica cap no larger than the partitions."""
    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["kafka"]
    meta = triggers[0]["metadata"]
    assert meta.keys() >= SCALER_KEYS
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata is a string map"
    assert int(meta["lagThreshold"]) > 0
    env = env_of(c)
    settings = Settings(
        app_id=env.get("VIGIL_APP_ID", "vigil"), topic_prefix=env.get("VIGIL_TOPIC_PREFIX", "")
    )
    args = c["args"]
    agent = args[args.index("--agents") + 1]
    assert meta["consumerGroup"] == agent_group(settings, agent)  # each agent is its own group
    assert meta["bootstrapServers"] == env["VIGIL_KAFKA_BOOTSTRAP"]
    (agent_spec,) = runtime.select([agent])
    assert meta["topic"] == settings.topic(agent_spec.topic)
    # Vigil reads a group without offsets from the start; the scaler must count that as lag.
    assert meta["offsetResetPolicy"] == "earliest"
    assert 1 <= spec["maxReplicaCount"] <= Settings().partitions


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The container's arguments through the real ``vigil`` CLI; what reached run_worker."""
    import streams.adapter.worker as worker_module
    from streams.cli.commands import cli

    assert args[:2] == ["vigil", "worker"]
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        worker_module, "run_worker", lambda settings, rt, names, **kw: seen.update(names=names, **kw)
    )
    result = CliRunner().invoke(cli, args[1:])
    assert result.exit_code == 0, result.output
    return seen


def test_scaled_object_scales_the_worker_deployment_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = documents("scaledobject.yaml")
    deployment, scaled = docs["Deployment"], docs["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    c = container(deployment["spec"]["template"])
    check_trigger(spec, c)
    assert run_cli(c["args"], monkeypatch) == {"names": ["support"], "exit_when_idle": None}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings().drain_timeout  # SIGTERM's drain and commit fit before SIGKILL


def test_scaled_job_runs_workers_that_exit_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = documents("scaledjob.yaml")["ScaledJob"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    template = spec["jobTargetRef"]["template"]
    assert template["spec"]["restartPolicy"] in {"Never", "OnFailure"}
    c = container(template)
    check_trigger(spec, c)
    seen = run_cli(c["args"], monkeypatch)
    assert seen["names"] == ["support"]
    assert seen["exit_when_idle"] is not None and seen["exit_when_idle"] > 0
    assert template["spec"]["terminationGracePeriodSeconds"] > Settings().drain_timeout
