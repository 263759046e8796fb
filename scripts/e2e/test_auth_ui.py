"""MLflow's authentication and permissions on the UI's and the registry's downloads (issue 19):
`/get-artifact`, `/model-versions/get-artifact` and a logged model's `artifacts/files`, GET and HEAD,
against a stack whose MLflow runs its basic-auth app (`scripts/stack up --auth`).

The proxy serves these only when MLflow, asked as the caller, lets it: the route itself without its
path argument (the route's own validator), and the lookup of the location (runs/get, logged-models,
model-versions/get-download-uri). Every other request goes to MLflow. Each request goes to the proxy
and, unchanged, to stock MLflow; the decision (401 / 403 / allowed) and MLflow's refusal shape must be
equal. The test also counts what the proxy served itself: a matrix where MLflow answered everything
would pass trivially.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pytest

from e2e_util import MLFLOW_URL, PROXY_URL, SETTINGS, raw_request

# MLflow 3.18 answers `presigned=true` with a URL; 3.17.2 ignores the argument and sends the file.
PRESIGNED_ANSWERED = tuple(int(x) for x in SETTINGS["STACK_MLFLOW_VERSION"].split(".")[:2]) >= (3, 18)
from test_auth import ADMIN, Outcome, api, assert_as_stock, basic, decision, make_user, refusal_shape, request_retried

SUFFIX = uuid.uuid4().hex[:8]
RUN_SHAPED = "0123456789abcdef0123456789abcdef"
FILE = b"a model file the UI downloads\n" * 100


@dataclass
class UiWorld:
    exp: str
    run: str
    model: str
    name: str
    users: dict[str, dict[str, str] | None]


def put_artifact(path: str, data: bytes) -> None:
    r = raw_request(MLFLOW_URL, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{quote(path)}", body=data,
                    headers={"Host": "localhost", **basic(*ADMIN)})
    assert r.status == 200, (path, r.status, r.body[:200])


@pytest.fixture(scope="module")
def ui_world() -> UiWorld:
    assert SETTINGS.get("STACK_AUTH") == "true", "the auth suite needs the stack with MLflow's auth app: scripts/stack up --auth"
    exp = api("POST", "/api/2.0/mlflow/experiments/create", {"name": f"auth-ui-{SUFFIX}"})["experiment_id"]
    run = api("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp})["run"]["info"]["run_id"]
    put_artifact(f"{exp}/{run}/artifacts/model/MLmodel", FILE)
    model = api("POST", "/api/2.0/mlflow/logged-models", {"experiment_id": exp, "name": "auth-ui"})["model"]["info"]["model_id"]
    put_artifact(f"{exp}/models/{model}/artifacts/MLmodel", FILE)
    name = f"auth-ui-model-{SUFFIX}"
    api("POST", "/api/2.0/mlflow/registered-models/create", {"name": name})
    api("POST", "/api/2.0/mlflow/model-versions/create", {"name": name, "source": f"models:/{model}", "model_id": model})
    api("POST", "/api/2.0/mlflow/model-versions/create", {"name": name, "source": f"runs:/{run}/model", "run_id": run})
    spec = {
        "reader": [("experiment", exp, "READ")],
        "nogrant": [],  # the default permission (READ)
        "denied": [("experiment", exp, "DENY")],  # nothing of the experiment; the registry's default READ
        "runsdenied": [("run", "*", "DENY")],  # the experiment, none of its runs
        "modelsdenied": [("logged_model", "*", "DENY")],
        "registrydenied": [("registered_model", name, "DENY")],
        "versionsdenied": [("registered_model_version", "*", "DENY")],
        "unicode": [("experiment", exp, "EDIT")],  # a non-ASCII password
    }
    users: dict[str, dict[str, str] | None] = {"anonymous": None}
    for role, grants in spec.items():
        user = f"ui-{role}-{SUFFIX}"
        password = f"Pässwörd-{SUFFIX}-1" if role == "unicode" else f"pw-{role}-{SUFFIX}-1"
        make_user(user, password, grants)
        users[role] = basic(user, password)
    users["wrongpw"] = basic(f"ui-reader-{SUFFIX}", "not-the-password")
    users["admin"] = basic(*ADMIN)
    return UiWorld(exp, run, model, name, users)


def targets(w: UiWorld) -> dict[str, str]:
    mv = "/model-versions/get-artifact?"
    return {
        "run": "/get-artifact?" + urlencode({"path": "model/MLmodel", "run_id": w.run}),
        "run-uuid": "/get-artifact?" + urlencode({"path": "model/MLmodel", "run_uuid": w.run}),
        "unknown-run": "/get-artifact?" + urlencode({"path": "MLmodel", "run_id": RUN_SHAPED}),
        "logged-model": f"/ajax-api/2.0/mlflow/logged-models/{w.model}/artifacts/files?artifact_file_path=MLmodel",
        "unknown-model": f"/ajax-api/2.0/mlflow/logged-models/m-{RUN_SHAPED}/artifacts/files?artifact_file_path=MLmodel",
        "version-models-source": mv + urlencode({"path": "MLmodel", "name": w.name, "version": "1"}),
        "version-runs-source": mv + urlencode({"path": "MLmodel", "name": w.name, "version": "2"}),
        "unknown-version": mv + urlencode({"path": "MLmodel", "name": w.name, "version": "99"}),
        "presigned": mv + urlencode({"path": "MLmodel", "name": w.name, "version": "1", "presigned": "true"}),
    }


def one_case(user: str, headers, method: str, target_name: str, target: str) -> tuple[Outcome, bool]:
    hdrs = {"Host": "localhost", **(headers or {})}
    stock = request_retried(MLFLOW_URL, method, target, None, hdrs)
    proxy = request_retried(PROXY_URL, method, target, None, hdrs)
    for _ in range(3):  # MLflow too slow to answer the proxy's check on a loaded machine: ask again
        if decision(proxy) != "error 503":
            break
        time.sleep(2)
        proxy = request_retried(PROXY_URL, method, target, None, hdrs)
    if method == "HEAD":
        stock.body, proxy.body = b"", b""
    served = "server" not in proxy.headers  # an answer the proxy made itself, not MLflow's
    if served and proxy.status == 200 and method == "GET":
        if target_name == "presigned" and PRESIGNED_ANSWERED:
            # 3.18 answers presigned=true with JSON: the URL is the proxy's own signed one (never the
            # store's), and it serves the file.
            url = json.loads(proxy.body)["url"]
            check_url = url.split("/api/", 1)
            assert url.startswith("http://localhost/api/2.0/mlflow-artifacts/signed/object?token="), url
            fetched = raw_request(PROXY_URL, "GET", "/api/" + check_url[1], headers={"Host": "localhost"})
            assert (fetched.status, fetched.body) == (200, FILE), (user, url, fetched.status)
        else:
            assert proxy.body == FILE, (user, target_name, proxy.body[:100])
    return (
        Outcome(f"{user:14} {method:4} {target_name}", decision(stock), decision(proxy),
                refusal_shape(stock), refusal_shape(proxy)),
        served and proxy.status == 200,
    )


def test_ui_decisions_equal_stock_mlflow(ui_world):
    jobs = [
        (user, headers, method, name, target)
        for user, headers in ui_world.users.items()
        for method in ("GET", "HEAD")
        for name, target in targets(ui_world).items()
    ]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda j: one_case(*j), jobs))
    outcomes = [o for o, _ in results]
    served = [o.case for o, s in results if s]
    by_class = assert_as_stock(outcomes, "UI download matrix", f"; {len(served)} downloads served by the proxy itself")
    assert {"401", "403", "allowed"} <= set(by_class), by_class
    # The proxy did serve: every allowed GET of an existing file by a user who may read both the
    # route and the location, and the admin's HEADs.
    for case in (
        "reader         GET  run", "nogrant        GET  logged-model", "admin          HEAD run",
        "registrydenied GET  run", "denied         GET  version-models-source",
        "admin          GET  version-runs-source", "reader         GET  presigned",
    ):
        assert case in served, (case, served)
    # ... and never what stock refuses.
    refused = {o.case for o in outcomes if o.stock != "allowed"}
    assert not refused & set(served), sorted(refused & set(served))


def test_ui_grant_and_revoke_take_effect_within_10_s(ui_world):
    user, password = f"ui-flip-{SUFFIX}", f"pw-ui-flip-{SUFFIX}-1"
    make_user(user, password, [("experiment", ui_world.exp, "DENY")])
    hdrs = {"Host": "localhost", **basic(user, password)}
    target = targets(ui_world)["run"]

    def proxy_get() -> int:
        return raw_request(PROXY_URL, "GET", target, headers=hdrs).status

    assert proxy_get() == 403  # this denial is now cached
    # Revoking the DENY leaves the default permission (READ): allowed.
    grant = {"username": user, "resource_type": "experiment", "resource_id": ui_world.exp}
    api("POST", "/api/3.0/mlflow/users/permissions/revoke", grant)
    # Each change shows once the cached answer expires: the cache's TTL, with seconds of slack for
    # a loaded machine (never a verdict on how fast).
    patience = float(SETTINGS["PROXY_MLFLOW_AUTH_CACHE_TTL_SECS"]) + 30
    t = time.monotonic()
    while proxy_get() != 200:
        assert time.monotonic() - t < patience, f"the change did not take effect through the proxy in {patience:.0f} s"
        time.sleep(0.25)
    # The allow (and the location) is now cached; a DENY again:
    api("POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "DENY"})
    t = time.monotonic()
    while proxy_get() != 403:
        assert time.monotonic() - t < patience, f"the DENY did not take effect through the proxy in {patience:.0f} s"
        time.sleep(0.25)
