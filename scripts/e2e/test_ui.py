"""What the browser UI uses, through the proxy: the page, its bundle, the ajax-api artifact list and
download, and the Python server's own routes (get-artifact, artifacts/list) reading what the proxy wrote."""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

import mlflow

from e2e_util import (
    AJAX_ARTIFACTS,
    ARTIFACTS,
    MLFLOW_URL,
    PROXY_URL,
    check,
    check_equal,
    raw_request,
    sha256_bytes,
    sha256_file,
    write_random,
)


def encode_uri_component(segment: str) -> str:
    """JavaScript's encodeURIComponent, which the UI applies to each path segment."""
    return quote(segment, safe="-_.!~*'()")


def test_ui_page_and_bundle_through_proxy():
    page = raw_request(PROXY_URL, "GET", "/")
    stock = raw_request(MLFLOW_URL, "GET", "/")
    check_equal("GET / through the proxy: status, media type", (200, "text/html"), (page.status, page.content_type.split(";")[0]))
    check(b"<title>MLflow</title>" in page.body, "GET / through the proxy is MLflow's page", "<title>MLflow</title>", page.body[:300])
    check_equal("SHA-256 of GET / : stock MLflow (expected) vs proxy (got)", sha256_bytes(stock.body), sha256_bytes(page.body))
    scripts = re.findall(rb'src="([^"]+\.js)"', page.body)
    check(len(scripts) > 0, "script bundles referenced by the page", "at least one", scripts)
    for src in scripts:
        path = "/" + src.decode().lstrip("./")
        got, want = raw_request(PROXY_URL, "GET", path), raw_request(MLFLOW_URL, "GET", path)
        check_equal(f"GET {path}: status through the proxy", 200, got.status)
        check_equal(f"SHA-256 of {path}: stock (expected) vs proxy (got)", sha256_bytes(want.body), sha256_bytes(got.body))


def test_ui_ajax_artifacts_and_python_routes(tmp_path):
    names = ["plain.txt", "résumé 日本 space.txt", "data (1).bin"]
    digests = {n: write_random(tmp_path / "ui" / n, 5000 + i) for i, n in enumerate(names)}
    mlflow.set_experiment("e2e-ui")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "ui"), "ui")
    run_id = run.info.run_id
    root = run.info.artifact_uri[len("mlflow-artifacts:") :].lstrip("/")  # <exp>/<run>/artifacts

    # the UI's list call (ajax-api), through the proxy, against the stock answer
    q = urlencode({"path": f"{root}/ui"})
    got = raw_request(PROXY_URL, "GET", f"{AJAX_ARTIFACTS}?{q}")
    want = raw_request(MLFLOW_URL, "GET", f"{AJAX_ARTIFACTS}?{q}")
    check_equal("ajax-api list through the proxy: status", 200, got.status)
    check_equal("ajax-api list: stock MLflow (expected) vs proxy (got)", want.json(), got.json())
    check_equal(
        "ajax-api list content",
        sorted((n, False, 5000 + i) for i, n in enumerate(names)),
        sorted((f["path"], f["is_dir"], f.get("file_size")) for f in got.json()["files"]),
    )

    for name in names:
        # the UI's download: ajax-api, each segment encoded with encodeURIComponent
        url = AJAX_ARTIFACTS + "/" + "/".join(encode_uri_component(s) for s in f"{root}/ui/{name}".split("/"))
        r = raw_request(PROXY_URL, "GET", url)
        check_equal(f"status of the UI download of {name!r} through the proxy", 200, r.status)
        check_equal(f"SHA-256 of the UI download of {name!r}", digests[name], sha256_bytes(r.body))
        stock = raw_request(MLFLOW_URL, "GET", url)
        for h in ("content-type", "content-disposition", "x-content-type-options"):
            check_equal(f"{h} of the UI download of {name!r}: stock (expected) vs proxy (got)", stock.headers.get(h), r.headers.get(h))

        # the Python server's own get-artifact route serves what the proxy stored: same keys on both sides
        q = urlencode({"run_uuid": run_id, "path": f"ui/{name}"})
        for base in (PROXY_URL, MLFLOW_URL):
            ga = raw_request(base, "GET", f"/get-artifact?{q}")
            check_equal(f"status of /get-artifact for {name!r} via {base}", 200, ga.status)
            check_equal(f"SHA-256 of /get-artifact for {name!r} via {base}", digests[name], sha256_bytes(ga.body))

    # the run-artifact list the UI uses (served by Python, passed through)
    q = urlencode({"run_id": run_id, "path": "ui"})
    lst = raw_request(PROXY_URL, "GET", f"/ajax-api/2.0/mlflow/artifacts/list?{q}")
    check_equal("status of /ajax-api/2.0/mlflow/artifacts/list through the proxy", 200, lst.status)
    check_equal(
        "files listed by /ajax-api/2.0/mlflow/artifacts/list",
        sorted(f"ui/{n}" for n in names),
        sorted(f["path"] for f in lst.json()["files"]),
    )

    # and a file the proxy serves equals the one on disk, through the API route too
    for name in names:
        r = raw_request(PROXY_URL, "GET", f"{ARTIFACTS}/{quote(root)}/ui/{quote(name)}")
        check_equal(f"SHA-256 of {name!r} via {ARTIFACTS}", sha256_file(tmp_path / "ui" / name), sha256_bytes(r.body))
