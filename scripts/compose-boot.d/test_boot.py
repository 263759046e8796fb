"""compose/compose.yaml, booted for real (scripts/compose-boot sets up the engine and the stand-in images).

The tests run in file order on one compose project: build and start, what a user sees (the real MLflow
client on the host, with only MLFLOW_TRACKING_URI), where the data lives, restart, Host headers,
monitoring, and finally `down -v`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

DOCKER = os.environ["COMPOSE_BOOT_DOCKER"]
COMPOSE = shlex.split(os.environ["COMPOSE_BOOT_COMPOSE"])
PROJECT = os.environ["COMPOSE_BOOT_PROJECT"]
DOCS = Path(os.environ["COMPOSE_BOOT_DOCS"])
TRACKING_URI = os.environ["MLFLOW_TRACKING_URI"]
assert TRACKING_URI == "http://127.0.0.1:5000", TRACKING_URI

CORE = ["mysql", "minio", "defaultbucket", "mlflow", "proxy"]
LONG_RUNNING = ["mysql", "minio", "mlflow", "proxy"]
MODEL_NAME = "compose-boot-model"
BIG_MIB = 200
INVALID_HOST = "Invalid Host header - possible DNS rebinding attack detected"

# What the tests hand on to the next ones, and figures for the summary (conftest prints them).
STATE: dict = {}
TIMINGS: dict[str, float] = {}


# ------------------------------------------------------------------------------------------ helpers


def run(cmd: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{shlex.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run([*COMPOSE, *args], timeout=timeout)


def containers() -> dict[str, dict]:
    """service -> `docker inspect` of its container, for this project."""
    ids = run([DOCKER, "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout.split()
    if not ids:
        return {}
    found = json.loads(run([DOCKER, "inspect", *ids]).stdout)
    return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in found}


def wait_ready(services: list[str], timeout: float) -> dict[str, dict]:
    """Every long-running service in `services` healthy, defaultbucket exited 0; fails early on a crash."""
    deadline = time.monotonic() + timeout
    while True:
        found = containers()
        problems = []
        for name in services:
            c = found.get(name)
            if c is None:
                problems.append(f"{name}: no container")
                continue
            state = c["State"]
            if name == "defaultbucket":
                if state["Status"] == "exited" and state["ExitCode"] != 0:
                    pytest.fail(f"defaultbucket exited {state['ExitCode']}:\n{logs(name)}")
                if not (state["Status"] == "exited" and state["ExitCode"] == 0):
                    problems.append(f"defaultbucket: {state['Status']}")
                continue
            health = (state.get("Health") or {}).get("Status")
            if state["Status"] in ("exited", "dead") or health == "unhealthy" or state.get("RestartCount", 0) > 0:
                pytest.fail(f"{name}: {state['Status']}, health {health}, restarts {state.get('RestartCount')}:\n{logs(name)}")
            if health != "healthy":
                problems.append(f"{name}: {health}")
        if not problems:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not ready after {timeout:.0f} s: {problems}")
        time.sleep(2)


def logs(service: str) -> str:
    return run([*COMPOSE, "--profile", "monitoring", "logs", "--no-color", "--tail", "60", service], check=False).stdout


def raw_get(path: str, host: str, port: int = 5000) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def in_volume(volume: str, mount: str, *cmd: str) -> str:
    """A command in a fresh container that sees only the named volume (read-only, no network)."""
    return run([DOCKER, "run", "--rm", "--network", "none", "-v", f"{volume}:{mount}:ro",
                "debian:bookworm-slim", *cmd]).stdout


def documented_ports() -> set[tuple[str, str, int, int]]:
    """docs/compose.md "Published ports": (service, host address, host port, container port)."""
    text = DOCS.read_text()
    section = text.split("## Published ports", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[2].isdigit():
            rows.add((cells[0], cells[1], int(cells[2]), int(cells[3])))
    assert rows, "docs/compose.md has no Published ports table"
    return rows


def published(found: dict[str, dict]) -> set[tuple[str, str, int, int]]:
    rows = set()
    for service, c in found.items():
        for port, bindings in (c["NetworkSettings"]["Ports"] or {}).items():
            for b in bindings or []:
                address = "all" if b["HostIp"] in ("0.0.0.0", "::", "") else b["HostIp"]
                rows.add((service, address, int(b["HostPort"]), int(port.split("/")[0])))
    return rows


def check_ports(found: dict[str, dict], services: set[str]):
    expected = {row for row in documented_ports() if row[0] in services}
    assert published({s: c for s, c in found.items() if s in services}) == expected


# ------------------------------------------------------------------------------------------- tests


HEALTHY = "health_status: healthy"
# The events the start order is read from.
NEEDED_EVENTS = {("minio", HEALTHY), ("defaultbucket", "start"), ("mysql", HEALTHY), ("mlflow", "start"),
                 ("defaultbucket", "die 0"), ("proxy", "start"), ("mlflow", HEALTHY), ("proxy", HEALTHY)}


def first_events(events_file) -> dict[tuple[str, str], int]:
    """{(service, action): time of its first event} from `docker events --format '{{json .}}'`."""
    first: dict[tuple[str, str], int] = {}
    for line in events_file.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line still being written
        service = event["Actor"]["Attributes"].get("com.docker.compose.service")
        action = event["Action"]
        if action == "die":
            action = f"die {event['Actor']['Attributes'].get('exitCode')}"
        first.setdefault((service, action), event["timeNano"])
    return first


def test_up_builds_and_starts_in_documented_order(tmp_path_factory):
    events_file = tmp_path_factory.mktemp("events") / "events.jsonl"
    since = str(int(time.time()) - 1)
    with events_file.open("w") as out:
        watcher = subprocess.Popen(
            [DOCKER, "events", "--since", since, "--format", "{{json .}}",
             "--filter", f"label=com.docker.compose.project={PROJECT}", "--filter", "type=container",
             "--filter", "event=start", "--filter", "event=die", "--filter", "event=health_status"],
            stdout=out, stderr=subprocess.DEVNULL)
        try:
            started = time.monotonic()
            compose("up", "-d", "--build", timeout=3600)
            STATE["build_and_start_s"] = time.monotonic() - started
            found = wait_ready(CORE, timeout=600)
            STATE["ready_s"] = time.monotonic() - started
            # docker events streams a moment behind `docker inspect`: wait for the events the
            # checks below read, not for a guessed while.
            deadline = time.monotonic() + 120
            while not NEEDED_EVENTS <= set(first_events(events_file)) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            watcher.terminate()
            watcher.wait(timeout=10)
    assert set(found) == set(CORE), sorted(found)

    first = first_events(events_file)

    def at(service: str, action: str) -> int:
        assert (service, action) in first, f"no event {action!r} for {service}: {sorted(first)}"
        return first[(service, action)]

    assert at("minio", HEALTHY) < at("defaultbucket", "start")
    assert at("mysql", HEALTHY) < at("mlflow", "start")
    assert at("defaultbucket", "die 0") < at("proxy", "start")
    assert at("mlflow", HEALTHY) < at("proxy", "start")
    assert at("proxy", "start") < at("proxy", HEALTHY)
    for service in LONG_RUNNING:
        assert not [a for (s, a) in first if s == service and a.startswith("die")], f"{service} died"
    TIMINGS["up -d --build returned"] = STATE["build_and_start_s"]
    TIMINGS["all healthy after"] = STATE["ready_s"]


def test_published_ports_are_exactly_the_documented_ones():
    check_ports(containers(), set(LONG_RUNNING) | {"defaultbucket"})


def test_images_run_as_non_root():
    found = containers()
    for service, name in (("proxy", "mlflowproxy"), ("mlflow", "mlflow")):
        assert found[service]["Config"]["User"] == "10001:10001", found[service]["Config"]["User"]
        cid = found[service]["Id"]
        status = run([DOCKER, "exec", cid, "cat", "/proc/1/status"]).stdout
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)[1].split()
        assert uids == ["10001"] * 4, f"{service} pid 1 runs as {uids}"
        assert run([DOCKER, "exec", cid, "id", "-un"]).stdout.strip() == name


class AddN:
    """A pyfunc model: adds n to every value."""

    def __init__(self, n: int):
        self.n = n

    def predict(self, context, model_input, params=None):
        return model_input + self.n


def predict_with(model_uri: str):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(pd.DataFrame({"x": [1, 2, 3]}))["x"].tolist()


def test_the_mlflow_client_logs_registers_and_downloads(tmp_path):
    import mlflow
    from mlflow.pyfunc import PythonModel

    class AddModel(AddN, PythonModel):
        pass

    src = tmp_path / "src"
    files = {
        "notes.txt": b"hello compose\n",
        "dir/sub/deeper/values.json": b'{"a": 1}',
        "dir/sub/table.csv": b"x,y\n1,2\n",
        "dir/empty.bin": b"",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    big = src / "big" / "big.bin"
    big.parent.mkdir(parents=True)
    with big.open("wb") as f:
        for _ in range(BIG_MIB // 8):
            f.write(os.urandom(8 << 20))
    sent = tree_hashes(src)

    mlflow.set_experiment("compose-boot")
    with mlflow.start_run() as active:
        mlflow.log_params({"alpha": "0.5", "layers": "3"})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        started = time.monotonic()
        mlflow.log_artifacts(str(src))
        upload_s = time.monotonic() - started
        mlflow.pyfunc.log_model(name="model", python_model=AddModel(3), registered_model_name=MODEL_NAME,
                                pip_requirements=[f"mlflow=={mlflow.__version__}"])
    run_info = mlflow.get_run(active.info.run_id)
    assert run_info.data.params == {"alpha": "0.5", "layers": "3"}
    assert run_info.data.metrics == {"loss": 0.2}

    started = time.monotonic()
    back = Path(mlflow.artifacts.download_artifacts(run_id=active.info.run_id, dst_path=str(tmp_path / "back")))
    download_s = time.monotonic() - started
    # MLflow 3 keeps logged models apart from the run's artifacts; allow them under model/ all the same.
    assert {k: v for k, v in tree_hashes(back).items() if not k.startswith("model/")} == sent

    versions = mlflow.MlflowClient().search_model_versions(f"name='{MODEL_NAME}'")
    assert [v.version for v in versions] == ["1"]
    assert predict_with(f"models:/{MODEL_NAME}/1") == [4, 5, 6]

    STATE.update(run_id=active.info.run_id, artifact_uri=run_info.info.artifact_uri, sent=sent,
                 experiment_id=active.info.experiment_id)
    TIMINGS[f"client upload ({BIG_MIB} MiB + files)"] = upload_s
    TIMINGS[f"client download ({BIG_MIB} MiB + files)"] = download_s


def test_artifacts_are_in_the_s3_volume_and_runs_in_the_database_volume():
    assert STATE.get("run_id"), "needs the client test"
    prefix = STATE["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    # MLFLOW_ARTIFACTS_DESTINATION=s3://default/: the bucket "default", keys under the run's path; the
    # S3 server keeps one file per object.
    listing = in_volume(f"{PROJECT}_minio1", "/export", "sha256sum",
                        *[f"/export/default/{prefix}/{rel}" for rel in STATE["sent"]])
    stored = {line.split(None, 1)[1].removeprefix(f"/export/default/{prefix}/"): line.split()[0]
              for line in listing.splitlines()}
    assert stored == STATE["sent"]

    found = containers()
    mounts = {(m["Type"], m.get("Name"), m["Destination"]) for m in found["mysql"]["Mounts"]}
    assert ("volume", f"{PROJECT}_mysql", "/var/lib/mysql") in mounts, mounts
    files = in_volume(f"{PROJECT}_mysql", "/var/lib/mysql", "ls", "/var/lib/mysql/mlflowdb")
    assert "runs.ibd" in files.split(), files
    query = (f"SELECT r.name, p.value FROM runs r JOIN params p ON p.run_uuid = r.run_uuid "
             f"WHERE r.run_uuid = '{STATE['run_id']}' AND p.key = 'alpha'")
    rows = run([DOCKER, "exec", found["mysql"]["Id"], "sh", "-c",
                f'MYSQL_PWD="$MYSQL_PASSWORD" mysql -N -u "$MYSQL_USER" -e "{query}" "$MYSQL_DATABASE"']).stdout
    assert rows.strip().endswith("\t0.5"), rows


ALLOWED_HOSTS = ["127.0.0.1:5000", "localhost:5000", "192.168.1.10:5000", "10.0.0.5:5000", "172.20.0.3:5000",
                 "proxy:5000", "mlflow:5001"]
FOREIGN_HOSTS = ["mlflow.example.com", "mlflow.example.com:5000", "172.32.0.1:5000", "8.8.8.8:5000"]


def test_private_addresses_work_and_foreign_names_get_mlflows_403():
    assert STATE.get("run_id"), "needs the client test"
    tracking = "/api/2.0/mlflow/experiments/search?max_results=1"
    artifacts = f"/api/2.0/mlflow-artifacts/artifacts?path={STATE['experiment_id']}/{STATE['run_id']}/artifacts"
    ajax = "/ajax-api/2.0/mlflow-artifacts/artifacts/" + f"{STATE['experiment_id']}/{STATE['run_id']}/artifacts/notes.txt"
    for host in ALLOWED_HOSTS:
        for path in (tracking, artifacts, ajax):
            status, body = raw_get(path, host)
            assert status == 200, f"Host {host} {path}: {status} {body[:200]!r}"
    for host in FOREIGN_HOSTS:
        for path in (tracking, artifacts, ajax):
            status, body = raw_get(path, host)
            assert (status, body.decode()) == (403, INVALID_HOST), f"Host {host} {path}"

    # The proxy's own check (artifact routes) against MLflow's, for the same hosts and the same setting:
    # ask MLflow directly on its internal port, from inside its container.
    script = (
        "import http.client, json, sys\n"
        "out = {}\n"
        "for host in sys.argv[2:]:\n"
        "    c = http.client.HTTPConnection('127.0.0.1', 5001, timeout=30)\n"
        "    c.request('GET', sys.argv[1], headers={'Host': host})\n"
        "    out[host] = c.getresponse().status\n"
        "print(json.dumps(out))\n"
    )
    hosts = ALLOWED_HOSTS + FOREIGN_HOSTS
    mlflow_id = containers()["mlflow"]["Id"]
    mlflow_says = json.loads(run([DOCKER, "exec", mlflow_id, "python3", "-c", script, artifacts, *hosts]).stdout)
    proxy_says = {host: raw_get(artifacts, host)[0] for host in hosts}
    assert proxy_says == mlflow_says


def test_down_then_up_brings_the_data_back(tmp_path):
    import mlflow

    assert STATE.get("run_id"), "needs the client test"
    compose("down", timeout=180)
    assert containers() == {}
    volumes = run([DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout.split()
    assert {f"{PROJECT}_mysql", f"{PROJECT}_minio1"} <= set(volumes), volumes
    compose("up", "-d", timeout=600)
    wait_ready(CORE, timeout=600)

    run_info = mlflow.get_run(STATE["run_id"])
    assert run_info.data.params == {"alpha": "0.5", "layers": "3"}
    assert run_info.data.metrics == {"loss": 0.2}
    back = Path(mlflow.artifacts.download_artifacts(run_id=STATE["run_id"], dst_path=str(tmp_path / "again")))
    assert {k: v for k, v in tree_hashes(back).items() if not k.startswith("model/")} == STATE["sent"]
    assert predict_with(f"models:/{MODEL_NAME}/1") == [4, 5, 6]


def test_monitoring_profile_scrapes_the_proxy():
    compose("--profile", "monitoring", "up", "-d", timeout=600)
    found = wait_ready(CORE + ["prometheus"], timeout=300)
    check_ports(found, {"prometheus"})

    deadline = time.monotonic() + 120
    while True:
        targets = get_json("http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        proxy = [t for t in targets if t["labels"].get("job") == "mlflow-artifact-proxy"]
        query = 'sum(mlflow_proxy_artifact_bytes_total{direction="download"})'
        result = get_json("http://127.0.0.1:9090/api/v1/query?query=" + urllib.request.quote(query))["data"]["result"]
        value = float(result[0]["value"][1]) if result else 0.0
        if proxy and proxy[0]["health"] == "up" and value > 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"after 120 s: targets {proxy}, {query} = {value}")
        time.sleep(3)
    assert [t["scrapeUrl"] for t in proxy] == ["http://proxy:9464/metrics"]
    # The previous test downloaded the whole run again through this proxy container.
    assert value >= BIG_MIB << 20, value


def test_down_v_removes_everything():
    compose("--profile", "monitoring", "down", "-v", timeout=180)
    assert containers() == {}
    volumes = run([DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout
    assert volumes.split() == []
    networks = run([DOCKER, "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout
    assert networks.split() == []
