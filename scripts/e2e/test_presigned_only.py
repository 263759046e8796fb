"""MLflow 3.18's presigned-only mode (`mlflow server --artifacts-presigned-only`) through the proxy, against a
second MLflow that runs with it (variant.py): the routes that move bytes themselves (GET, HEAD, PUT of
`artifacts/<path>`) answer exactly what stock answers (403, `"artifacts_presigned_only": true`); the others
are served; the real 3.18 client, which then moves every file through presigned URLs, round-trips through
the proxy's own signed URLs, and no byte passes through MLflow."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from e2e_util import LogWatch, check_equal, raw_request, request_retried, sha256_bytes, write_random

pytestmark = pytest.mark.mlflow(min="3.18")

ID = uuid.uuid4().hex[:8]
A = "/api/2.0/mlflow-artifacts"
J = "/ajax-api/2.0/mlflow-artifacts"
HOST = {"Host": "localhost"}


@pytest.fixture(scope="module")
def server(variant):
    v = variant(presigned_only=True)
    r = raw_request(v.mlflow_url, "GET", "/api/3.0/mlflow/server-info", headers=HOST)
    assert r.json()["artifacts_presigned_only"] is True, r.body
    return v


CASES = [
    ("get", "GET", A + "/artifacts/e2e-po-{ID}/f.txt", None),
    ("get-ajax", "GET", J + "/artifacts/e2e-po-{ID}/f.txt", None),
    ("get-missing", "GET", A + "/artifacts/e2e-po-{ID}/nope.txt", None),
    ("get-invalid-path", "GET", A + "/artifacts/%2e%2e/x", None),
    ("head", "HEAD", A + "/artifacts/e2e-po-{ID}/f.txt", None),
    ("put", "PUT", A + "/artifacts/e2e-po-{ID}/g.txt", b"put"),
    ("put-ajax", "PUT", J + "/artifacts/e2e-po-{ID}/g.txt", b"put"),
    ("list", "GET", A + "/artifacts?path=e2e-po-{ID}", None),
    ("delete-missing", "DELETE", A + "/artifacts/e2e-po-{ID}/nope.txt", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_answers_equal_stock(server, s3, case):
    from e2e_util import BUCKET, BUCKET_PREFIX

    _, method, target, body = case
    target = target.replace("{ID}", ID)
    s3.put_object(Bucket=BUCKET, Key=f"{BUCKET_PREFIX}/e2e-po-{ID}/f.txt".lstrip("/"), Body=b"seeded")
    seen = {}
    for side, base in (("stock", server.mlflow_url), ("proxy", server.proxy_url)):
        r = request_retried(base, method, target, body, HOST)
        seen[side] = {"status": r.status, "content-type": r.headers.get("content-type"),
                      "body": json.loads(r.body) if r.body.startswith(b"{") else r.body.decode("utf-8", "replace")}
    if case[0] == "get-missing":
        # README's deliberate difference for a missing object does not arise: both refuse first.
        assert seen["stock"]["status"] == 403, seen
    check_equal(f"{method} {target} in presigned-only mode", seen["stock"], seen["proxy"])
    if method in ("GET", "HEAD", "PUT") and "?" not in target:
        assert seen["proxy"]["status"] == 403, seen
        if method != "HEAD":
            assert seen["proxy"]["body"]["artifacts_presigned_only"] is True, seen


def test_server_info_says_presigned_only(server):
    info = raw_request(server.proxy_url, "GET", "/api/3.0/mlflow/server-info", headers=HOST).json()
    check_equal("server-info through the proxy",
                (True, True, True), (info["artifacts_presigned_only"], info["multipart_uploads_enabled"],
                                     info["multipart_downloads_enabled"]))


def test_the_real_client_moves_files_through_the_proxys_urls(server, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from e2e_util import LOGS, SETTINGS

    files = {"model.bin": 9 << 20, "small.txt": 10, "empty.txt": 0}
    digests = {name: write_random(tmp_path / "src" / name, size) for name, size in files.items()}
    proxy_log = LogWatch(LOGS / "variant-presigned_only-proxy.log")
    mlflow_log = LogWatch(LOGS / "variant-presigned_only-mlflow.log")
    mlflow.set_tracking_uri(server.proxy_url)
    try:
        client = MlflowClient(server.proxy_url)
        exp = client.create_experiment(f"e2e-presigned-only-{ID}")
        run = client.create_run(exp).info.run_id
        client.log_artifacts(run, str(tmp_path / "src"), "files")
        out = client.download_artifacts(run, "files", str(tmp_path / "down"))
    finally:
        mlflow.set_tracking_uri(SETTINGS["PROXY_URL"])
    got = {name: sha256_bytes(open(os.path.join(out, name), "rb").read()) for name in files}
    check_equal("bytes after a round trip in presigned-only mode", digests, got)
    log = proxy_log.text()
    check_equal("transfers through the proxy's signed URLs (parts, objects) and none through GET/PUT",
                (True, True, 0, 0),
                ('route="signed_part"' in log, 'route="signed_object"' in log,
                 log.count('route="upload" status=200'), log.count('route="download" status=200')))
    check_equal("artifact bytes through MLflow", [],
                [line for line in mlflow_log.text().splitlines() if "mlflow-artifacts/artifacts/" in line])
