"""End-to-end check of `vdt serve`, run by tests/runtime/test_serve.py with an interpreter PyTriton's Triton stub accepts.

    python tests/runtime/serve_check.py BUNDLE

Starts `vdt serve BUNDLE` on 127.0.0.1 (free ports), sends concurrent requests over HTTP and gRPC with
tritonclient, and checks that each answer is byte-identical to a direct Pipeline call with the same Request;
then that refused requests get a clear error and the server keeps serving. Exits non-zero on any failure.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vdt_runtime import Pipeline, Request  # noqa: E402

HOST = "127.0.0.1"
PYTRITON_HOME = Path(tempfile.mkdtemp(prefix="vdt-serve-check-"))  # where the server's PyTriton puts its workspace
STEPS = 2
EXIT_TIMEOUT_S = 3


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def model_ready(ports: list[int]) -> bool:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://{HOST}:{ports[0]}/v2/models/vdt/ready", timeout=5).status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(bundle: str, ports: list[int]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vdt_runtime.cli", "serve", bundle, "--host", HOST, "--http-port", str(ports[0]),
           "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--backend", "cpu", "--threads", "1",
           "--queue-delay-us", "300000", "--exit-timeout-s", str(EXIT_TIMEOUT_S)]  # wait up to 0.3 s to fill a batch, so concurrent requests do batch
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTRITON_HOME": str(PYTRITON_HOME)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    deadline = time.monotonic() + 240
    while not model_ready(ports):  # Triton's own log shares the pipe, so ask the server, not its output
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("server did not start:\n" + "".join(lines[-40:]))
        time.sleep(0.5)
    return proc


def call(kind: str, ports: list[int], frames: np.ndarray, params: dict):
    """One request → (frames, error) over "http" or "grpc"."""
    if kind == "http":
        import tritonclient.http as client

        c = client.InferenceServerClient(f"{HOST}:{ports[0]}", network_timeout=300)
    else:
        import tritonclient.grpc as client

        c = client.InferenceServerClient(f"{HOST}:{ports[1]}")
    params = dict(params)
    task = client.InferInput("task", [1, 1], "BYTES")
    task.set_data_from_numpy(np.array([[params.pop("task").encode()]], dtype=object))
    inputs = [task]
    if len(frames):
        x = client.InferInput("frames", [1, *frames.shape], "UINT8")
        x.set_data_from_numpy(frames[None])
        inputs.append(x)
    outputs = [client.InferRequestedOutput("frames"), client.InferRequestedOutput("error")]
    result = c.infer("vdt", inputs=inputs, outputs=outputs, parameters=params)
    err = result.as_numpy("error").reshape(-1)[0]
    frames = result.as_numpy("frames")
    return None if frames is None else frames[0], err.decode() if isinstance(err, bytes) else str(err)


def metric(ports: list[int], name: str) -> float:
    """A counter of model "vdt" from Triton's Prometheus endpoint."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{HOST}:{ports[2]}/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="vdt"' in line)


def main(bundle: str) -> None:
    pipe = Pipeline.load(bundle, backend="cpu", options={"threads": 1})
    size, total = pipe.image_size, min(6, pipe.max_frames)
    clip = np.random.default_rng(3).integers(0, 256, (total, size, size, 3), dtype=np.uint8)
    cases = [  # (frames sent, KServe parameters, the same request built directly)
        (clip[:3], dict(task="predict", total=total, steps=STEPS, seed=s), None) for s in range(6)
    ] + [
        (clip[:2], dict(task="backward", total=total, steps=STEPS, seed=7), None),
        (clip[:3], dict(task="interpolate", stride=2, total=5, steps=STEPS, seed=8, sampler="ddim", eta="0.5"), None),
        (clip[:2], dict(task="complete", given="4,1", total=total, steps=STEPS, seed=9), None),
        (clip[:0], dict(task="unconditional", total=4, steps=STEPS, seed=10), None),
    ]
    expected = []
    for frames, params, _ in cases:
        kw = {k: v for k, v in params.items()}
        if "eta" in kw:
            kw["eta"] = float(kw["eta"])
        if "given" in kw:
            kw["given"] = [int(v) for v in kw["given"].split(",")]
        expected.append(pipe.generate([Request(frames=frames if len(frames) else None, **kw)])[0].frames)

    ports = free_ports(3)
    server = start_server(bundle, ports)
    try:
        kinds = ["http", "grpc"] * len(cases)
        with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
            futures = [pool.submit(call, kinds[i], ports, f, p) for i, (f, p, _) in enumerate(cases)]
            answers = [f.result() for f in futures]
        for i, ((frames, err), want) in enumerate(zip(answers, expected)):
            assert err == "", f"case {i} ({kinds[i]}) refused: {err}"
            assert frames.dtype == np.uint8 and np.array_equal(frames, want), f"case {i} ({kinds[i]}) frames differ"
        print(f"ok: {len(cases)} concurrent requests (HTTP and gRPC) equal direct Pipeline calls")
        requests, executions = metric(ports, "nv_inference_request_success"), metric(ports, "nv_inference_exec_count")
        assert requests == len(cases) and executions < requests, (requests, executions)
        print(f"ok: Triton's dynamic batcher ran the {requests:.0f} requests in {executions:.0f} batches")

        refused = [
            (clip[:2], dict(task="zoom", total=total), "unknown task 'zoom'"),
            (clip[:2], dict(task="predict", total=99, steps=STEPS), "max_frames"),
            (clip[:2], dict(task="predict", total=total, stride=3), "does not take stride=3"),
            (clip[:2], dict(task="predict", color="red"), "unknown parameter(s) 'color'"),
            (clip[:2], dict(task="predict", total="six"), "parameter 'total' must be an integer"),
            (clip[:3], dict(task="rollout", cond=2, total=100_000, steps=STEPS), "maximum 1024 returned in memory"),
            (clip[:2], dict(task="complete", given="", total=total, steps=STEPS), "given is empty"),
            (clip[:0], dict(task="predict", total=total), "needs input frames"),
        ]
        with concurrent.futures.ThreadPoolExecutor(len(refused) + 1) as pool:
            bad = [pool.submit(call, kind, ports, f, p) for (f, p, _), kind in zip(refused, kinds)]
            good = pool.submit(call, "grpc", ports, *cases[0][:2])
            for (frames, err), (_, _, words), kind in zip([b.result() for b in bad], refused, kinds):
                assert words in err and err.startswith("InputError: "), f"{kind}: {words!r} not in {err!r}"
                assert frames is None
            frames, err = good.result()
            assert err == "" and np.array_equal(frames, expected[0]), "a good request next to bad ones failed"
        print(f"ok: {len(refused)} bad requests refused with a one-line error; a request sent with them served")

        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        c = httpclient.InferenceServerClient(f"{HOST}:{ports[0]}")
        x = httpclient.InferInput("frames", [1, 2, size + 1, size, 3], "UINT8")
        x.set_data_from_numpy(np.zeros((1, 2, size + 1, size, 3), np.uint8))
        task = httpclient.InferInput("task", [1, 1], "BYTES")
        task.set_data_from_numpy(np.array([[b"predict"]], dtype=object))
        try:
            c.infer("vdt", inputs=[task, x], parameters=dict(total=total))
            raise AssertionError("a frame of the wrong size was accepted")
        except InferenceServerException as e:
            assert "frames" in str(e), str(e)
            print(f"ok: wrong-size frames refused by Triton: {str(e)[:120]}")
        assert c.is_server_live() and c.is_model_ready("vdt")
        frames, err = call("http", ports, *cases[1][:2])
        assert err == "" and np.array_equal(frames, expected[1])
        print("ok: still serving after bad requests")
        check_health(ports)
        check_sigterm(server, ports)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(60)
        shutil.rmtree(PYTRITON_HOME, ignore_errors=True)


def get(ports: list[int], which: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{HOST}:{ports[which]}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def check_health(ports: list[int]) -> None:
    """What an orchestrator probes: liveness, readiness (the pipeline is loaded before Triton starts), metrics."""
    assert get(ports, 0, "/v2/health/live")[0] == 200
    assert get(ports, 0, "/v2/health/ready")[0] == 200
    assert get(ports, 0, "/v2/models/vdt/ready")[0] == 200
    status, text = get(ports, 2, "/metrics")
    assert status == 200 and 'nv_inference_request_success{model="vdt"' in text, text[:500]
    print("ok: /v2/health/live, /v2/health/ready and the metrics port answer")


def check_sigterm(server: subprocess.Popen, ports: list[int]) -> None:
    """SIGTERM: the server exits 0, tritonserver is gone, every port is free, PyTriton's workspace is removed."""
    tritons = [p for p in children(server.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver"]
    assert tritons, "no tritonserver process under the server"
    workspaces = list(PYTRITON_HOME.glob("workspace_*"))  # PyTriton's workspace: model store, sockets (~22 MB)
    assert workspaces, f"no PyTriton workspace in {PYTRITON_HOME}"
    start = time.monotonic()
    server.terminate()  # SIGTERM
    assert server.wait(60) == 0, f"exit status {server.returncode} after SIGTERM"
    took = time.monotonic() - start
    assert took < EXIT_TIMEOUT_S + 15, f"stopping took {took:.1f} s"
    assert not any(Path(f"/proc/{p}").exists() for p in tritons), "tritonserver still runs after the server exited"
    for port in ports:
        with socket.socket() as s:  # a new server could take the port: nothing listens (TIME_WAIT of the
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # clients' closed connections may linger)
            s.bind((HOST, port))
            s.listen()
    assert not any(w.exists() for w in workspaces), f"PyTriton's workspace {workspaces} was left behind"
    print(f"ok: SIGTERM stopped the server in {took:.1f} s: exit 0, tritonserver gone, ports free, workspace removed")


def children(pid: int) -> list[int]:
    """Process ids of everything `pid` started, transitively."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent[int(name)] = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, grew = {pid}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in found and p not in found}
        found |= new
        grew = bool(new)
    return sorted(found - {pid})


if __name__ == "__main__":
    main(sys.argv[1])
