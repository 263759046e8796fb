"""The stack's gc when MLflow runs its basic-auth app (`scripts/stack up --auth`): both steps need an
admin's credentials (MLFLOW_TRACKING_USERNAME/PASSWORD, as compose's gc services pass them); without
them each stops with MLflow's 401 and nothing is deleted."""

from __future__ import annotations

import base64
import json
import uuid

from e2e_util import ARTIFACTS, BUCKET, MLFLOW_URL, PROXY_URL, SETTINGS, check, check_equal, raw_request
from gc_util import digests, lines_starting, listing, mlflow_gc, orphan_gc, run_mlflow_gc, run_orphan_gc

ADMIN = (SETTINGS["MLFLOW_AUTH_ADMIN_USERNAME"], SETTINGS["MLFLOW_AUTH_ADMIN_PASSWORD"])
AS_ADMIN = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}


def api(path: str, body: dict) -> dict:
    r = raw_request(MLFLOW_URL, "POST", path, json.dumps(body).encode(),
                    {**AS_ADMIN, "Host": "localhost", "Content-Type": "application/json"})
    check_equal(f"POST {path} as the admin ({r.body[:300]!r})", 200, r.status)
    return r.json()


def test_the_stacks_gc_needs_an_admin(s3):
    exp = api("/api/2.0/mlflow/experiments/create", {"name": f"auth-gc-{uuid.uuid4().hex[:8]}"})["experiment_id"]
    run = api("/api/2.0/mlflow/runs/create", {"experiment_id": exp})["run"]["info"]["run_id"]
    orphan = uuid.uuid4().hex
    # scripts/test runs MLflow 3.17.2 and 3.18.0 on one store, each with a database of its own: this
    # experiment id may already have another database's files. They are not this test's to count.
    leftovers = list(listing(s3, exp))
    for k in leftovers:
        s3.delete_object(Bucket=BUCKET, Key=k)
    for path in (f"{exp}/{run}/artifacts/a.txt", f"{exp}/{run}/artifacts/sub/b.txt", f"{exp}/{orphan}/artifacts/c.txt"):
        r = raw_request(PROXY_URL, "PUT", f"{ARTIFACTS}/{path}", b"gc " + path.encode(), AS_ADMIN)
        check_equal(f"PUT {path} as the admin", 200, r.status)
    api("/api/2.0/mlflow/runs/delete", {"run_id": run})
    before = digests(s3, listing(s3, exp))
    check_equal("objects planted", 3, len(before))

    # Without credentials: MLflow's 401, from both steps, and nothing is deleted.
    done = run_mlflow_gc("--run-ids", run)
    check(done.returncode != 0 and "401" in done.stderr and "mlflow-gc: FAILED: 1 artifact deletions" in done.stdout,
          "gc.py without credentials stops on the proxy's 401", "exit != 0, 401",
          (done.returncode, done.stdout[-500:], done.stderr[-500:]))
    done = run_orphan_gc("--delete", "--older-than", "0", "--under", exp)
    check(done.returncode != 0 and "401" in done.stderr, "gc without credentials stops on MLflow's 401",
          "exit != 0 and 401", (done.returncode, done.stderr[-500:]))
    check_equal("objects after the refused runs", before, digests(s3, listing(s3, exp)))

    # As the admin: the deleted run's files through the proxy's DELETE, then the orphan.
    out = mlflow_gc("--run-ids", run, credentials=ADMIN)
    check(f"mlflow-gc: freed {exp}/{run}/artifacts: 2 objects" in out, "gc.py frees the deleted run", "2 objects", out)
    out = orphan_gc("--delete", "--older-than", "0", "--under", exp, credentials=ADMIN)
    check_equal("orphans deleted as the admin", [f"run {exp}/{orphan}/"], lines_starting(out, "gc: deleted orphan "))
    check_equal("objects left in the experiment", {}, listing(s3, exp))
