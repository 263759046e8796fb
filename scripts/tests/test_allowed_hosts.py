"""The Host header check: the compose default and the proxy against MLflow 3.17.2's own code.

1. compose/compose.yaml's default MLFLOW_SERVER_ALLOWED_HOSTS (= .env.example) allows at least what
   MLflow allows when the variable is unset (loopback and the private ranges, so a team reaches the
   server by its LAN address), plus the compose service names.
2. The proxy (target/release/mlflow-artifact-proxy, which answers the artifact routes itself) accepts
   and rejects exactly the Host headers MLflow's middleware does, for the same setting, unset included.
   MLflow's side is its real middleware (FastAPI's, which `mlflow server` runs, and Flask's) imported
   from the installed package; the proxy's side is the real binary on loopback.

Run: python -m pytest scripts/tests/test_allowed_hosts.py (needs the venv with mlflow, and the proxy built
by `scripts/stack setup`; PROXY_BIN overrides its path). Nothing here is skipped: missing parts fail.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
ENV_EXAMPLE = ROOT / "compose" / ".env.example"
PROXY_BIN = Path(os.environ.get("PROXY_BIN", ROOT / "target" / "release" / "mlflow-artifact-proxy"))
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
INVALID_HOST = b"Invalid Host header - possible DNS rebinding attack detected"
SERVICE_NAMES = ["mlflow", "mlflow:*", "proxy", "proxy:*"]

HOSTS = [
    "localhost", "localhost:5000", "LOCALHOST:5000", "127.0.0.1", "127.0.0.1:5000", "0.0.0.0:5000",
    "[::1]", "[::1]:5000", "::1", "[fc00::1]:5000", "fc00::1", "fd00::5", "[fd00::5]:5000",
    "10.0.0.5:5000", "10.255.255.255", "10.evil.example", "192.168.1.10:5000", "192.168.1.10",
    "192.169.0.1:5000", "172.15.255.1:5000", "172.16.0.1:5000", "172.20.0.3", "172.31.255.255:5000",
    "172.32.0.1:5000", "8.8.8.8:5000", "mlflow", "mlflow:5001", "proxy:5000", "minio:9000",
    "mlflow.example.com", "mlflow.example.com:5000", "evil.example.com", "localhost.evil.example",
]
SETTINGS = {
    "unset": None,
    "empty": "",
    "compose-default": "COMPOSE",
    "star": "*",
    "dns-name-added": "COMPOSE,mlflow.example.com,mlflow.example.com:*",
    "only-a-name": "mlflow.example.com",
    "spaces-and-patterns": " localhost:* , 192.168.1.* ,[[]::1]:*",
    "classes": "10.0.0.[0-9]:*,host-?",
}


def compose_default() -> str:
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["proxy"]
    raw = service["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
    match = re.fullmatch(r"\$\{MLFLOW_SERVER_ALLOWED_HOSTS:-(.*)\}", raw)
    assert match, raw
    return match[1]


def setting_value(template: str | None) -> str | None:
    return None if template is None else template.replace("COMPOSE", compose_default())


# ------------------------------------------------------------------------------ MLflow's own answer


@contextmanager
def allowed_hosts_env(value: str | None):
    old = os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS")
    os.environ.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
    if value is not None:
        os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = value
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_SERVER_ALLOWED_HOSTS", None)
        if old is not None:
            os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = old


def mlflow_fastapi_status(value: str | None, hosts: list[str]) -> dict[str, int]:
    """Status of GET <artifact route> per Host through MLflow's FastAPI security middleware."""
    from fastapi import FastAPI
    from mlflow.server.fastapi_security import init_fastapi_security

    with allowed_hosts_env(value):
        app = FastAPI()
        app.add_api_route(ARTIFACTS, lambda: {"files": []}, methods=["GET"])
        init_fastapi_security(app)

    async def one(host: str) -> int:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": ARTIFACTS, "raw_path": ARTIFACTS.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", host.encode())],
            "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000),
        }
        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    async def everything():
        return {host: await one(host) for host in hosts}

    return asyncio.run(everything())


def mlflow_flask_status(value: str | None, hosts: list[str]) -> dict[str, int]:
    from flask import Flask
    from mlflow.server.security import init_security_middleware

    with allowed_hosts_env(value):
        app = Flask("allowed_hosts")
        app.add_url_rule(ARTIFACTS, "artifacts", lambda: "ok")
        init_security_middleware(app)
    client = app.test_client()
    return {host: client.get(ARTIFACTS, headers={"Host": host}).status_code for host in hosts}


# ------------------------------------------------------------------------------- the proxy's answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def proxy(value: str | None):
    """The proxy binary on loopback; MLflow and S3 point at a closed port (the Host check comes first)."""
    assert PROXY_BIN.exists(), f"{PROXY_BIN} is not built (scripts/stack setup builds it)"
    port, metrics, dead = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PROXY_", "AWS_"))}
    env.update({
        "PROXY_LISTEN": f"127.0.0.1:{port}", "PROXY_METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "PROXY_UPSTREAM": f"http://127.0.0.1:{dead}", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{dead}",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://default/", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1", "RUST_LOG": "warn",
        # No MLflow runs here to ask about its auth app: this test is about the Host check.
        "PROXY_MLFLOW_AUTH": "off",
    })
    if value is not None:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = value
    process = subprocess.Popen([str(PROXY_BIN), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60  # only a hang exhausts it
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"the proxy exited {process.returncode}: {process.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("the proxy did not listen within 60 s")
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def proxy_status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # Answered without S3 or MLflow, but only after the Host check (503: no MLflow runs here to
        # say which release and modes it runs, which the proxy needs before any artifact route).
        conn.request("GET", f"{ARTIFACTS}?path=../x", headers={"Host": host})
        answer = conn.getresponse()
        body = answer.read()
        if answer.status == 403:
            assert body == INVALID_HOST, body
        return answer.status
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- tests


def test_compose_default_allows_what_mlflow_allows_by_default_plus_the_service_names():
    from mlflow.server.security_utils import get_default_allowed_hosts

    default = compose_default()
    listed = [h.strip() for h in default.split(",")]
    missing = [h for h in get_default_allowed_hosts() + SERVICE_NAMES if h not in listed]
    assert not missing, f"the compose default MLFLOW_SERVER_ALLOWED_HOSTS lacks {missing}"
    env_example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert env_example["MLFLOW_SERVER_ALLOWED_HOSTS"] == default
    mlflow_env = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"] == f"${{MLFLOW_SERVER_ALLOWED_HOSTS:-{default}}}", (
        "mlflow and the proxy must get the same value"
    )


def test_a_colleague_on_the_lan_is_allowed_by_default():
    statuses = mlflow_fastapi_status(compose_default(), ["192.168.1.10:5000", "10.0.0.5:5000", "172.20.0.3:5000"])
    assert set(statuses.values()) == {200}, statuses


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_proxy_decides_as_mlflow(setting):
    value = setting_value(SETTINGS[setting])
    fastapi_says = mlflow_fastapi_status(value, HOSTS)
    flask_says = mlflow_flask_status(value, HOSTS)
    assert fastapi_says == flask_says, "MLflow's two middlewares disagree"
    with proxy(value) as port:
        proxy_says = {host: proxy_status(port, host) for host in HOSTS}
    # MLflow's stand-in route answers 200 where it lets the request through; the proxy then answers
    # 503 (it has no MLflow to learn the release from), which it decides only after the Host.
    expected = {host: 403 if status == 403 else 503 for host, status in fastapi_says.items()}
    assert proxy_says == expected
