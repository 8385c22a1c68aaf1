"""docker-compose.yml and prefect.yaml: parse, name what they must, and carry valid run configs."""

import importlib
from pathlib import Path

import pytest
import yaml

from dd_core.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_compose_names_server_postgres_minio_bucket_init_and_worker():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "minio", "minio-init", "worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "postgres" in services["prefect-server"]["depends_on"]
    assert "mc mb" in services["minio-init"]["entrypoint"]
    assert services["worker"]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert services["worker"]["build"] == "." and (ROOT / "Dockerfile").exists()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert set(compose["volumes"]) == {"postgres", "minio"}


def _flow(entrypoint: str):
    module, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)


def test_prefect_yaml_deployments_have_cpu_and_gpu_pools_and_valid_parameters():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {"cpu", "gpu"}
    distill = [d for d in spec["deployments"] if _flow(d["entrypoint"]).name == "data-distillation"]
    assert {d["name"] for d in distill} == {"distill-cpu", "distill-gpu"}
    for deployment in distill:
        config = parse_config(deployment["parameters"]["config"], deployment["name"])
        assert config.storage.options == {}  # credentials come from the worker's environment
    assert any(d.get("schedules") for d in spec["deployments"])


def test_prefect_yaml_has_the_shard_labeling_deployment_that_runner_deployment_names_by_default():
    from dd_core.config import ShardsConfig

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    flow_name, _, name = ShardsConfig().deployment.partition("/")
    [shards] = [d for d in spec["deployments"] if d["name"] == name]
    flow = _flow(shards["entrypoint"])
    assert flow.name == flow_name and shards["work_pool"]["name"] == "gpu"
    assert "options" not in flow.parameters.properties  # storage credentials never become parameters
    assert not shards.get("parameters")  # every parameter comes from the distill flow's run


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    raw = yaml.safe_load(path.read_text())
    config = parse_config(raw, str(path))
    assert (config.task, config.model.preset, list(config.tta.scales)) == (raw["task"], raw["model"]["preset"],
                                                                            raw["tta"]["scales"])


def test_importing_flows_has_no_side_effects(monkeypatch):
    import os
    import subprocess

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    before = dict(os.environ)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    for module in ("flows.distill", "flows.labelers", "flows.shards", "flows.runners", "flows.cli", "flows.demo",
                   "flows.run", "flows.server"):
        importlib.reload(importlib.import_module(module))
    assert started == [] and dict(os.environ) == before
