"""MLflow with `--static-prefix` behind the proxy (issue 19): a second stock MLflow (SQLite, the
stack's S3 store) started with MLFLOW_STATIC_PREFIX=/mlflow through the image's entrypoint, and a
second proxy with the same MLFLOW_STATIC_PREFIX. The real client with the tracking URI
`http://<proxy>/mlflow` logs a file; the UI's `/mlflow/get-artifact` and the artifact API under the
prefix are answered by the proxy from S3 (no artifact route in MLflow's log, nothing in its temp
folder), and what is outside the prefix goes to MLflow, which has no such route."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import mlflow
import pytest

from e2e_util import ROOT, SETTINGS, DirSampler, check, check_equal, http_get, raw_request, sha256_bytes

PREFIX = "/mlflow"
# Bounds, not timings: a second MLflow starts slowly on a loaded machine.
START_WITHIN = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url: str, within: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the process ended ({proc.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            if http_get(url, timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer 200 within {within} s; log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prefixed():
    work = Path(tempfile.mkdtemp(prefix="e2e-static-prefix-"))
    (work / "tmp").mkdir()
    s3 = {k: SETTINGS[k] for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                   "AWS_DEFAULT_REGION", "MLFLOW_ARTIFACTS_DESTINATION")}
    venv_bin = Path(os.environ.get("MLFLOW_STACK_VENV", ROOT / ".venv")) / "bin"
    mlflow_port, proxy_port, metrics_port = free_port(), free_port(), free_port()
    mlflow_env = {
        "PATH": f"{venv_bin}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/"),
        "PYTHON": str(venv_bin / "python"), "TMPDIR": str(work / "tmp"),
        "BACKEND_STORE_URI": f"sqlite:///{work}/mlflow.db", "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(mlflow_port), "MLFLOW_STATIC_PREFIX": PREFIX,
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", **s3,
    }
    mlflow_log = work / "mlflow.log"
    server = subprocess.Popen(
        ["sh", str(ROOT / "mlflow-image" / "entrypoint.sh"), "--workers", "1"], env=mlflow_env,
        stdout=open(mlflow_log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    proxy_log = work / "proxy.log"
    proxy = None
    try:
        wait_ok(f"http://127.0.0.1:{mlflow_port}{PREFIX}/health", START_WITHIN, server, mlflow_log)
        proxy_env = {
            **os.environ, **s3, "PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
            "PROXY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "PROXY_UPSTREAM": f"http://127.0.0.1:{mlflow_port}", "MLFLOW_STATIC_PREFIX": PREFIX,
            "PROXY_SIGNING_KEY_FILE": SETTINGS["PROXY_SIGNING_KEY_FILE"], "RUST_LOG": "info", "NO_COLOR": "1",
        }
        proxy = subprocess.Popen(
            [SETTINGS["PROXY_BIN"], "serve"], env=proxy_env, stdout=open(proxy_log, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_ok(f"http://127.0.0.1:{metrics_port}/readyz?deep=1", 60, proxy, proxy_log)
        yield f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{mlflow_port}", mlflow_log, work / "tmp"
    finally:
        for p in (proxy, server):
            if p is not None:
                stop(p)
        shutil.rmtree(work, ignore_errors=True)


def test_served_under_the_prefix(prefixed, tmp_path):
    proxy, stock, mlflow_log, temp = prefixed
    data = os.urandom(3 << 20)
    (tmp_path / "weights.bin").write_bytes(data)
    # mlflow-artifacts: roots resolve against the global tracking URI.
    mlflow.set_tracking_uri(f"{proxy}{PREFIX}")
    try:
        client = mlflow.MlflowClient(f"{proxy}{PREFIX}")
        exp = client.create_experiment("static-prefix")
        run = client.create_run(exp).info.run_id
        client.log_artifact(run, str(tmp_path / "weights.bin"), "data")
        out = client.download_artifacts(run, "data/weights.bin", str(tmp_path / "down"))
        check_equal("the client's round trip under the prefix", sha256_bytes(data), sha256_bytes(Path(out).read_bytes()))
    finally:
        mlflow.set_tracking_uri(SETTINGS["PROXY_URL"])
    target = "/get-artifact?" + urlencode({"path": "data/weights.bin", "run_id": run})
    before = mlflow_log.stat().st_size
    with DirSampler(temp) as tmp:
        r = raw_request(proxy, "GET", PREFIX + target)
    check_equal("status of /mlflow/get-artifact through the proxy", 200, r.status)
    check("answered by the proxy", "server" not in r.headers, "no server: uvicorn", r.headers)
    check_equal("SHA-256 of /mlflow/get-artifact", sha256_bytes(data), sha256_bytes(r.body))
    check_equal("MLflow's temp growth, bytes", 0, tmp.growth)
    with open(mlflow_log, "rb") as f:
        f.seek(before)
        hits = [l for l in f.read().decode("utf-8", "replace").splitlines() if "get-artifact" in l or "mlflow-artifacts" in l]
    check_equal("artifact routes in MLflow's log", [], hits)
    # Outside the prefix MLflow has no such route, and says so itself.
    outside = raw_request(proxy, "GET", target)
    check_equal("/get-artifact outside the prefix: MLflow's 404", (404, "uvicorn"), (outside.status, outside.headers.get("server")))
    check_equal("the same on stock MLflow", 404, raw_request(stock, "GET", target).status)
