"""Integrity with the real MLflow client (docs/integrity.md): an artifact logged through the proxy
gets a digest; once its stored bytes are replaced behind the proxy's back (its digest metadata
kept), the client's download fails instead of producing a complete-looking file, the proxy counts
it, and `verify` reports it; an untouched artifact still downloads whole."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from e2e_util import BUCKET, BUCKET_PREFIX, METRICS_URL, ROOT, SETTINGS, check, check_equal, http_get, sha256_file

DIGEST = "mlflow-proxy-crc64nvme"


def mismatches() -> float:
    text = http_get(f"{METRICS_URL}/metrics").body.decode()
    found = re.search(r'^mlflow_proxy_integrity_downloads_total\{outcome="mismatch"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def key_of(artifact_uri: str, path: str) -> str:
    """The S3 key of a run artifact (`mlflow-artifacts:/<exp>/<run>/artifacts` + path)."""
    rel = artifact_uri.split("mlflow-artifacts:/", 1)[1].strip("/")
    return "/".join(p for p in (BUCKET_PREFIX, rel, path) if p)


def test_a_corrupted_artifact_fails_the_clients_download(s3, tmp_path):
    if os.environ.get("E2E_PROXY_URL"):
        pytest.skip("aimed at another server: the proxy's integrity is not under test")
    good = tmp_path / "good.bin"
    bad_source = tmp_path / "model.bin"
    good.write_bytes(os.urandom(300_000))
    bad_source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    mlflow.set_experiment("e2e-integrity")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(good))
        mlflow.log_artifact(str(bad_source))
    key = key_of(run.info.artifact_uri, "model.bin")
    head = s3.head_object(Bucket=BUCKET, Key=key)
    check(DIGEST in head["Metadata"], "a digest recorded with the object", DIGEST, head["Metadata"])
    check_equal("a CRC64NVME (8 bytes)", 8, len(base64.b64decode(head["Metadata"][DIGEST])))

    # Other bytes of the same length, the original digest kept: what rot or a buggy writer leaves.
    data = bytearray(bad_source.read_bytes())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data), Metadata=head["Metadata"])

    before = mismatches()
    with pytest.raises(MlflowException) as failed:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{run.info.artifact_uri}/model.bin", dst_path=str(tmp_path / "dl")
        )
    # Through presigned/ (the default): "Failed to download 1 chunk(s) for model.bin after all
    # retries exhausted"; with one GET: the IncompleteRead itself.
    message = str(failed.value)
    check("model.bin" in message, "the failure names the file", "model.bin", message[:300])
    partial = tmp_path / "dl" / "model.bin"
    check(
        not partial.exists() or partial.stat().st_size < len(data),
        "no complete-looking file",
        f"< {len(data)} bytes",
        partial.exists() and partial.stat().st_size,
    )
    check(mismatches() >= before + 1, "the proxy counted the mismatch", before + 1, mismatches())

    # The untouched artifact downloads whole.
    got = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{run.info.artifact_uri}/good.bin", dst_path=str(tmp_path / "ok")
    )
    check_equal("untouched artifact", sha256_file(good), sha256_file(Path(got)))

    # verify reports it, and exits 1.
    run_prefix = key.rsplit("/", 1)[0]
    if BUCKET_PREFIX:
        run_prefix = run_prefix[len(BUCKET_PREFIX) + 1 :]
    binary = SETTINGS.get("PROXY_BIN") or str(ROOT / "target" / "debug" / "mlflow-artifact-proxy")
    env = {k: v for k, v in SETTINGS.items() if k.startswith(("AWS_", "MLFLOW_S3_", "MLFLOW_ARTIFACTS_"))}
    env["PATH"] = os.environ.get("PATH", "")
    result = subprocess.run(
        [binary, "verify", "--prefix", run_prefix + "/"], env=env, capture_output=True, text=True, timeout=300
    )
    check_equal("verify's exit code", 1, result.returncode)
    check(f"mismatch: {key}" in result.stdout, "verify names the key", key, result.stdout[-500:])
    check("ok: 1, mismatch: 1" in result.stdout, "verify's summary", "ok: 1, mismatch: 1", result.stdout[-300:])
