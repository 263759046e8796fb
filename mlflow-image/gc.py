"""`mlflow gc` as this stack runs it (compose's gc service, the chart's gc CronJob, scripts/e2e).

MLflow's own command, unchanged: it permanently deletes runs, logged models and experiments in the
`deleted` lifecycle stage from the database, and their artifacts through the proxy's DELETE route
(MLFLOW_TRACKING_URI must be the proxy: the runs' artifact URIs are mlflow-artifacts:/...). This
wrapper only adds what the job's log should say: what each DELETE freed, as the proxy answers it
(x-mlflow-proxy-deleted-objects/-bytes), and a total. What `mlflow gc` cannot reach (deleted traces,
the logged models and traces of a deleted experiment) is for `mlflow-artifact-proxy gc` (docs/gc.md).

    python gc.py [mlflow gc options]        e.g. --older-than 30d, --run-ids a,b

Variables: MLFLOW_TRACKING_URI (required: the proxy, e.g. http://proxy:5000); BACKEND_STORE_URI, or
the MYSQL_* variables entrypoint.sh reads (MYSQL_HOST mysql, MYSQL_TCP_PORT 3306, MYSQL_USER,
MYSQL_PASSWORD, MYSQL_DATABASE); GC_OLDER_THAN (used when no --older-than is given);
MLFLOW_TRACKING_USERNAME/PASSWORD (an admin, when MLflow runs its auth app);
MLFLOW_HTTP_REQUEST_TIMEOUT (3600 here: one DELETE frees a whole run, however many files it has).
"""

from __future__ import annotations

import os
import sys
from urllib.parse import quote, urlsplit, urlunsplit

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "3600")

DELETED_OBJECTS = "x-mlflow-proxy-deleted-objects"
DELETED_BYTES = "x-mlflow-proxy-deleted-bytes"
ARTIFACTS_ROUTE = "/mlflow-artifacts/artifacts/"


def say(message: str) -> None:
    print(f"mlflow-gc: {message}", flush=True)


def backend_store_uri() -> str:
    """BACKEND_STORE_URI, else built from the MYSQL_* variables as entrypoint.sh builds it."""
    uri = os.environ.get("BACKEND_STORE_URI")
    if uri:
        return uri
    user = quote(os.environ.get("MYSQL_USER", "mlflowuser"), safe="")
    password = quote(os.environ.get("MYSQL_PASSWORD", "mlflowpassword"), safe="")
    host = os.environ.get("MYSQL_HOST", "mysql")
    port = os.environ.get("MYSQL_TCP_PORT", "3306")
    database = os.environ.get("MYSQL_DATABASE", "mlflowdb")
    return f"mysql://{user}:{password}@{host}:{port}/{database}"


def without_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def human(size: int) -> str:
    value, unit = float(size), 0
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {units[unit]}"


class Freed:
    """What the DELETE calls of this run freed, as the proxy reported it."""

    def __init__(self) -> None:
        self.calls = 0
        self.objects = 0
        self.bytes = 0
        self.unreported = 0

    def record(self, url: str, response) -> None:
        self.calls += 1
        path = url.split(ARTIFACTS_ROUTE, 1)[-1].strip("/")
        objects = response.headers.get(DELETED_OBJECTS)
        size = response.headers.get(DELETED_BYTES)
        if response.status_code != 200:
            return
        if objects is None or size is None:
            self.unreported += 1
            say(f"deleted {path} (the artifact server did not say what it freed)")
            return
        self.objects += int(objects)
        self.bytes += int(size)
        say(f"freed {path}: {objects} objects, {size} bytes ({human(int(size))})")

    def summary(self) -> str:
        text = f"{self.calls} artifact deletions freed {self.objects} objects, {self.bytes} bytes ({human(self.bytes)})"
        if self.unreported:
            text += f"; {self.unreported} answered without saying what they freed (not the proxy?)"
        return text


def observe_deletes(freed: Freed) -> None:
    """Count the DELETE answers MLflow's artifact client receives; changes nothing it does."""
    try:
        from mlflow.store.artifact import http_artifact_repo

        send = http_artifact_repo.http_request
    except (ImportError, AttributeError) as e:  # another MLflow layout: gc still runs
        say(f"cannot count what the deletions free with this MLflow ({e!r})")
        return

    def observed(host_creds, endpoint, method, *args, **kwargs):
        response = send(host_creds, endpoint, method, *args, **kwargs)
        if method == "DELETE":
            freed.record(host_creds.host.rstrip("/") + endpoint, response)
        return response

    http_artifact_repo.http_request = observed


def main(argv: list[str]) -> int:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        say("MLFLOW_TRACKING_URI must be set to the proxy (e.g. http://proxy:5000): artifacts are deleted through it")
        return 2
    args = list(argv)
    if not any(a == "--backend-store-uri" or a.startswith("--backend-store-uri=") for a in args):
        args = ["--backend-store-uri", backend_store_uri(), *args]
    older_than = os.environ.get("GC_OLDER_THAN")
    if older_than and not any(a == "--older-than" or a.startswith("--older-than=") for a in args):
        args += ["--older-than", older_than]
    shown = [without_password(a) for a in args]
    say(f"mlflow gc {' '.join(shown)} (artifacts through {os.environ['MLFLOW_TRACKING_URI']})")

    from mlflow.cli import cli

    freed = Freed()
    observe_deletes(freed)
    code = 0
    try:
        cli.main(args=["gc", *args], prog_name="mlflow", standalone_mode=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # MLflow's own error and traceback follow the summary
        say("FAILED: " + freed.summary())
        raise
    say(("done: " if code == 0 else f"FAILED (exit {code}): ") + freed.summary())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
