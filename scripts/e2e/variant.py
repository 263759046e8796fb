"""A second stock MLflow, and a proxy in front of it, beside the stack: for the settings the stack's own
MLflow does not run with (workspaces, presigned-only), so that testing them costs no restart of the stack.

It is the stack's MLflow in every other respect: the same version (the stack's venv), the same launch
command (mlflow-image/entrypoint.sh), the same S3 store, on ports of its own (the stack's proxy port + 30
and + 31, metrics port + 30), and the stack's backend database (already migrated: no `mlflow db upgrade`),
except with workspaces: experiments in a workspace would stop the stack's MLflow, which runs without
them, from starting again ("Cannot disable workspaces because experiments exist outside the default
workspace"), so that variant keeps a SQLite database of its own in the stack's data folder (migrated on
first use, reused after). With its auth app it has a user store of its own (a fresh SQLite file, with
the stack's admin). One variant runs
at a time; `variant(...)` (a session fixture, conftest.py) starts the one asked for and stops the last one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from e2e_util import LOGS, ROOT, SETTINGS, http_get, store_env

_PROXY_PORT = int(SETTINGS["PROXY_URL"].rsplit(":", 1)[1]) + 30
_MLFLOW_PORT = _PROXY_PORT + 1
_METRICS_PORT = int(SETTINGS["METRICS_URL"].rsplit(":", 1)[1]) + 30


@dataclass(frozen=True)
class Setting:
    workspaces: bool = False
    presigned_only: bool = False
    auth: bool = False

    def label(self) -> str:
        on = [n for n in ("workspaces", "presigned_only", "auth") if getattr(self, n)]
        return "-".join(on) or "plain"


class Variant:
    def __init__(self, setting: Setting):
        self.setting = setting
        self.proxy_url = f"http://127.0.0.1:{_PROXY_PORT}"
        self.mlflow_url = f"http://127.0.0.1:{_MLFLOW_PORT}"
        self.metrics_url = f"http://127.0.0.1:{_METRICS_PORT}"
        self._work = Path(tempfile.mkdtemp(prefix=f"e2e-variant-{setting.label()}-"))
        # MLflow's TMPDIR (where stock spools the downloads it serves) and its log (access lines).
        self.tmp = self._work
        self.mlflow_log = LOGS / f"variant-{setting.label()}-mlflow.log"
        self._mlflow: subprocess.Popen | None = None
        self._proxy: subprocess.Popen | None = None

    def _common_env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(store_env(), MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
        return env

    def start(self) -> Variant:
        s = self.setting
        venv = Path(SETTINGS["STACK_VENV"])
        backend = SETTINGS["STACK_BACKEND_STORE_URI"]
        if s.workspaces:
            db = Path(SETTINGS["STACK_DATA"]) / f"variant-workspaces-{SETTINGS['STACK_MLFLOW_VERSION']}.db"
            backend = f"sqlite:///{db}"
        env = self._common_env()
        env.update(
            PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            PYTHON=str(venv / "bin" / "python"),
            PYTHONUNBUFFERED="1",
            TMPDIR=str(self._work),
            MLFLOW_HOST="127.0.0.1",
            MLFLOW_PORT=str(_MLFLOW_PORT),
            BACKEND_STORE_URI=backend,
            MLFLOW_DB_UPGRADE=str(s.workspaces).lower(),
            # Periodic jobs stay with the stack's MLflow (as the chart runs replicas).
            MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS="false",
            MLFLOW_ENABLE_WORKSPACES=str(s.workspaces).lower(),
            MLFLOW_ARTIFACTS_PRESIGNED_ONLY=str(s.presigned_only).lower(),
            MLFLOW_AUTH=str(s.auth).lower(),
            MLFLOW_AUTH_ADMIN_USERNAME=SETTINGS["MLFLOW_AUTH_ADMIN_USERNAME"],
            MLFLOW_AUTH_ADMIN_PASSWORD=SETTINGS["MLFLOW_AUTH_ADMIN_PASSWORD"],
            MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{self._work / 'auth.db'}",
        )
        log = open(self.mlflow_log, "ab")
        self._mlflow = subprocess.Popen(
            # uvicorn restarts a worker that misses a 5 s health check; on a loaded test machine that
            # drops requests in flight, which says nothing about the proxy.
            ["sh", str(ROOT / "mlflow-image" / "entrypoint.sh"), "--uvicorn-opts", "--timeout-worker-healthcheck 60"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait("MLflow", f"{self.mlflow_url}/health", self._mlflow, 300)
        env = self._common_env()
        env.update(
            PROXY_LISTEN=f"127.0.0.1:{_PROXY_PORT}",
            PROXY_METRICS_LISTEN=f"127.0.0.1:{_METRICS_PORT}",
            PROXY_UPSTREAM=self.mlflow_url,
            PROXY_SIGNING_KEY_FILE=SETTINGS["PROXY_SIGNING_KEY_FILE"],
            RUST_LOG="info",
            NO_COLOR="1",
        )
        log = open(LOGS / f"variant-{s.label()}-proxy.log", "ab")
        self._proxy = subprocess.Popen(
            [SETTINGS["PROXY_BIN"], "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait("proxy", f"{self.metrics_url}/readyz?deep=1", self._proxy, 60)
        return self

    def _wait(self, what: str, url: str, process: subprocess.Popen, seconds: int) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.stop()
                raise AssertionError(f"the variant's {what} exited ({process.returncode}); see {LOGS}")
            try:
                if http_get(url, timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"the variant's {what} did not answer {url} within {seconds} s; see {LOGS}")

    def stop(self) -> None:
        for process in (self._proxy, self._mlflow):
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", str(self._work)], check=False)
