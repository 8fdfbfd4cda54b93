"""deploy/: the Dockerfile and the Kubernetes manifest agree with what `vdt serve` really takes and exposes (the
image itself is not built here: no docker daemon)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vdt_runtime.cli import _parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _dockerfile() -> tuple[list[str], list[str], set[int]]:
    text = (DEPLOY / "Dockerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    expose = {int(p) for p in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()}
    return entry, cmd, expose


def test_dockerfile_command_is_a_valid_vdt_serve_on_its_exposed_ports():
    entry, cmd, expose = _dockerfile()
    assert entry[:2] == ["vdt", "serve"]
    args = _parser().parse_args(entry[1:] + cmd)
    assert args.host == "0.0.0.0" and {args.http_port, args.grpc_port, args.metrics_port} == expose


def test_manifest_probes_ports_and_args_match_the_server():
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((DEPLOY / "kserve.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    entry, _, expose = _dockerfile()
    args = _parser().parse_args(entry[1:] + c["args"])  # the manifest's args are valid vdt serve flags
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert set(ports.values()) == expose
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and deployment["spec"]["replicas"] >= 2
    assert pod["terminationGracePeriodSeconds"] > args.exit_timeout_s + 5  # SIGTERM stop fits the grace period
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
