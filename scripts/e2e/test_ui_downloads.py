"""The UI's and the registry's downloads go through the proxy (issue 19): a file logged by the real
MLflow client as a run artifact and as a logged-model artifact, the logged model registered as a model
version, then downloaded through each route the UI and the registry use, on port 5000. Each must give
the same bytes, leave stock MLflow's temp folder (.stack/tmp) as it was, and never reach MLflow's
artifact routes (MLflow is asked only where the file is). The same download from stock MLflow itself
is the control: its temp folder grows by the file's size, so the temp check can fail.

On MLflow 3.18 the two model routes also take `presigned=true` (what 3.18's UI asks when server-info
offers it): the proxy answers stock's JSON with a URL on itself, never on the store, and that URL gives
the file's bytes. Stock's own answer, a URL on the store signed with its key, is the control."""

from __future__ import annotations

import http.client
import json
import uuid
from urllib.parse import quote, urlencode, urlsplit

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e_util import (
    ARTIFACTS,
    LOGS,
    MLFLOW_URL,
    PROXY_URL,
    S3_URL,
    STACK_TMP,
    DirSampler,
    LogWatch,
    check_equal,
    dir_bytes,
    raw_request,
    sha256_bytes,
    write_random,
)

SIZE = 48 << 20
SUFFIX = uuid.uuid4().hex[:8]
# What stock MLflow's access log shows for a download it serves itself.
ARTIFACT_ROUTES = ("/get-artifact", "/artifacts/files", "/mlflow-artifacts/")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui-downloads") / "weights.bin"
    digest = write_random(path, SIZE)
    client = MlflowClient()
    mlflow.set_experiment(f"e2e-ui-downloads-{SUFFIX}")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(path), "data")
    model = client.create_logged_model(experiment_id=run.info.experiment_id, name="ui-downloads")
    client.log_model_artifact(model.model_id, str(path))
    name = f"ui-downloads-{SUFFIX}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"models:/{model.model_id}", model_id=model.model_id)
    root = run.info.artifact_uri[len("mlflow-artifacts:") :].lstrip("/")
    targets = {
        "client route": f"{ARTIFACTS}/{quote(root)}/data/weights.bin",
        "run (UI)": "/get-artifact?" + urlencode({"path": "data/weights.bin", "run_id": run.info.run_id}),
        "logged model (UI)": f"/ajax-api/2.0/mlflow/logged-models/{model.model_id}/artifacts/files?"
        + urlencode({"artifact_file_path": "weights.bin"}),
        "model version (registry)": "/model-versions/get-artifact?"
        + urlencode({"path": "weights.bin", "name": name, "version": version.version}),
    }
    path.unlink()
    return targets, digest


@pytest.mark.parametrize("route", ["client route", "run (UI)", "logged model (UI)", "model version (registry)"])
def test_download_streams_through_the_proxy(route, logged):
    targets, digest = logged
    mlflow_log = LogWatch(LOGS / "mlflow.log")
    with DirSampler(STACK_TMP) as tmp:
        r = raw_request(PROXY_URL, "GET", targets[route], timeout=300)
    check_equal(f"{route}: status", 200, r.status)
    check_equal(f"{route}: Content-Length", str(SIZE), r.headers.get("content-length"))
    check_equal(f"{route}: SHA-256 of the download", digest, sha256_bytes(r.body))
    check_equal(f"{route}: growth of stock MLflow's TMPDIR ({STACK_TMP}) during the download, bytes", 0, tmp.growth)
    hits = [line for line in mlflow_log.text().splitlines() if any(a in line for a in ARTIFACT_ROUTES)]
    check_equal(f"{route}: artifact routes in MLflow's access log during the download", [], hits)


def test_stock_copies_the_same_download_into_its_temp_folder(logged):
    """The control: the same route on stock MLflow's own port spools the file to its temp folder.

    The copy is seen by a sampler (every 20 ms) and, where stock still holds it once its headers
    are out, by a look between its headers and its body, which this client has not read yet: the
    larger counts. (On s3s-fs the copy is still there after the headers; on Garage it is not, so
    there only the sampler sees it, and a loaded machine can make it miss the last few MiB.)"""
    targets, digest = logged
    u = urlsplit(MLFLOW_URL)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    with DirSampler(STACK_TMP) as tmp:
        try:
            conn.request("GET", targets["run (UI)"])
            r = conn.getresponse()
            held = dir_bytes(STACK_TMP) - tmp.baseline
            body = r.read()
        finally:
            conn.close()
    check_equal("stock: status", 200, r.status)
    check_equal("stock: SHA-256", digest, sha256_bytes(body))
    seen = max(tmp.growth, held)
    assert seen >= SIZE, f"stock MLflow's temp folder grew by {seen} bytes (sampled {tmp.growth}, held {held}), expected >= {SIZE}"


@pytest.mark.mlflow(min="3.18")
@pytest.mark.parametrize("route", ["logged model (UI)", "model version (registry)"])
def test_presigned_answer_is_a_url_on_the_proxy(route, logged):
    targets, digest = logged
    store = urlsplit(S3_URL).netloc
    answer = raw_request(PROXY_URL, "GET", targets[route] + "&presigned=true")
    check_equal(f"{route}, presigned=true: status and type", (200, "application/json"),
                (answer.status, answer.content_type))
    check_equal(f"{route}, presigned=true: the store's address or a signature in the answer", [],
                [w for w in (store.encode(), b"X-Amz-") if w in answer.body])
    got = answer.json()
    check_equal(f"{route}, presigned=true: the answer's keys, file_size and headers",
                (["file_size", "headers", "url"], SIZE, {}), (sorted(got), got["file_size"], got["headers"]))
    url = urlsplit(got["url"])
    check_equal(f"{route}, presigned=true: where the URL points", urlsplit(PROXY_URL).netloc, url.netloc)
    mlflow_log = LogWatch(LOGS / "mlflow.log")
    with DirSampler(STACK_TMP) as tmp:
        r = raw_request(PROXY_URL, "GET", f"{url.path}?{url.query}", timeout=300)
    check_equal(f"{route}, the presigned URL: status", 200, r.status)
    check_equal(f"{route}, the presigned URL: SHA-256 of the download", digest, sha256_bytes(r.body))
    check_equal(f"{route}, the presigned URL: growth of stock MLflow's TMPDIR, bytes", 0, tmp.growth)
    hits = [line for line in mlflow_log.text().splitlines() if any(a in line for a in ARTIFACT_ROUTES)]
    check_equal(f"{route}, the presigned URL: artifact routes in MLflow's access log", [], hits)
    # The control: stock MLflow's own answer is a URL on the store, signed with its key.
    stock = raw_request(MLFLOW_URL, "GET", targets[route] + "&presigned=true")
    check_equal(f"stock, {route}, presigned=true: status", 200, stock.status)
    stock_url = json.loads(stock.body)["url"]
    assert urlsplit(stock_url).netloc == store and "X-Amz-Signature=" in stock_url, stock_url
