"""MLflow's multipart upload and presigned (parallel, ranged) download through the proxy (issue 13),
with the real MLflow client: a 1 GiB file up and down with the parts in parallel, parts spread over
three proxy processes sharing one signing key (by hand, and behind a round-robin nginx), and the
UI's presigned route with and without Range. No request may go anywhere but the proxy."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e_util import (
    LOGS,
    MLFLOW_URL,
    PROXY_URL,
    SETTINGS,
    LogWatch,
    check,
    check_equal,
    http_get,
    mlflow_log_settled,
    raw_request,
    s3_requests,
    sha256_bytes,
    sha256_file,
    wait_for,
    write_random,
)

MIB = 1 << 20
MPU = "/api/2.0/mlflow-artifacts/mpu"
NOT_PROXY = re.compile(r"python-requests|mlflow-python-client|Botocore|Boto3|aws-cli", re.I)
ACCESS = re.compile(
    r"^(?P<ts>\S+)\s+INFO access: method=(?P<method>\S+) path=(?P<path>\S+) route=\"?(?P<route>\w+)\"? "
    r"status=(?P<status>\d+) .*?duration_ms=(?P<ms>[\d.]+)"
)


def access_log(text: str, route: str) -> list[dict]:
    """The proxy's access-log lines of one route class, each with its [start, end] time."""
    out = []
    for line in text.splitlines():
        m = ACCESS.search(line)
        if not m or m["route"] != route:
            continue
        end = dt.datetime.fromisoformat(m["ts"].replace("Z", "+00:00")).timestamp()
        out.append({**m.groupdict(), "end": end, "start": end - float(m["ms"]) / 1000})
    return out


def max_overlap(lines: list[dict]) -> int:
    """The most requests that were in progress at the same moment."""
    events = sorted([(l["start"], 1) for l in lines] + [(l["end"], -1) for l in lines])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def client_env(monkeypatch):
    """The client's multipart switches (read at call time, so setting them here is enough)."""

    def set_env(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))

    return set_env


def new_run(name: str):
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        pass
    return run


def test_1gib_parallel_multipart_upload_and_download(tmp_path, client_env):
    """1 GiB with the client's multipart switched on by its env vars and a lowered threshold and part
    size: hashes equal, parts and ranges overlapped in time, every byte through the proxy only."""
    client_env(
        MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true",
        MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD="true",
        MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=MIB,
        MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=32 * MIB,
        MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE=64 * MIB,
    )
    path = tmp_path / "one-gib.bin"
    digest = write_random(path, 1024 * MIB)
    run = new_run("e2e-multipart")
    client = MlflowClient()
    proxy_log, s3_log, mlflow_log = (LogWatch(LOGS / f"{s}.log") for s in ("proxy", "s3", "mlflow"))
    t0 = time.monotonic()
    client.log_artifact(run.info.run_id, str(path), "big")
    t1 = time.monotonic()
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"big/{path.name}", dst_path=str(tmp_path / "down")
    )
    t2 = time.monotonic()
    print(f"1 GiB multipart: upload {t1 - t0:.2f}s ({1024 / (t1 - t0):.0f} MiB/s), "
          f"presigned download {t2 - t1:.2f}s ({1024 / (t2 - t1):.0f} MiB/s)")
    path.unlink()
    check_equal("SHA-256 of the 1 GiB file after multipart upload and ranged download", digest, sha256_file(Path(local)))
    Path(local).unlink()

    # Every request's access line, then the checks.
    text = proxy_log.text_once(lambda t: len(access_log(t, "signed_part")) >= 32
                               and len(access_log(t, "signed_object")) >= 16 and len(access_log(t, "mpu")) >= 2)
    parts = access_log(text, "signed_part")
    ranges = access_log(text, "signed_object")
    mpu = access_log(text, "mpu")
    check_equal("mpu/create, part PUTs (32 MiB each), mpu/complete in the proxy's access log",
                (1, 32, 1),
                (sum("/create/" in l["path"] for l in mpu), len(parts), sum("/complete/" in l["path"] for l in mpu)))
    check_equal("statuses of the part PUTs and ranged GETs", {"200", "206"} if ranges else {"200"},
                {l["status"] for l in parts + ranges})
    check_equal("ranged GETs of the presigned download (64 MiB each)", 16, len(ranges))
    check(max_overlap(parts) >= 2, "part PUTs in progress at the same moment (from the access log)", ">= 2",
          max_overlap(parts))
    check(max_overlap(ranges) >= 2, "ranged GETs in progress at the same moment", ">= 2", max_overlap(ranges))
    print(f"parts in flight at once: {max_overlap(parts)}, ranges in flight at once: {max_overlap(ranges)}")

    # Nothing but the proxy: MLflow saw no artifact route, S3 saw no Python client.
    check_equal("MLflow access-log lines for artifact routes", [],
                [l for l in mlflow_log_settled(mlflow_log).splitlines() if "mlflow-artifacts" in l])
    reqs = s3_requests(s3_log.text())
    check(any("uploadId=" in r["uri"] for r in reqs), "UploadPart requests reached S3 (from the proxy)",
          "some", len(reqs))
    check_equal("S3 requests from a Python client or MLflow (boto3)", [],
                [r for r in reqs if NOT_PROXY.search(r["ua"])])
    MlflowClient()._tracking_client._get_artifact_repo(run.info.run_id).delete_artifacts("big")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def replicas(tmp_path):
    """Two more proxy processes on the same stack (same store, MLflow and signing key), each with
    its own log: [(url, log path)], the stack's own proxy first."""
    procs, out = [], [(PROXY_URL, LOGS / "proxy.log")]
    for i in range(2):
        port, metrics = free_port(), free_port()
        log = tmp_path / f"replica-{i}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PROXY_"))}
        env.update(
            PROXY_LISTEN=f"127.0.0.1:{port}",
            PROXY_METRICS_LISTEN=f"127.0.0.1:{metrics}",
            PROXY_UPSTREAM=MLFLOW_URL,
            PROXY_SIGNING_KEY_FILE=SETTINGS["PROXY_SIGNING_KEY_FILE"],
            MLFLOW_ARTIFACTS_DESTINATION=SETTINGS["MLFLOW_ARTIFACTS_DESTINATION"],
            MLFLOW_S3_ENDPOINT_URL=SETTINGS["MLFLOW_S3_ENDPOINT_URL"],
            AWS_ACCESS_KEY_ID=SETTINGS["AWS_ACCESS_KEY_ID"],
            AWS_SECRET_ACCESS_KEY=SETTINGS["AWS_SECRET_ACCESS_KEY"],
            AWS_DEFAULT_REGION=SETTINGS["AWS_DEFAULT_REGION"],
            RUST_LOG="info",
            NO_COLOR="1",
        )
        f = open(log, "wb")
        procs.append((subprocess.Popen([SETTINGS["PROXY_BIN"], "serve"], env=env, stdout=f, stderr=f), f))
        url = f"http://127.0.0.1:{port}"
        if not wait_for(lambda: _up(f"http://127.0.0.1:{metrics}/readyz")):
            pytest.fail(f"replica {i} did not become ready:\n{log.read_text()[-2000:]}")
        out.append((url, log))
    yield out
    for p, f in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        f.close()


def _up(url: str) -> bool:
    try:
        return http_get(url, timeout=2).status == 200
    except OSError:
        return False


def test_create_on_one_replica_parts_on_all_complete_on_another(replicas, s3):
    """Three proxies, one key: create on the first, part i on replica i mod 3, complete on the third;
    the presigned URL from the second is served by the first. No state lives in one process."""
    (a, _), (b, _), (c, _) = replicas
    run = new_run("e2e-multipart-replicas")
    root = run.info.artifact_uri.split("mlflow-artifacts:/", 1)[1].strip("/")
    data = [os.urandom(5 * MIB) for _ in range(5)] + [os.urandom(123_457)]
    created = raw_request(a, "POST", f"{MPU}/create/{root}/rr", json.dumps({"path": "rr.bin", "num_parts": 6}).encode(),
                          {"Content-Type": "application/json"})
    check_equal("mpu/create on the first replica", 200, created.status)
    answer = created.json()
    parts = []
    for i, cred in enumerate(answer["credentials"]):
        target = [a, b, c][i % 3]
        url = cred["url"]
        check(url.startswith(f"{a}/api/2.0/mlflow-artifacts/signed/part?token="), "part URL on the proxy asked",
              a, url)
        path = url[len(a):]
        r = raw_request(target, "PUT", path, data[i])
        check_equal(f"part {i + 1} PUT on {target}", 200, r.status)
        parts.append({"part_number": cred["part_number"], "etag": r.headers["etag"], "url": url})
    done = raw_request(c, "POST", f"{MPU}/complete/{root}/rr",
                       json.dumps({"path": "rr.bin", "upload_id": answer["upload_id"], "parts": parts}).encode(),
                       {"Content-Type": "application/json"})
    check_equal("mpu/complete on the third replica", (200, {}), (done.status, done.json()))
    whole = b"".join(data)
    presigned = http_get(f"{b}/api/2.0/mlflow-artifacts/presigned/{root}/rr/rr.bin").json()
    check_equal("file_size from presigned/ on the second replica", len(whole), presigned["file_size"])
    served = raw_request(a, "GET", presigned["url"][len(b):])
    check_equal("SHA-256 of the object, served by the first replica from the second's URL",
                sha256_bytes(whole), sha256_bytes(served.body))


NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    upstream proxies {{ {servers} }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        location / {{
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_pass http://proxies;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(replicas, tmp_path):
    """Debian's nginx, round-robin over the three proxies."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is not installed (apt-get install nginx; scripts/stack setup installs it)")
    port = free_port()
    d = tmp_path / "nginx"
    d.mkdir()
    servers = " ".join(f"server {u.split('//')[1]};" for u, _ in replicas)
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, servers=servers, port=port))
    proc = subprocess.Popen([binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    if not wait_for(lambda: _up(f"{url}/health")):
        proc.kill()
        pytest.fail(f"nginx did not start: {proc.stderr.read().decode()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_real_client_behind_round_robin_nginx(nginx, replicas, tmp_path, client_env):
    """The MLflow client against nginx in front of three proxies: its parts and ranges land on all
    three, and the bytes come back whole."""
    client_env(
        MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=MIB,
        MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=8 * MIB,
        MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE=8 * MIB,
    )
    watches = [LogWatch(log) for _, log in replicas]
    path = tmp_path / "rr.bin"
    digest = write_random(path, 96 * MIB)
    mlflow.set_tracking_uri(nginx)
    try:
        run = new_run("e2e-multipart-nginx")
        MlflowClient().log_artifact(run.info.run_id, str(path), "rr")
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="rr/rr.bin", dst_path=str(tmp_path / "down")
        )
    finally:
        mlflow.set_tracking_uri(PROXY_URL)
    check_equal("SHA-256 after the round trip through nginx and three proxies", digest, sha256_file(Path(local)))

    def parts_and_ranges(text):
        return len(access_log(text, "signed_part")), len(access_log(text, "signed_object"))

    # Every replica's access lines, then the count (12 parts and 12 ranges in all).
    wait_for(lambda: all(n >= 12 for n in map(sum, zip(*(parts_and_ranges(w.text()) for w in watches)))))
    per_replica = [
        (len(access_log(w.text(), "signed_part")), len(access_log(w.text(), "signed_object"))) for w in watches
    ]
    print(f"(parts, ranges) per replica: {per_replica}")
    check_equal("12 parts and 12 ranges in all", (12, 12), tuple(map(sum, zip(*per_replica))))
    check(all(p > 0 and r > 0 for p, r in per_replica), "every replica took parts and ranges", "all > 0",
          per_replica)


def test_ui_presigned_route_downloads_with_and_without_range(s3):
    """`ajax-api/2.0/mlflow-artifacts/presigned/<path>` (what the UI asks when server-info offers
    multipart downloads) answers a URL on the proxy that serves the object, whole and by range."""
    run = new_run("e2e-presigned-ui")
    root = run.info.artifact_uri.split("mlflow-artifacts:/", 1)[1].strip("/")
    data = os.urandom(3 * MIB + 5)
    put = raw_request(PROXY_URL, "PUT", f"/ajax-api/2.0/mlflow-artifacts/artifacts/{root}/ui/pic.png", data)
    check_equal("UI-style PUT", 200, put.status)
    answer = http_get(f"{PROXY_URL}/ajax-api/2.0/mlflow-artifacts/presigned/{root}/ui/pic.png")
    check_equal("presigned/ status and keys", (200, ["url", "headers", "file_size"]),
                (answer.status, list(answer.json())))
    url = answer.json()["url"]
    check(url.startswith(f"{PROXY_URL}/ajax-api/2.0/mlflow-artifacts/signed/object?token="),
          "the URL points at the proxy, on the UI's prefix", PROXY_URL, url)
    path = url[len(PROXY_URL):]
    whole = raw_request(PROXY_URL, "GET", path)
    check_equal("whole download: status, type, disposition, bytes",
                (200, "image/png", "attachment; filename=pic.png", sha256_bytes(data)),
                (whole.status, whole.headers.get("content-type"), whole.headers.get("content-disposition"),
                 sha256_bytes(whole.body)))
    part = raw_request(PROXY_URL, "GET", path, headers={"Range": "bytes=100-1048675"})
    check_equal("ranged download: status, Content-Range, bytes",
                (206, f"bytes 100-1048675/{len(data)}", sha256_bytes(data[100:1048676])),
                (part.status, part.headers.get("content-range"), sha256_bytes(part.body)))
    tampered = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    check_equal("a tampered URL", 403, raw_request(PROXY_URL, "GET", tampered).status)
