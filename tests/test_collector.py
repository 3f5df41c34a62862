"""The Collector config and service file under collector/ agree with tracelens' defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tracelens.receiver.server import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT

COLLECTOR = Path(__file__).resolve().parent.parent / "collector"
CONFIG = COLLECTOR / "otelcol-tracelens.yaml"
GRPC_EXPORTER_TYPES = ("otlp", "otlp_grpc")
COMPONENT_KINDS = ("receivers", "processors", "exporters")


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_tracelens_exporter_targets_the_default_grpc_endpoint(config: dict) -> None:
    exporter = config["exporters"]["otlp/tracelens"]
    host, port = exporter["endpoint"].rsplit(":", 1)
    assert (host, int(port)) == (DEFAULT_HOST, DEFAULT_GRPC_PORT)
    assert exporter["tls"]["insecure"] is True
    assert exporter["retry_on_failure"]["enabled"] is True


def test_traces_fan_out_to_tracelens_and_another_backend(config: dict) -> None:
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    assert "otlp/tracelens" in exporters
    assert any(not e.startswith(("otlp/tracelens",)) for e in exporters)
    types = {e.split("/")[0] for e in exporters}
    assert types & set(GRPC_EXPORTER_TYPES)


def test_pipelines_reference_only_defined_components(config: dict) -> None:
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in COMPONENT_KINDS:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{name}: {kind} {component}"


def test_receiver_ports_are_the_otlp_defaults(config: dict) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(f":{DEFAULT_GRPC_PORT}")
    assert protocols["http"]["endpoint"].endswith(f":{DEFAULT_HTTP_PORT}")
    # Not 0.0.0.0: that would collide with tracelens on 127.0.0.1 of the same host.
    assert not protocols["grpc"]["endpoint"].startswith(("0.0.0.0", DEFAULT_HOST))


def test_systemd_unit_runs_serve_and_stops_with_sigterm() -> None:
    unit = (COLLECTOR / "tracelens.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)
    assert exec_start and " serve " in exec_start.group(1) + " "
    assert re.search(r"^KillSignal=SIGTERM$", unit, re.M)
    assert "--host" not in exec_start.group(1)  # loopback by default


def test_readme_names_every_sdk_protocol() -> None:
    readme = (COLLECTOR / "README.md").read_text()
    for text in ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc", "http/protobuf", "http/json",
                 CONFIG.name, "tracelens.service"):  # fmt: skip
        assert text in readme
