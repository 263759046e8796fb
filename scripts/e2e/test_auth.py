"""MLflow's authentication and permissions on the artifact routes (issue 10), against a stack whose
MLflow runs its basic-auth app (`scripts/stack up --auth`).

1. Differential: users × operations × both prefixes × paths; each request goes to the proxy and,
   unchanged, to stock MLflow's own artifact routes (its internal port, --serve-artifacts, the same
   S3 store). The decision class (401 / 403 / allowed) must be equal, and so must MLflow's refusal
   shapes (WWW-Authenticate, the `Permission denied` text). DELIBERATE lists where the proxy is
   stricter on purpose; each is checked both ways.
2. Grant and revoke through MLflow's API: the proxy follows once its cached answer expires
   (PROXY_MLFLOW_AUTH_CACHE_TTL_SECS), never before.
3. The real MLflow client with MLFLOW_TRACKING_USERNAME/PASSWORD through the proxy: a permitted
   user logs and downloads artifacts; a refused one gets the error stock MLflow gives.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from e2e_util import METRICS_URL, MLFLOW_URL, PROXY_URL, SETTINGS, STORE, Response, http_get, raw_request, request_retried

ADMIN = (SETTINGS["MLFLOW_AUTH_ADMIN_USERNAME"], SETTINGS["MLFLOW_AUTH_ADMIN_PASSWORD"])
SUFFIX = uuid.uuid4().hex[:8]
RUN_SHAPED = "0123456789abcdef0123456789abcdef"
NOT_AUTHENTICATED = (
    b"You are not authenticated. Please see "
    b"https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow on how to authenticate."
)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def api(method: str, path: str, body: dict | None = None, auth=ADMIN, base: str = MLFLOW_URL) -> dict:
    """MLflow's REST API as the admin (or another user); fails on anything but 200."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Host": "localhost", **basic(*auth)}
    if data is not None:
        headers["Content-Type"] = "application/json"
    r = raw_request(base, method, path, body=data, headers=headers)
    assert r.status == 200, f"{method} {path}: {r.status} {r.body[:300]!r}"
    return r.json() if r.body else {}


# ------------------------------------------------------------------------------- the world
@dataclass
class World:
    exp: str  # the experiment the users have grants on
    other: str  # an experiment they have no grant on
    run: str  # a run in `exp`
    users: dict[str, dict[str, str] | None]  # name -> request headers (None: anonymous)


def make_user(name: str, password: str, grants: list[tuple[str, str, str]]):
    api("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
    for resource_type, resource_id, permission in grants:
        api(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {"username": name, "resource_type": resource_type, "resource_id": resource_id, "permission": permission},
        )


@pytest.fixture(scope="module")
def world() -> World:
    assert SETTINGS.get("STACK_AUTH") == "true", "the auth suite needs the stack with MLflow's auth app: scripts/stack up --auth"
    exp = api("POST", "/api/2.0/mlflow/experiments/create", {"name": f"auth-{SUFFIX}"})["experiment_id"]
    other = api("POST", "/api/2.0/mlflow/experiments/create", {"name": f"auth-other-{SUFFIX}"})["experiment_id"]
    run = api("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp})["run"]["info"]["run_id"]
    spec = {
        "reader": [("experiment", exp, "READ")],
        "editor": [("experiment", exp, "EDIT")],
        "manager": [("experiment", exp, "MANAGE")],
        "nogrant": [],  # the default permission (READ, as shipped)
        "denied": [("experiment", exp, "DENY")],  # no permission at all on `exp`
        "runonly": [("run", "*", "EDIT")],  # a grant on the run tier only (run grants are wildcard-only)
        "runsdenied": [("run", "*", "DENY")],  # may read `exp` but none of its runs
        "unicode": [("experiment", exp, "EDIT")],  # a non-ASCII password
    }
    users: dict[str, dict[str, str] | None] = {"anonymous": None}
    for role, grants in spec.items():
        name = f"{role}-{SUFFIX}"
        password = f"Pässwörd-{SUFFIX}-1" if role == "unicode" else f"pw-{role}-{SUFFIX}-1"
        make_user(name, password, grants)
        users[role] = basic(name, password)
    users["wrongpw"] = basic(f"reader-{SUFFIX}", "not-the-password")
    users["admin"] = basic(*ADMIN)
    # Objects to read (seeded through stock MLflow as the admin, so both sides see them).
    for p in seed_paths(exp, run, other):
        r = raw_request(MLFLOW_URL, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{quote(p)}", body=b"seed",
                        headers={"Host": "localhost", **basic(*ADMIN)})
        assert r.status == 200, (p, r.status, r.body[:200])
    return World(exp, other, run, users)


def seed_paths(exp: str, run: str, other: str) -> list[str]:
    return [
        f"{exp}/{run}/artifacts/file.txt",
        f"{exp}/note.txt",
        f"{exp}/models/m-{RUN_SHAPED}/artifacts/model.pkl",
        f"{exp}/traces/tr-{RUN_SHAPED}/artifacts/traces.json",
        f"{other}/x.txt",
        "misc/x.txt",
        f"{exp}/{RUN_SHAPED}/artifacts/y.txt",
    ]


def matrix_paths(w: World) -> dict[str, str]:
    """Name -> artifact path as sent on the wire (already percent-encoded where meant)."""
    return {
        "run": f"{w.exp}/{w.run}/artifacts/file.txt",
        "experiment-level": f"{w.exp}/note.txt",
        "logged-model": f"{w.exp}/models/m-{RUN_SHAPED}/artifacts/model.pkl",
        "trace": f"{w.exp}/traces/tr-{RUN_SHAPED}/artifacts/traces.json",
        "other-experiment": f"{w.other}/x.txt",
        "no-experiment": "misc/x.txt",
        "unknown-experiment": "999999999/x.txt",
        # `%25` decodes to `%`; MLflow's path check decodes again: experiment `exp`.
        "encoded": "".join(f"%25{ord(c):02X}" for c in w.exp) + "/note.txt",
        "experiment-root": w.exp,
        "unparsable": "a/%2E%2E/b.txt",
    }


PREFIXES = {"api": "/api/2.0/mlflow-artifacts", "ajax": "/ajax-api/2.0/mlflow-artifacts"}
OPERATIONS = ["GET", "HEAD", "LIST", "PUT", "DELETE", "MPU", "PRESIGNED"]


def build(op: str, prefix: str, path: str, case_id: str, root: bool) -> tuple[str, str, bytes | None, dict[str, str]]:
    """(method, target, body, extra headers). Writes go to a fresh name beside `path` (same
    directory, so the same class in MLflow's eyes; below a root for a root); a DELETE of an
    experiment root deletes the root (MLflow judges that recursively over every tier)."""
    if root:
        fresh = path if op == "DELETE" else f"{path}/{case_id}.txt"
    else:
        head, _, name = path.rpartition("/")
        fresh = f"{head}/{case_id}-{name}"
    if op == "GET":
        return "GET", f"{prefix}/artifacts/{path}", None, {}
    if op == "HEAD":
        return "HEAD", f"{prefix}/artifacts/{path}", None, {}
    if op == "LIST":
        return "GET", f"{prefix}/artifacts?path={path}", None, {}
    if op == "PUT":
        return "PUT", f"{prefix}/artifacts/{fresh}", b"written by the auth test", {}
    if op == "DELETE":
        return "DELETE", f"{prefix}/artifacts/{fresh}", None, {}
    if op == "MPU":
        # An abort without an upload id: MLflow stops at its schema check (400) once authorized.
        return "POST", f"{prefix}/mpu/abort/{path}", b"{}", {"Content-Type": "application/json"}
    if op == "PRESIGNED":
        # The directory: s3s-fs (the test store) answers 500 to a HEAD below a file key, which
        # MLflow's presigned handler passes on; MinIO and S3 answer 404 (docs/security.md).
        return "GET", f"{prefix}/presigned/{path.rpartition('/')[0] or path}", None, {}
    raise ValueError(op)


def decision(r: Response) -> str:
    if r.status == 401:
        return "401"
    if r.status == 403:
        return "403"
    # A failed check (MLflow could not be asked, or its answer said nothing): never expected here.
    if r.status in (502, 503) and b"whether" in r.body:
        return f"error {r.status}"
    return "allowed"


def refusal_shape(r: Response) -> tuple:
    """What a client sees of a refusal besides the status: MLflow's header and text."""
    if r.status == 401:
        return (r.headers.get("www-authenticate"), r.body if r.body else None)
    if r.status == 403:
        return (r.body or None,)
    return ()


@dataclass
class Outcome:
    case: str
    stock: str
    proxy: str
    stock_shape: tuple
    proxy_shape: tuple


def assert_as_stock(outcomes: list[Outcome], title: str, also: str = "") -> dict[str, int]:
    """Every outcome's decision and refusal equal stock's; prints the tally; returns the count of
    stock's decisions by class."""
    differ = [o for o in outcomes if (o.stock, o.stock_shape) != (o.proxy, o.proxy_shape)]
    by_class: dict[str, int] = {}
    for o in outcomes:
        by_class[o.stock] = by_class.get(o.stock, 0) + 1
    print(f"\n{title}: {len(outcomes)} cases, {len(outcomes) - len(differ)} equal; stock decisions {by_class}{also}")
    assert not differ, f"{len(differ)} of {len(outcomes)} decisions differ from stock MLflow:\n" + "\n".join(
        f"  {o.case}: stock {o.stock} {o.stock_shape}, proxy {o.proxy} {o.proxy_shape}" for o in differ[:60]
    )
    return by_class


def one_case(user: str, headers, op: str, prefix_name: str, path_name: str, path: str) -> Outcome:
    case_id = f"{user}-{op}-{prefix_name}-{path_name}".lower()
    method, target, body, extra = build(op, PREFIXES[prefix_name], path, case_id, path_name == "experiment-root")
    hdrs = {"Host": "localhost", **(headers or {}), **extra}
    stock = request_retried(MLFLOW_URL, method, target, body, hdrs)
    proxy = request_retried(PROXY_URL, method, target, body, hdrs)
    # MLflow too slow to answer the proxy's check (PROXY_MLFLOW_AUTH_TIMEOUT_SECS, on a loaded
    # machine): the proxy refused with 503, as it must; ask again, a bounded number of times.
    for _ in range(3):
        if decision(proxy) != "error 503":
            break
        time.sleep(2)
        proxy = request_retried(PROXY_URL, method, target, body, hdrs)
    # HEAD answers carry no body; compare the header only.
    if method == "HEAD":
        stock.body, proxy.body = b"", b""
    return Outcome(
        f"{user:10} {op:9} {prefix_name:4} {path_name}",
        decision(stock),
        decision(proxy),
        refusal_shape(stock),
        refusal_shape(proxy),
    )


def test_run_directories_hidden_as_mlflow_hides_them(world):
    """MLflow leaves run directories out of an experiment-root listing for a caller who may not
    read runs; the proxy's listing is the same, entry for entry."""
    for user in ("runsdenied", "reader", "admin"):
        target = f"/api/2.0/mlflow-artifacts/artifacts?path={world.exp}"
        hdrs = {"Host": "localhost", **world.users[user]}
        stock = raw_request(MLFLOW_URL, "GET", target, headers=hdrs)
        proxy = raw_request(PROXY_URL, "GET", target, headers=hdrs)
        assert stock.status == proxy.status == 200, (user, stock.status, proxy.status)
        names = lambda r: sorted(f["path"] for f in r.json().get("files", []))  # noqa: E731
        assert names(proxy) == names(stock), (user, names(stock), names(proxy))
        assert (world.run in names(proxy)) == (user != "runsdenied"), (user, names(proxy))


def test_decisions_equal_stock_mlflow(world):
    paths = matrix_paths(world)
    jobs = [
        (user, headers, op, prefix_name, path_name, path)
        for user, headers in world.users.items()
        for op in OPERATIONS
        for prefix_name in PREFIXES
        for path_name, path in paths.items()
        # The root is for listing and (recursive) deleting; its GET is a directory error anyway.
        if path_name != "experiment-root" or op in ("LIST", "DELETE")
    ]
    # Deletes last: a root delete empties the experiment for everyone.
    jobs.sort(key=lambda j: (j[2] == "DELETE" and j[4] == "experiment-root", j[2] == "DELETE"))
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda j: one_case(*j), jobs))
    by_class = assert_as_stock(outcomes, "decision matrix")
    # The matrix is not trivially one-sided: every class occurs.
    assert {"401", "403", "allowed"} <= set(by_class), by_class


def test_deliberate_differences_both_ways(world):
    """The proxy is stricter than stock MLflow in two places; each shown both ways (the stricter
    answer, and the same request where both agree)."""
    exp, run = world.exp, world.run
    # 1. A PUT whose path contains `mlflow/traces/` (or datasets/jobs/issues): MLflow's Flask
    #    routes deny every non-admin there; its native PUT does not. The proxy asks through a Flask
    #    route, so it denies too (for admins both allow).
    trap = f"/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts/mlflow/traces/f-{SUFFIX}.txt"
    editor = {"Host": "localhost", **world.users["editor"]}
    assert decision(raw_request(MLFLOW_URL, "PUT", trap, body=b"x", headers=editor)) == "allowed"
    assert decision(raw_request(PROXY_URL, "PUT", trap, body=b"x", headers=editor)) == "403"
    admin = {"Host": "localhost", **world.users["admin"]}
    assert decision(raw_request(MLFLOW_URL, "PUT", trap, body=b"x", headers=admin)) == "allowed"
    assert decision(raw_request(PROXY_URL, "PUT", trap, body=b"x", headers=admin)) == "allowed"
    # ... and a PUT next to it, without the substring: both allow the editor.
    plain = trap.replace("mlflow/traces/", "mlflow-traces/")
    assert decision(raw_request(MLFLOW_URL, "PUT", plain, body=b"x", headers=editor)) == "allowed"
    assert decision(raw_request(PROXY_URL, "PUT", plain, body=b"x", headers=editor)) == "allowed"

    # 2. A foreign Host header without credentials on GET/PUT: stock MLflow authenticates first
    #    (401), the proxy checks the Host first (403). Both refuse.
    target = f"/api/2.0/mlflow-artifacts/artifacts/{exp}/note.txt"
    evil = {"Host": "evil.example.com"}
    assert raw_request(MLFLOW_URL, "GET", target, headers=evil).status == 401
    assert raw_request(PROXY_URL, "GET", target, headers=evil).status == 403
    # With credentials both give the Host refusal.
    for base in (MLFLOW_URL, PROXY_URL):
        r = raw_request(base, "GET", target, headers={**evil, **world.users["reader"]})
        assert (r.status, r.body) == (403, b"Invalid Host header - possible DNS rebinding attack detected"), base


def test_cached_answers_are_not_reused_across_mlflows_path_rules(world):
    """Issue 20: MLflow's Flask routes deny `…/mlflow/traces/…` to non-admins unless the path also
    contains `/mlflow/logged-models`. Two such paths shared one cache key, so the allow for the
    second was reused for the first (and the object deleted). Each request, in this order, must get
    stock MLflow's own answer, and the object must still be there."""
    manager = {"Host": "localhost", **world.users["manager"]}
    base = f"{world.exp}/cache-{SUFFIX}/mlflow"
    trapped = f"{base}/traces/y/t.txt"
    skipped = f"{base}/logged-models/mlflow/traces/z"
    admin = {"Host": "localhost", **basic(*ADMIN)}
    r = raw_request(MLFLOW_URL, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{trapped}", body=b"keep me", headers=admin)
    assert r.status == 200, r.status
    steps = [
        ("DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{trapped}", None, {}),
        ("DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{skipped}", None, {}),
        ("DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{trapped}", None, {}),
        # The same with the mpu routes (an abort without an upload id: allowed means 400).
        ("POST", f"/api/2.0/mlflow-artifacts/mpu/abort/{trapped}", b"{}", {"Content-Type": "application/json"}),
        ("POST", f"/api/2.0/mlflow-artifacts/mpu/abort/{skipped}", b"{}", {"Content-Type": "application/json"}),
        ("POST", f"/api/2.0/mlflow-artifacts/mpu/abort/{trapped}", b"{}", {"Content-Type": "application/json"}),
    ]
    seen = []
    for method, target, body, extra in steps:
        proxy = decision(raw_request(PROXY_URL, method, target, body=body, headers={**manager, **extra}))
        stock = decision(raw_request(MLFLOW_URL, method, target, body=body, headers={**manager, **extra}))
        seen.append((method, target.rsplit("/mlflow/", 1)[-1], stock, proxy))
    # The steps were more than the cache TTL apart: the allowed path first, then the trapped.
    trapped2, skipped2 = trapped.replace("cache-", "cache2-"), skipped.replace("cache-", "cache2-")
    r = raw_request(MLFLOW_URL, "PUT", f"/api/2.0/mlflow-artifacts/artifacts/{trapped2}", body=b"keep me", headers=admin)
    assert r.status == 200, r.status
    steps = [
        ("DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{skipped2}", None, {}),
        ("DELETE", f"/api/2.0/mlflow-artifacts/artifacts/{trapped2}", None, {}),
    ]
    for method, target, body, extra in steps:
        proxy = decision(raw_request(PROXY_URL, method, target, body=body, headers={**manager, **extra}))
        stock = decision(raw_request(MLFLOW_URL, method, target, body=body, headers={**manager, **extra}))
        seen.append((method, target.rsplit("/mlflow/", 1)[-1], stock, proxy))
    expected = [("403", "403"), ("allowed", "allowed"), ("403", "403")] * 2 + [("allowed", "allowed"), ("403", "403")]
    assert [(s, p) for *_, s, p in seen] == expected, seen
    for path in (trapped, trapped2):
        r = raw_request(MLFLOW_URL, "GET", f"/api/2.0/mlflow-artifacts/artifacts/{path}", headers=admin)
        assert (r.status, r.body) == (200, b"keep me"), f"{path} was deleted"


def test_dot_segments_are_judged_where_the_store_reads(world):
    """Stricter than stock on purpose (docs/security.md): MLflow judges `./<exp>/...` as naming no
    experiment (the default permission decides) and `<exp>/./<run>/...` as an experiment-level
    artifact, while a store that resolves "." segments (s3s-fs, the test store; any file system)
    serves `<exp>/<run>/...` for both. The proxy also asks MLflow about the path without its "."
    segments and needs both answers to allow; the S3 key stays MLflow's."""
    exp, run = world.exp, world.run
    A, name = PREFIXES["api"], f"dot-{SUFFIX}.txt"
    P = f"{exp}/{run}/artifacts/{name}"
    # A file of its own: the decision matrix deletes the experiment's seeded files at its end.
    seeded = raw_request(MLFLOW_URL, "PUT", f"{A}/artifacts/{P}", body=b"seed", headers={"Host": "localhost", **world.users["admin"]})
    assert seeded.status == 200, (seeded.status, seeded.body[:200])
    stricter = [
        # `denied`: no permission on `exp`, the default (READ) elsewhere.
        ("denied", f"{A}/artifacts/./{P}"),
        ("denied", f"{A}/artifacts/%252E/{P}"),
        ("denied", f"{A}/artifacts/.//{P}"),
        ("denied", f"{A}/artifacts?path=.%2F{exp}%2F{run}%2Fartifacts"),
        ("denied", f"{A}/presigned/./{exp}/{run}/artifacts"),
        ("denied", f"/ajax-api/2.0/mlflow-artifacts/artifacts/./{P}"),
        # `runsdenied`: READ on `exp`, DENY on its runs.
        ("runsdenied", f"{A}/artifacts/{exp}/./{run}/artifacts/{name}"),
    ]
    # MLflow 3.18 drops "." segments itself: there stock refuses these too.
    drops_dots = tuple(int(x) for x in SETTINGS["STACK_MLFLOW_VERSION"].split(".")[:2]) >= (3, 18)
    for user, target in stricter:
        hdrs = {"Host": "localhost", **world.users[user]}
        stock = raw_request(MLFLOW_URL, "GET", target, headers=hdrs)
        proxy = raw_request(PROXY_URL, "GET", target, headers=hdrs)
        assert decision(proxy) == "403", (user, target, stock.status, proxy.status)
        assert proxy.body == b"Permission denied", (user, target, proxy.body)
        if drops_dots and decision(stock) != "allowed":
            assert (stock.status, stock.body) == (proxy.status, proxy.body), (user, target, stock.status)
            continue
        assert decision(stock) == "allowed", (user, target, stock.status, proxy.status)
        if STORE == "s3s-fs" and target.endswith(name):
            # What stock leaks on this store: the run's file itself.
            assert (stock.status, stock.body) == (200, b"seed"), (user, target, stock.status)
    # Where both readings are allowed, both serve the same answer.
    for user in ("reader", "admin"):
        hdrs = {"Host": "localhost", **world.users[user]}
        target = f"{A}/artifacts/./{P}"
        stock = raw_request(MLFLOW_URL, "GET", target, headers=hdrs)
        proxy = raw_request(PROXY_URL, "GET", target, headers=hdrs)
        assert decision(stock) == decision(proxy) == "allowed", (user, stock.status, proxy.status)
        if STORE == "s3s-fs":
            assert stock.body == proxy.body == b"seed", (user, stock.body, proxy.body)
    # Writes under `./<exp>`: stock refuses them already (the default permission is READ).
    hdrs = {"Host": "localhost", **world.users["editor"]}
    target = f"{A}/artifacts/./{exp}/{run}/artifacts/dot-{SUFFIX}.txt"
    decisions = [decision(raw_request(base, "PUT", target, body=b"x", headers=hdrs)) for base in (MLFLOW_URL, PROXY_URL)]
    # 3.18 judges the path without its "." segments: the editor may write there, through both.
    assert decisions == (["allowed"] * 2 if drops_dots else ["403"] * 2), decisions


def test_grant_and_revoke_take_effect_when_the_cached_answer_expires(world):
    """The proxy keeps MLflow's answer for PROXY_MLFLOW_AUTH_CACHE_TTL_SECS from when it asked:
    a grant or a revocation shows through it no sooner (exactly), and not long after (seconds of
    slack for a loaded machine)."""
    ttl = float(SETTINGS["PROXY_MLFLOW_AUTH_CACHE_TTL_SECS"])
    slack = 30.0
    name = f"flip-{SUFFIX}"
    password = f"pw-flip-{SUFFIX}-1"
    make_user(name, password, [])
    hdrs = {"Host": "localhost", **basic(name, password)}
    target = f"/api/2.0/mlflow-artifacts/artifacts/{world.exp}/flip-{SUFFIX}.txt"

    def proxy_put() -> int:
        return raw_request(PROXY_URL, "PUT", target, body=b"flip", headers=hdrs).status

    def until(status: int, what: str) -> float:
        """PUT until the proxy answers `status` (bounded: the TTL and the slack after `asked`);
        returns when the request that got it was sent."""
        while True:
            sent = time.monotonic()
            got = proxy_put()
            if got == status:
                return sent
            assert time.monotonic() - asked < ttl + slack, f"{what} not through the proxy after {ttl + slack:.0f} s"
            time.sleep(0.25)

    asked = time.monotonic()
    assert proxy_put() == 403  # default READ: no writes; this denial is now cached
    grant = {"username": name, "resource_type": "experiment", "resource_id": world.exp, "permission": "EDIT"}
    api("POST", "/api/3.0/mlflow/users/permissions/grant", grant)
    first_allowed = until(200, "the grant")
    granted_after = time.monotonic() - asked
    # The first 200 is MLflow's fresh answer: it could only be asked once the denial expired.
    assert granted_after >= ttl, f"the grant showed after {granted_after:.2f} s, inside the {ttl} s cache"
    assert raw_request(MLFLOW_URL, "PUT", target, body=b"flip", headers=hdrs).status == 200

    # That 200 was cached when it was asked (after `first_allowed`).
    asked = first_allowed
    api("POST", "/api/3.0/mlflow/users/permissions/revoke",
        {"username": name, "resource_type": "experiment", "resource_id": world.exp})
    until(403, "the revocation")
    revoked_after = time.monotonic() - asked
    assert revoked_after >= ttl, f"the revocation showed after {revoked_after:.2f} s, inside the {ttl} s cache"
    assert raw_request(MLFLOW_URL, "PUT", target, body=b"flip", headers=hdrs).status == 403
    print(f"\ngrant effective {granted_after:.1f} s after the cached denial was asked, "
          f"revocation {revoked_after:.1f} s after the cached grant was asked (TTL {ttl} s)")


def test_real_client_with_credentials(world, tmp_path, monkeypatch):
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    refused = (MlflowException, requests.HTTPError)

    def as_user(role: str):
        header = world.users[role]["Authorization"].split()[1]
        user, password = base64.b64decode(header).decode().split(":", 1)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

    src = tmp_path / "model-notes.txt"
    payload = os.urandom(200_000)
    src.write_bytes(payload)
    mlflow.set_tracking_uri(PROXY_URL)
    as_user("editor")
    client = mlflow.MlflowClient(PROXY_URL)
    run = client.create_run(world.exp)
    # The client caches an artifact repository per run: the stock-MLflow comparison needs its own.
    stock_run = client.create_run(world.exp).info.run_id
    client.log_artifact(run.info.run_id, str(src), "notes")
    out = client.download_artifacts(run.info.run_id, "notes", str(tmp_path / "down"))
    assert (tmp_path / "down" / "notes" / "model-notes.txt").read_bytes() == payload, out
    assert [f.path for f in client.list_artifacts(run.info.run_id, "notes")] == ["notes/model-notes.txt"]

    # A reader may download, not write: the same error as stock MLflow gives.
    as_user("reader")
    out = client.download_artifacts(run.info.run_id, "notes/model-notes.txt", str(tmp_path / "r"))
    assert open(out, "rb").read() == payload

    def refusal(base: str, run_id: str) -> str:
        # The artifact repository resolves `mlflow-artifacts:` against the global tracking URI.
        mlflow.set_tracking_uri(base)
        with pytest.raises(refused) as caught:
            mlflow.MlflowClient(base).log_artifact(run_id, str(src), "reader-notes")
        text = f"{type(caught.value).__name__}: {caught.value}"
        assert base in text, f"the request did not go to {base}: {text}"
        return text.replace(base, "<server>").replace(run_id, "<run>")

    via_proxy, via_stock = refusal(PROXY_URL, run.info.run_id), refusal(MLFLOW_URL, stock_run)
    mlflow.set_tracking_uri(PROXY_URL)
    assert via_proxy == via_stock, (via_proxy, via_stock)
    assert "403" in via_proxy and "Permission denied" in via_proxy, via_proxy

    # Wrong password: MLflow's 401, through the proxy as from MLflow.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(refused) as caught:
        client.download_artifacts(run.info.run_id, "notes/model-notes.txt", str(tmp_path / "w"))
    assert "401" in str(caught.value), caught.value


def test_metrics_count_decisions(world):
    text = http_get(f"{METRICS_URL}/metrics").body.decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("mlflow_proxy_auth_decisions_total{"):
            labels, value = line.rsplit(" ", 1)
            values[labels] = float(value)
    for outcome in ("allowed", "401", "403"):
        assert values.get(f'mlflow_proxy_auth_decisions_total{{outcome="{outcome}",source="mlflow"}}', 0) > 0, values
    assert values.get('mlflow_proxy_auth_decisions_total{outcome="allowed",source="cache"}', 0) > 0, values
    assert 'mlflow_proxy_auth_mlflow_state{state="on"} 1' in text
    assert "mlflow_proxy_auth_mlflow_request_duration_seconds_count" in text


def release_paths(w: World) -> dict[str, str]:
    """Paths MLflow 3.18 judges differently from 3.17.2: it drops `.` segments, takes `WORKSPACES/` in
    any case for the workspace prefix, and judges its skill tree (`skills/`) by the skill a path names,
    refusing odd spellings there. The proxy's decisions are MLflow's on either release."""
    return {
        "dot-lead": f"./{w.exp}/note.txt",
        "dot-in-run": f"{w.exp}/./{w.run}/artifacts/file.txt",
        "workspace-prefix": f"workspaces/team/{w.exp}/note.txt",
        "workspace-prefix-upper": f"WORKSPACES/team/{w.exp}/note.txt",
        "skills-root": "skills",
        "skills-organization": f"skills/@e2e-{SUFFIX}",
        "skill": f"skills/e2e-{SUFFIX}/{RUN_SHAPED}/SKILL.md",
        "skill-odd-spelling": f"skills/Bad_Name-{SUFFIX}/x.md",
    }


def test_decisions_on_paths_3_18_judges_differently_equal_stock(world, s3):
    from e2e_util import BUCKET, BUCKET_PREFIX

    paths = release_paths(world)
    for name in ("workspace-prefix", "workspace-prefix-upper", "skill", "skill-odd-spelling"):
        s3.put_object(Bucket=BUCKET, Key=f"{BUCKET_PREFIX}/{paths[name]}".lstrip("/"), Body=b"seed")
    users = {u: world.users[u] for u in ("anonymous", "reader", "editor", "nogrant", "denied", "admin")}
    directories = ("skills-root", "skills-organization")
    jobs = [
        (user, headers, op, "api", path_name, path)
        for user, headers in users.items()
        for op in OPERATIONS
        for path_name, path in paths.items()
        # A directory is for listing and deleting (its GET is a deliberate difference, README; a
        # presigned URL for it fails on the test store's HEAD, see build()).
        if not (op in ("GET", "HEAD", "PRESIGNED") and path_name in directories)
    ]
    jobs.sort(key=lambda j: j[2] == "DELETE")

    def fine(r: Response) -> str:
        # 3.18 refuses odd skill spellings with a 400: that is a decision here, not an "allowed".
        return "400" if r.status == 400 else decision(r)

    def one(job):
        user, headers, op, prefix_name, path_name, path = job
        case = f"{user}-{op}-{path_name}".lower()
        if op == "PRESIGNED" and path_name.startswith("skill"):
            # The file itself (build() presigns the directory).
            method, target, body, extra = "GET", f"{PREFIXES['api']}/presigned/{path}", None, {}
        else:
            method, target, body, extra = build(op, PREFIXES[prefix_name], path, case, path_name in directories)
        hdrs = {"Host": "localhost", **(headers or {}), **extra}
        stock = request_retried(MLFLOW_URL, method, target, body, hdrs)
        proxy = request_retried(PROXY_URL, method, target, body, hdrs)
        if method == "HEAD":
            stock.body, proxy.body = b"", b""
        shape = lambda r: refusal_shape(r) + ((r.body,) if r.status == 400 else ())  # noqa: E731
        expected = stock
        if fine(stock) == "allowed" and op in ("GET", "HEAD", "LIST", "PRESIGNED") and "/./" in f"/{path}/":
            # Stricter than stock on purpose (test_dot_segments_are_judged_where_the_store_reads,
            # docs/security.md): the proxy also needs MLflow's allow for the path without its "."
            # segments, which a store that resolves them reads. 3.18 drops them itself: equal there.
            dotless = "/".join(p for p in path.split("/") if p != ".")
            d_method, d_target, d_body, d_extra = build(op, PREFIXES[prefix_name], dotless, case, False)
            plain = request_retried(MLFLOW_URL, d_method, d_target, d_body, {**hdrs, **d_extra})
            if fine(plain) != "allowed":
                expected = plain
                if d_method == "HEAD":
                    expected.body = b""
        return Outcome(case, fine(expected), fine(proxy), shape(expected), shape(proxy))

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(one, jobs))
    assert_as_stock(outcomes, f"3.18-sensitive paths on MLflow {SETTINGS['STACK_MLFLOW_VERSION']}")
