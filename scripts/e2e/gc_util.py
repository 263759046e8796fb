"""Running the stack's gc from the end-to-end tests: MLflow's `mlflow gc` through mlflow-image/gc.py,
and `mlflow-artifact-proxy gc`, each with the environment its compose service gets; and reading
the store (the harness's own S3 access)."""

from __future__ import annotations

import os
import subprocess
import sys

from e2e_util import BUCKET, BUCKET_PREFIX, PROXY_URL, ROOT, SETTINGS, check, check_equal, sha256_bytes

GC_PY = ROOT / "mlflow-image" / "gc.py"
PROXY_BIN = SETTINGS["PROXY_BIN"]


def key(path: str) -> str:
    return f"{BUCKET_PREFIX}/{path}" if BUCKET_PREFIX else path


def dest_path(uri: str) -> str:
    """mlflow-artifacts:/3/abc/artifacts -> 3/abc/artifacts"""
    check(uri.startswith("mlflow-artifacts:/"), "artifact URI scheme", "mlflow-artifacts:/...", uri)
    return uri[len("mlflow-artifacts:") :].strip("/")


def listing(s3, path: str) -> dict[str, int]:
    """{key: size} of every object under the destination-relative folder `path`."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key(path.rstrip("/") + "/")):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def digests(s3, keys) -> dict[str, str]:
    return {k: sha256_bytes(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in sorted(keys)}


def backend_env() -> dict[str, str]:
    """What compose gives the gc service: the MYSQL_* variables (or a SQLite URI natively)."""
    if SETTINGS.get("STACK_DB") == "sqlite":
        return {"BACKEND_STORE_URI": f"sqlite:///{SETTINGS['STACK_DATA']}/mlflow.db"}
    return {k: SETTINGS[k] for k in ("MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_USER", "MYSQL_PASSWORD", "MYSQL_DATABASE")}


def backend_uri() -> str:
    env = backend_env()
    if "BACKEND_STORE_URI" in env:
        return env["BACKEND_STORE_URI"]
    return "mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_TCP_PORT}/{MYSQL_DATABASE}".format(**env)


def base_env(credentials: tuple[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "MLFLOW_TRACKING_URI": PROXY_URL}
    if credentials:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = credentials
    return env


def run_mlflow_gc(*args: str, credentials: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """The stack's `mlflow gc` step, as the compose service and the CronJob run it."""
    return subprocess.run(
        [sys.executable, str(GC_PY), *args],
        env={**base_env(credentials), **backend_env()},
        capture_output=True,
        text=True,
        timeout=900,
    )


def mlflow_gc(*args: str, credentials: tuple[str, str] | None = None) -> str:
    done = run_mlflow_gc(*args, credentials=credentials)
    check_equal(f"exit code of gc.py {' '.join(args)}\n{done.stdout}\n{done.stderr[-3000:]}", 0, done.returncode)
    return done.stdout


def proxy_gc_env(credentials: tuple[str, str] | None = None) -> dict[str, str]:
    store = {k: SETTINGS[k] for k in ("MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                      "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    return {**base_env(credentials), **store, "RUST_LOG": "warn"}


def run_orphan_gc(*args: str, credentials: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """The stack's own step: `mlflow-artifact-proxy gc`."""
    return subprocess.run([PROXY_BIN, "gc", *args], env=proxy_gc_env(credentials), capture_output=True, text=True,
                          timeout=900)


def orphan_gc(*args: str, credentials: tuple[str, str] | None = None) -> str:
    done = run_orphan_gc(*args, credentials=credentials)
    check_equal(f"exit code of mlflow-artifact-proxy gc {' '.join(args)}\n{done.stdout}\n{done.stderr}", 0,
                done.returncode)
    return done.stdout


def lines_starting(text: str, start: str) -> list[str]:
    """The lines that start with `start`, cut at the first `:` after it, sorted."""
    return sorted(line[len(start) :].split(":")[0] for line in text.splitlines() if line.startswith(start))
