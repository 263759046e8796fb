"""Run artifacts through the proxy with the real MLflow client: log, list, download, delete;
the 600 MiB round trip that must bypass the Python server; and the client's default mode."""

from __future__ import annotations

import re
import time
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from e2e_util import (
    LOGS,
    NESTED,
    PROXY_URL,
    STACK_TMP,
    STORE,
    DirSampler,
    LogWatch,
    check,
    check_equal,
    http_get,
    mlflow_log_settled,
    s3_requests,
    sha256_file,
    tree_digest,
)


def list_tree(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int | None]:
    """{artifact path: file_size} of every file under `path`, walking directories with list_artifacts."""
    out: dict[str, int | None] = {}
    for fi in client.list_artifacts(run_id, path):
        if fi.is_dir:
            out.update(list_tree(client, run_id, fi.path))
        else:
            out[fi.path] = fi.file_size
    return out


def stock_size(size: int) -> int | None:
    # MLflow omits file_size for empty files, so the client reports None for them.
    return size or None


def test_log_list_download_delete(small_files, nested_dir, tmp_path):
    nested_root, nested_digests = nested_dir
    client = MlflowClient()
    mlflow.set_experiment("e2e-artifacts")
    with mlflow.start_run() as run:
        for path, _size, _digest in small_files.values():
            mlflow.log_artifact(str(path), "files")
        mlflow.log_artifacts(str(nested_root), "tree")
    run_id = run.info.run_id

    # list
    top = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id)]
    check_equal("list_artifacts(run) at the root", [("files", True, None), ("tree", True, None)], top)
    files = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, "files")]
    check_equal(
        "list_artifacts(run, 'files')",
        sorted((f"files/{n}", False, stock_size(s)) for n, (_p, s, _d) in small_files.items()),
        files,
    )
    check_equal(
        "every file under 'tree' (recursive list_artifacts), with sizes",
        dict(sorted((f"tree/{rel}", stock_size(size)) for rel, size in NESTED.items())),
        dict(sorted(list_tree(client, run_id, "tree").items())),
    )

    # download, file by file and as folders; compare SHA-256
    for name, (_path, size, digest) in small_files.items():
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"files/{name}", dst_path=str(tmp_path / "one" / name)
        )
        check_equal(f"SHA-256 of downloaded files/{name} ({size} B)", digest, sha256_file(Path(local)))
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="files", dst_path=str(tmp_path / "dir"))
    check_equal(
        "SHA-256 of every file of the downloaded folder 'files'",
        {n: d for n, (_p, _s, d) in sorted(small_files.items())},
        tree_digest(Path(local)),
    )
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tree", dst_path=str(tmp_path / "tree"))
    check_equal("SHA-256 of every file of the downloaded nested folder 'tree'", nested_digests, tree_digest(Path(local)))
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "all"))
    got_all = tree_digest(Path(local))
    check_equal(
        "files of the whole run downloaded at once",
        sorted([f"files/{n}" for n in small_files] + [f"tree/{r}" for r in NESTED]),
        sorted(got_all),
    )

    # delete, then the listing is empty
    repo = get_artifact_repository(run.info.artifact_uri)
    repo.delete_artifacts("files")
    check_equal("list_artifacts(run, 'files') after deleting 'files'", [], client.list_artifacts(run_id, "files"))
    repo.delete_artifacts("tree")
    check_equal("list_artifacts(run) after deleting 'files' and 'tree'", [], client.list_artifacts(run_id))
    check_equal("list_artifacts(run, 'tree') after deleting it", {}, list_tree(client, run_id, "tree"))


def test_600mib_bypasses_python_and_client_stays_on_proxy(big_file, tmp_path, monkeypatch):
    """600 MiB up and down with the client in its default mode, then with its multipart switches off:
    - server-info through the proxy offers multipart upload and download, so the default client
      (600 MiB is over its 500 MiB threshold) sends 10 MiB parts and reads 100 MiB ranges, all on
      URLs of the proxy; with MLFLOW_ENABLE_PROXY_MULTIPART_*=false it sends one PUT and one GET;
    - MLflow's access log shows no artifact-route request, and its TMPDIR does not grow;
    - the S3 server sees the object's requests from the proxy only: none from the client
      (python-requests, which is what presigned S3 URLs would make it use) and none from MLflow (boto3)."""
    path, digest = big_file
    size = path.stat().st_size
    client = MlflowClient()
    mlflow.set_experiment("e2e-big")
    with mlflow.start_run() as run:
        pass
    run_id = run.info.run_id
    repo = get_artifact_repository(run.info.artifact_uri)

    # server-info as the client sees it (through the proxy), and the client's resulting choice
    info = http_get(f"{PROXY_URL}/api/3.0/mlflow/server-info").json()
    check_equal(
        "server-info multipart flags, through the proxy",
        {"multipart_uploads_enabled": True, "multipart_downloads_enabled": True},
        {k: info.get(k) for k in ("multipart_uploads_enabled", "multipart_downloads_enabled")},
    )
    check_equal(
        "the client's own view (MlflowArtifactsRepository): multipart upload, multipart download",
        (True, True),
        (repo._is_multipart_upload_enabled(), repo._is_multipart_download_enabled()),
    )
    for mode in ("default (multipart)", "switched off (single stream)"):
        if mode.startswith("switched off"):
            monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false")
            monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
        round_trip(client, repo, run_id, path, digest, size, tmp_path / mode.split()[0], mode)


def round_trip(client, repo, run_id, path, digest, size, tmp_path, mode):

    mlflow_log = LogWatch(LOGS / "mlflow.log")
    s3_log = LogWatch(LOGS / "s3.log")
    proxy_log = LogWatch(LOGS / "proxy.log")
    dst = tmp_path / "down"
    with DirSampler(STACK_TMP) as tmp_watch:
        t0 = time.monotonic()
        client.log_artifact(run_id, str(path), "big")
        t1 = time.monotonic()
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"big/{path.name}", dst_path=str(dst)
        )
        t2 = time.monotonic()
    mib = size / 2**20
    print(f"600 MiB, {mode}: upload {t1 - t0:.2f}s ({mib / (t1 - t0):.0f} MiB/s), download {t2 - t1:.2f}s ({mib / (t2 - t1):.0f} MiB/s)")
    print(f"MLflow TMPDIR: {tmp_watch.samples} samples, baseline {tmp_watch.baseline} B, peak {tmp_watch.peak} B")

    check_equal("SHA-256 of the 600 MiB file after upload and download", digest, sha256_file(Path(local)))
    Path(local).unlink()
    check_equal(
        "list_artifacts(run, 'big')",
        [(f"big/{path.name}", False, size)],
        [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run_id, "big")],
    )

    # bytes bypass Python
    artifact_lines = [l for l in mlflow_log_settled(mlflow_log).splitlines() if "mlflow-artifacts" in l]
    check_equal("MLflow access-log lines for artifact routes during the 600 MiB up/down", [], artifact_lines)
    check(
        tmp_watch.growth == 0,
        f"growth of MLflow's TMPDIR ({STACK_TMP}) during the 600 MiB up/down, in bytes",
        0,
        tmp_watch.growth,
    )

    # what reached S3, and from whom
    reqs = s3_requests(s3_log.text())
    for_object = [r for r in reqs if path.name in r["uri"]]
    check(
        any(r["method"] == "PUT" for r in for_object) and any(r["method"] == "GET" for r in for_object),
        f"S3 requests for {path.name} (the {STORE} log): at least one PUT and one GET, by the proxy",
        "PUT and GET present",
        for_object,
    )
    # a large object is read as parallel ranged GETs (8 MiB chunks by default): many GETs, one download
    gets = [r for r in for_object if r["method"] == "GET"]
    check(
        len(gets) >= size // (8 << 20),
        f"S3 GETs for {path.name}: the proxy read it as parallel ranged GETs (PROXY_DOWNLOAD_CHUNK_MIB=8)",
        f"at least {size // (8 << 20)}",
        len(gets),
    )
    not_proxy = re.compile(r"python-requests|mlflow-python-client|Botocore|Boto3|aws-cli", re.I)
    from_python = [r for r in reqs if not_proxy.search(r["ua"])]
    check_equal(
        "S3 requests made by a Python client or by the MLflow server (boto3) during the 600 MiB up/down",
        [],
        from_python,
    )

    # which transfer the client chose, from the proxy's access log (route=...), once every
    # request's line is written
    def route_counts(text):
        routes = [m.group(1) for m in re.finditer(r' route="?(\w+)"? ', text)]
        return {r: routes.count(r) for r in ("mpu", "signed_part", "presigned", "signed_object", "upload", "download")}

    expected = (
        {"mpu": 2, "signed_part": 60, "presigned": 1, "signed_object": 6, "upload": 0, "download": 0}
        if mode.startswith("default")
        else {"mpu": 0, "signed_part": 0, "presigned": 0, "signed_object": 0, "upload": 1, "download": 1}
    )
    proxy_text = proxy_log.text_once(lambda t: all(n >= expected[r] for r, n in route_counts(t).items()))
    counts = route_counts(proxy_text)
    check_equal(
        f"artifact requests by route in the proxy's access log, {mode} (600 MiB: 10 MiB parts, 100 MiB ranges)",
        expected,
        counts,
    )
    check(
        path.name in proxy_text,
        "the proxy's access log mentions the 600 MiB object (it carried the bytes)",
        f"a line containing {path.name}",
        proxy_text[-2000:],
    )

    repo.delete_artifacts("big")
    check_equal("list_artifacts(run) after deleting 'big'", [], client.list_artifacts(run_id))
