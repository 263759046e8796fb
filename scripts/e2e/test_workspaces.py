"""MLflow's workspaces (`mlflow server --enable-workspaces`) through the proxy, against a second MLflow that
runs with them and its auth app (variant.py; the stack's own MLflow runs without either here):

1. A workspace run round-trips through the proxy with the real client: its bytes are at the key MLflow uses
   (`workspaces/<ws>/<experiment>/<run>/artifacts/...`, read from the store) and stock MLflow serves them.
2. Raw requests with and without the workspace header, with paths inside, outside and across workspaces,
   to the proxy and to that MLflow: the same answers, status and body (as the admin), and the same
   decisions and refusals for users with and without grants in the workspace.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from e2e_util import (
    BUCKET,
    BUCKET_PREFIX,
    SETTINGS,
    check_equal,
    raw_request,
    request_retried,
    sha256_bytes,
    write_random,
)

ID = uuid.uuid4().hex[:8]
WS = f"e2e-ws-{ID}"
OTHER = f"e2e-other-{ID}"
ADMIN = (SETTINGS["MLFLOW_AUTH_ADMIN_USERNAME"], SETTINGS["MLFLOW_AUTH_ADMIN_PASSWORD"])
A = "/api/2.0/mlflow-artifacts"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def key(path: str) -> str:
    return f"{BUCKET_PREFIX}/{path}" if BUCKET_PREFIX else path


@pytest.fixture(scope="module")
def world(variant):
    v = variant(workspaces=True, auth=True)

    def api(method, path, body=None, workspace=None, auth=ADMIN):
        headers = {"Host": "localhost", "Content-Type": "application/json", **basic(*auth)}
        if workspace:
            headers["X-MLFLOW-WORKSPACE"] = workspace
        r = request_retried(v.mlflow_url, method, path, json.dumps(body or {}).encode(), headers)
        assert r.status in (200, 201), (method, path, r.status, r.body[:300])
        return r.json()

    for name in (WS, OTHER):
        api("POST", "/api/3.0/mlflow/workspaces", {"name": name})
    exp = api("POST", "/api/2.0/mlflow/experiments/create", {"name": f"ws-{ID}"}, WS)["experiment_id"]
    users = {"admin": basic(*ADMIN), "anonymous": {}, "wrongpw": basic(ADMIN[0], "not-the-password-1")}
    for role, grant in (("reader", "READ"), ("editor", "EDIT"), ("nogrant", None)):
        password = f"pw-{role}-{ID}-1"
        api("POST", "/api/2.0/mlflow/users/create", {"username": f"{role}-{ID}", "password": password})
        if grant:
            api("POST", "/api/3.0/mlflow/users/permissions/grant", {
                "username": f"{role}-{ID}", "resource_type": "experiment", "resource_id": exp, "permission": grant,
            }, WS)
        users[role] = basic(f"{role}-{ID}", password)
    # Something to read in the workspace, put there by stock MLflow.
    r = request_retried(v.mlflow_url, "PUT", f"{A}/artifacts/{exp}/seed/f.txt", b"seeded",
                    {"Host": "localhost", "X-MLFLOW-WORKSPACE": WS, **users["admin"]})
    assert r.status == 200, r.body
    return v, exp, users


def test_a_workspace_run_round_trips_through_the_proxy(world, s3, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    v, _, _ = world
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    monkeypatch.setenv("MLFLOW_WORKSPACE", WS)
    files = {"model.bin": 3 << 20, "dir/notes.txt": 1000, "dir/empty.txt": 0}
    src = tmp_path / "src"
    digests = {rel: write_random(src / rel, size) for rel, size in files.items()}
    mlflow.set_tracking_uri(v.proxy_url)
    try:
        client = MlflowClient(v.proxy_url)
        exp = client.create_experiment(f"ws-round-trip-{ID}")
        run = client.create_run(exp).info.run_id
        client.log_artifact(run, str(src / "model.bin"))
        client.log_artifacts(run, str(src / "dir"), "dir")
        listed = sorted(f.path for f in client.list_artifacts(run, "dir"))
        out = client.download_artifacts(run, "", str(tmp_path / "down"))
    finally:
        mlflow.set_tracking_uri(SETTINGS["PROXY_URL"])
    check_equal("the workspace run's listing through the proxy", ["dir/empty.txt", "dir/notes.txt"], listed)
    got = {rel: sha256_bytes(open(os.path.join(out, rel), "rb").read()) for rel in files}
    check_equal("bytes downloaded through the proxy", digests, got)
    # Where MLflow keeps a workspace's artifacts: the store itself says.
    prefix = key(f"workspaces/{WS}/{exp}/{run}/artifacts/")
    stored = {}
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        stored[o["Key"][len(prefix):]] = sha256_bytes(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
    check_equal(f"objects under {prefix} (MLflow's key for the workspace run)", digests, stored)
    # Stock MLflow serves what the proxy stored.
    for rel in files:
        r = request_retried(v.mlflow_url, "GET", f"{A}/artifacts/{exp}/{run}/artifacts/{quote(rel)}",
                        headers={"Host": "localhost", "X-MLFLOW-WORKSPACE": WS, **basic(*ADMIN)})
        check_equal(f"stock MLflow's download of {rel}", (200, digests[rel]), (r.status, sha256_bytes(r.body)))


HEADERS = {
    "ws": WS,
    "ws-padded": f"  {WS}  ",
    "none": None,
    "empty": "",
    "default": "default",
    "missing": f"e2e-missing-{ID}",
    "invalid": "Bad_Name",
    "other": OTHER,
}


def paths(exp: str) -> dict[str, str]:
    return {
        "plain": f"{exp}/seed/f.txt",
        "prefixed": f"workspaces/{WS}/{exp}/seed/f.txt",
        "prefixed-upper": f"WORKSPACES/{WS}/{exp}/seed/f.txt",
        "across": f"workspaces/{OTHER}/{exp}/seed/f.txt",
        "prefix-only": "workspaces",
    }


OPS = ["GET", "HEAD", "LIST", "PRESIGNED", "MPU", "PUT", "DELETE"]
WRITES = {"PUT", "DELETE"}
# A GET or presigned URL of a directory is a deliberate difference of its own (test_differential.py).
DIRECTORY_READS = {("prefix-only", "GET"), ("prefix-only", "HEAD"), ("prefix-only", "PRESIGNED")}


def build(op: str, path: str, case: str) -> tuple[str, str, bytes | None, dict[str, str]]:
    head = path.rpartition("/")[0] or path
    # Writes go beside the directory the reads list (`seed`), never into it.
    fresh = f"{head.removesuffix('/seed')}/w/{case}.txt"
    return {
        "GET": ("GET", f"{A}/artifacts/{path}", None, {}),
        "HEAD": ("HEAD", f"{A}/artifacts/{path}", None, {}),
        "LIST": ("GET", f"{A}/artifacts?path={quote(head, safe='')}", None, {}),
        "PUT": ("PUT", f"{A}/artifacts/{fresh}", b"written", {}),
        "DELETE": ("DELETE", f"{A}/artifacts/{fresh}", None, {}),
        # Stops at MLflow's schema check once allowed: no upload is left behind.
        "MPU": ("POST", f"{A}/mpu/abort/{head}", b"{}", {"Content-Type": "application/json"}),
        "PRESIGNED": ("GET", f"{A}/presigned/{path}", None, {}),
    }[op]


def answer(r, op: str) -> dict:
    body: object = r.body.decode("utf-8", "replace")
    if r.headers.get("content-type", "").startswith("application/json") and r.body:
        body = json.loads(r.body)
        if isinstance(body, dict) and "url" in body:
            body = {"url": "<signed>", **{k: v for k, v in body.items() if k != "url"}}
    return {"status": r.status, "body": body if op != "HEAD" else ""}


def test_workspace_requests_answer_as_stock(world):
    v, exp, users = world
    jobs = [(u, h, p, op) for u in users for h in HEADERS for p in paths(exp) for op in OPS
            if (u == "admin" or h in ("ws", "missing", "none")) and (p, op) not in DIRECTORY_READS]

    def one(job):
        user, header, path_name, op = job
        case = f"{user}-{header}-{path_name}-{op}".lower()
        method, target, body, extra = build(op, paths(exp)[path_name], case)
        hdrs = {"Host": "localhost", **users[user], **extra}
        if HEADERS[header] is not None:
            hdrs["X-MLFLOW-WORKSPACE"] = HEADERS[header]
        stock = request_retried(v.mlflow_url, method, target, body, hdrs)
        proxy = request_retried(v.proxy_url, method, target, body, hdrs)
        return case, answer(stock, op), answer(proxy, op)

    # Reads first, all at once; then the writes (a listing must not race them).
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, [j for j in jobs if j[3] not in WRITES]))
        outcomes += list(pool.map(one, [j for j in jobs if j[3] in WRITES]))
    # README's deliberate difference: a missing object is stock's 500 (which clients retry), the proxy's 404.
    missing = [o for o in outcomes if o[1]["status"] == 500 and o[2]["status"] == 404
               and (o[0].endswith("-get") or o[0].endswith("-head"))]
    differ = [o for o in outcomes if o[1] != o[2] and o not in missing]
    statuses: dict[int, int] = {}
    for _, stock, _ in outcomes:
        statuses[stock["status"]] = statuses.get(stock["status"], 0) + 1
    print(f"\nworkspace requests: {len(outcomes)} cases, {len(outcomes) - len(differ) - len(missing)} equal, "
          f"{len(missing)} missing objects (stock 500, proxy 404); stock statuses {statuses}")
    assert not differ, f"{len(differ)} of {len(outcomes)} answers differ from stock MLflow:\n" + "\n".join(
        f"  {case}:\n    stock {s}\n    proxy {p}" for case, s, p in differ[:40])
    # Not trivially one-sided: served, refused by the auth app, by the workspace rules, and not found.
    assert {200, 400, 401, 403, 404} <= set(statuses), statuses
