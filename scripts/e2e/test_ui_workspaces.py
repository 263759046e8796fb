"""The UI's and the registry's downloads in MLflow's workspaces, through the proxy (issue 19): against a
second MLflow run with workspaces and its auth app (variant.py, as test_workspaces.py), and a proxy in
front of it.

The real client logs, in two workspaces, a run artifact and a logged-model artifact at the same paths
with different bytes, and registers the logged model under the same name in both. Each UI route
(`/get-artifact`, `/model-versions/get-artifact`, a logged model's `artifacts/files`; GET and HEAD),
with `X-MLFLOW-WORKSPACE` naming the workspace, must answer through the proxy what stock MLflow
answers to the same request (status, bytes by SHA-256, Content-Type, Content-Disposition), and the
proxy must have answered it itself: no `server: uvicorn` header (MLflow's), no line for the route in
stock MLflow's access log, and stock's temp folder as it was. A thing asked in another workspace, in an
unknown one, without the header (the default workspace), or by callers MLflow refuses answers exactly
as stock does (status and body), and never with another workspace's bytes.

On MLflow 3.18 the two model routes also take `presigned=true`: a URL on the proxy that gives the
workspace's own bytes."""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import urlencode, urlsplit

import pytest

from e2e_util import (
    SETTINGS,
    DirSampler,
    LogWatch,
    check_equal,
    raw_request,
    request_retried,
    sha256_bytes,
    write_random,
)

ID = uuid.uuid4().hex[:8]
WORKSPACES = (f"e2e-uia-{ID}", f"e2e-uib-{ID}")
ADMIN = (SETTINGS["MLFLOW_AUTH_ADMIN_USERNAME"], SETTINGS["MLFLOW_AUTH_ADMIN_PASSWORD"])
SIZE = 6 << 20
MODEL = f"ui-ws-{ID}"
# What stock MLflow's access log shows for a download it serves itself.
ARTIFACT_ROUTES = ("/get-artifact", "/artifacts/files", "/mlflow-artifacts/")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def world(variant, tmp_path_factory):
    """Per workspace: {route: target} and the SHA-256 of the bytes logged there."""
    import mlflow
    from mlflow.tracking import MlflowClient

    v = variant(workspaces=True, auth=True)

    def api(method, path, body=None, workspace=None):
        headers = {"Host": "localhost", "Content-Type": "application/json", **basic(*ADMIN)}
        if workspace:
            headers["X-MLFLOW-WORKSPACE"] = workspace
        r = request_retried(v.mlflow_url, method, path, json.dumps(body or {}).encode(), headers)
        assert r.status in (200, 201), (method, path, r.status, r.body[:300])
        return r.json()

    for name in WORKSPACES:
        api("POST", "/api/3.0/mlflow/workspaces", {"name": name})
    password = f"pw-nogrant-{ID}-1"
    api("POST", "/api/2.0/mlflow/users/create", {"username": f"nogrant-{ID}", "password": password})
    users = {"admin": basic(*ADMIN), "anonymous": {}, "nogrant": basic(f"nogrant-{ID}", password)}

    # The client's first request, server-info, gave up after 3 s once at load 20 (the proxy logged a
    # 499 after 3.0 s) and the setup failed: ask it once first, unhurried, so MLflow is warm.
    r = request_retried(v.proxy_url, "GET", "/api/3.0/mlflow/server-info", headers={"Host": "localhost"})
    assert r.status == 200, (r.status, r.body[:300])
    out = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
        mlflow.set_tracking_uri(v.proxy_url)
        try:
            for workspace in WORKSPACES:
                env.setenv("MLFLOW_WORKSPACE", workspace)
                path = tmp_path_factory.mktemp(f"ui-ws-{workspace}") / "weights.bin"
                digest = write_random(path, SIZE)
                client = MlflowClient(v.proxy_url)
                # The same names in both workspaces: only the header tells them apart.
                exp = client.create_experiment(f"ui-ws-{ID}")
                run = client.create_run(exp).info.run_id
                client.log_artifact(run, str(path), "data")
                model = client.create_logged_model(experiment_id=exp, name="ui-ws")
                client.log_model_artifact(model.model_id, str(path))
                client.create_registered_model(MODEL)
                version = client.create_model_version(MODEL, source=f"models:/{model.model_id}",
                                                      model_id=model.model_id)
                out[workspace] = ({
                    "run": "/get-artifact?" + urlencode({"path": "data/weights.bin", "run_id": run}),
                    "run (run_uuid)": "/get-artifact?" + urlencode({"path": "data/weights.bin", "run_uuid": run}),
                    "logged model": f"/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files?"
                    + urlencode({"artifact_file_path": "weights.bin"}),
                    "model version": "/model-versions/get-artifact?"
                    + urlencode({"path": "weights.bin", "name": MODEL, "version": version.version}),
                }, digest)
                path.unlink()
        finally:
            mlflow.set_tracking_uri(SETTINGS["PROXY_URL"])
    assert out[WORKSPACES[0]][1] != out[WORKSPACES[1]][1]
    return v, out, users


def headers_for(user_headers: dict[str, str], workspace: str | None) -> dict[str, str]:
    h = {"Host": "localhost", **user_headers}
    if workspace is not None:
        h["X-MLFLOW-WORKSPACE"] = workspace
    return h


def settled(v, watch: LogWatch) -> str:
    """Stock MLflow's log text once it shows a request sent now: every earlier request's line is in."""
    marker = f"/health?settled={time.monotonic_ns()}"
    raw_request(v.mlflow_url, "GET", marker)
    return watch.text_once(lambda text: marker in text)


def seen(r) -> dict:
    """What a user sees of a download: status, labels, and the bytes by their hash."""
    return {
        "status": r.status,
        "content-type": r.headers.get("content-type"),
        "content-disposition": r.headers.get("content-disposition"),
        "sha256": sha256_bytes(r.body) if r.body else None,
    }


def refusal(r) -> dict:
    """An answer that is not the file: status and body (JSON parsed)."""
    body: object = r.body.decode("utf-8", "replace")
    if r.headers.get("content-type", "").startswith("application/json") and r.body:
        body = json.loads(r.body)
    return {"status": r.status, "body": body}


ROUTES = ["run", "run (run_uuid)", "logged model", "model version"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("route", ROUTES)
def test_each_workspace_gets_its_own_bytes_from_the_proxy(world, route, method):
    v, things, users = world
    # The model version's URL is the same in both workspaces (one name, version 1): only the header
    # tells which file it is.
    check_equal("the model version's URL in both workspaces", things[WORKSPACES[0]][0]["model version"],
                things[WORKSPACES[1]][0]["model version"])
    for workspace in WORKSPACES:
        targets, digest = things[workspace]
        for header in (workspace, f"  {workspace} "):
            hdrs = headers_for(users["admin"], header)
            watch = LogWatch(v.mlflow_log)
            with DirSampler(v.tmp) as tmp:
                proxy = request_retried(v.proxy_url, method, targets[route], headers=hdrs)
            log = settled(v, watch)
            stock = request_retried(v.mlflow_url, method, targets[route], headers=hdrs)
            case = f"{route}, {method}, X-MLFLOW-WORKSPACE={header!r}"
            check_equal(f"{case}: the proxy's answer as stock's", seen(stock), seen(proxy))
            check_equal(f"{case}: status", 200, proxy.status)
            if method == "GET":
                check_equal(f"{case}: SHA-256 of the workspace's own bytes", digest, sha256_bytes(proxy.body))
            check_equal(f"{case}: Content-Length", str(SIZE), proxy.headers.get("content-length"))
            # Answered by the proxy: not MLflow's server header, not in its access log, no temp copy.
            check_equal(f"{case}: the answer's server header", None, proxy.headers.get("server"))
            # With the auth app on, the proxy asks MLflow the route itself without its path argument
            # (the probe: MLflow's 400 once allowed); the download is the request with it.
            hits = [line for line in log.splitlines()
                    if any(a in line for a in ARTIFACT_ROUTES) and "path=" in line]
            check_equal(f"{case}: downloads in stock MLflow's access log", [], hits)
            check_equal(f"{case}: growth of stock MLflow's TMPDIR ({v.tmp}), bytes", 0, tmp.growth)


def test_other_workspaces_and_callers_answer_as_stock(world):
    """Asked where the thing is not (another workspace, an unknown one, none: the default), or by a
    caller MLflow refuses: stock's answer, through the proxy, never a workspace's bytes."""
    v, things, users = world
    a, b = WORKSPACES
    digests = {things[w][1] for w in WORKSPACES}
    cases = []
    for route in ROUTES:
        target = things[a][0][route]
        for user, header in [("admin", b), ("admin", f"e2e-missing-{ID}"), ("admin", None),
                             ("admin", "Bad_Name"), ("anonymous", a), ("nogrant", b)]:
            # The registered model has the same name and version in both workspaces: in the other one
            # the same URL is that workspace's own file (the test above reads each from its own).
            if route == "model version" and header == b:
                continue
            cases.append((route, user, header, target))
    # Only in the first workspace: the second has no such version.
    version_2 = things[a][0]["model version"].replace("version=1", "version=2")
    cases.append(("model version 2", "admin", a, version_2))
    differ, proxied = [], 0
    for route, user, header, target in cases:
        hdrs = headers_for(users[user], header)
        stock = request_retried(v.mlflow_url, "GET", target, headers=hdrs)
        proxy = request_retried(v.proxy_url, "GET", target, headers=hdrs)
        case = f"{route} as {user}, X-MLFLOW-WORKSPACE={header!r}"
        assert sha256_bytes(proxy.body) not in digests, f"{case}: served a workspace's bytes"
        assert stock.status != 200, f"{case}: stock served it ({stock.status}); the case is not one it refuses"
        if refusal(stock) != refusal(proxy):
            differ.append(f"  {case}:\n    stock {refusal(stock)}\n    proxy {refusal(proxy)}")
        proxied += proxy.headers.get("server") == "uvicorn"
    assert not differ, f"{len(differ)} of {len(cases)} answers differ from stock:\n" + "\n".join(differ)
    # MLflow answered them all itself (the proxy passed them through).
    check_equal("answers with MLflow's server header", len(cases), proxied)


@pytest.mark.mlflow(min="3.18")
@pytest.mark.parametrize("route", ["logged model", "model version"])
def test_presigned_urls_are_on_the_proxy_and_scoped(world, route):
    v, things, users = world
    for workspace in WORKSPACES:
        targets, digest = things[workspace]
        hdrs = headers_for(users["admin"], workspace)
        answer = request_retried(v.proxy_url, "GET", targets[route] + "&presigned=true", headers=hdrs)
        check_equal(f"{route} in {workspace}, presigned=true: status", 200, answer.status)
        got = answer.json()
        url = urlsplit(got["url"])
        # On the proxy, as the client named it (its Host), never on the store.
        check_equal(f"{route} in {workspace}: where the URL points, file_size",
                    (hdrs["Host"], True, SIZE),
                    (url.netloc, url.path.endswith("/2.0/mlflow-artifacts/signed/object"), got["file_size"]))
        stock = request_retried(v.mlflow_url, "GET", targets[route] + "&presigned=true", headers=hdrs)
        check_equal(f"stock, {route} in {workspace}: status, file_size", (200, SIZE),
                    (stock.status, stock.json()["file_size"]))
        r = raw_request(v.proxy_url, "GET", f"{url.path}?{url.query}", timeout=120)
        check_equal(f"{route} in {workspace}, the presigned URL: status, SHA-256", (200, digest),
                    (r.status, sha256_bytes(r.body)))
