"""The chart's own environment, run for real (issue 20): `helm template` renders the chart, and the
environments of its containers (the proxy Deployment, the MLflow Deployment, the ensure-bucket and
db-upgrade Jobs) are applied, unchanged, to processes on this machine: the release proxy binary, stock
MLflow through mlflow-image/entrypoint.sh (the image's entrypoint) with the Deployment's arguments,
s3s-fs as the S3 store. Values: ci/defaults-values.yaml, the S3 endpoint, the ensure-bucket Job on,
one MLflow worker, and auth.enabled for the second case. The real MLflow client then logs and downloads an artifact through the proxy
as a user behind the Ingress would (Host: the ingress host), with and without MLflow's auth app
(auth.enabled).

Runs inside a network and mount namespace of its own (scripts/chart-run starts it with `unshare`), so
that the rendered addresses hold as they are: the proxy listens on 0.0.0.0:5000 and 0.0.0.0:9464, MLflow
on 0.0.0.0:5001, and the Service names (`mls-mlflow-stack-mlflow`, the S3 host, the ingress host)
resolve to 127.0.0.1 through an /etc/hosts bind-mounted in that namespace only. Nothing is reachable
from outside it.

What is substituted, and only that: secretKeyRef values (test credentials, a SQLite backend and auth
store), the pods' emptyDir paths (HOME, TMPDIR: temporary folders), PATH (the venv), and the S3
endpoint value (http://s3.chart-test:9000, an s3s-fs process). Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = os.environ
RELEASE, NAMESPACE = "mls", "ml"
FULLNAME = f"{RELEASE}-mlflow-stack"
S3_HOST = "s3.chart-test"
INGRESS_HOST = "mlflow.example.com"
ACCESS_KEY, SECRET_KEY = "chart-test-access-key", "chart-test-secret-key"
ADMIN_PASSWORD = "chart-test-admin-password-1"

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def render(helm: str, chart: Path, auth: bool) -> list[dict]:
    args = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", "1.30.0",
            "-f", str(chart / "ci" / "defaults-values.yaml"),
            "--set", f"s3.MLFLOW_S3_ENDPOINT_URL=http://{S3_HOST}:9000", "--set", "s3.ensureBucket.enabled=true",
            # One uvicorn worker: a sizing value, not part of what is tested, and four workers on a
            # loaded 2-core machine miss uvicorn's health pings.
            "--set", "mlflow.workers=1"]
    if auth:
        args += ["--set", "auth.enabled=true"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.exit(f"helm template failed:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def container(docs: list[dict], kind: str, name: str) -> dict:
    (owner,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return owner["spec"]["template"]["spec"]["containers"][0]


def resolve(c: dict, secret: dict[str, str], work: Path) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with the test Secret."""
    env = {"PATH": f"{Path(ENV['MLFLOW_STACK_VENV']) / 'bin'}:{ENV['PATH']}", "LANG": "C.UTF-8"}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mlflow-credentials", ref
            env[e["name"]] = secret[ref["key"]]
    # The pod's emptyDirs (HOME, /tmp) are folders of this run.
    for var in ("HOME", "TMPDIR"):
        if var in env:
            folder = work / f"{c['name']}-{var.lower()}"
            folder.mkdir(exist_ok=True)
            env[var] = str(folder)
    return env


def wait_for(what: str, predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.5)


def http_get(port: int, path: str, host: str = "127.0.0.1", headers: dict | None = None) -> tuple[int, bytes]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        answer = conn.getresponse()
        return answer.status, answer.read()
    except OSError:
        return 0, b""


class Run:
    def __init__(self, work: Path, logs: Path):
        self.work, self.logs, self.procs = work, logs, []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def case(helm: str, chart: Path, auth: bool, tmp: Path, args) -> None:
    label = "with MLflow's auth app" if auth else "without MLflow's auth app"
    print(f"\n== the chart's environment, {label}", flush=True)
    work = tmp / ("auth" if auth else "noauth")
    logs = work / "logs"
    logs.mkdir(parents=True)
    docs = render(helm, chart, auth)
    secret = {
        "backend-store-uri": f"sqlite:///{work}/mlflow.db",
        "aws-access-key-id": ACCESS_KEY,
        "aws-secret-access-key": SECRET_KEY,
        "proxy-signing-key": secrets.token_hex(32),
        "mlflow-auth-database-uri": f"sqlite:///{work}/basic_auth.db",
        "mlflow-auth-admin-password": ADMIN_PASSWORD,
        "mlflow-flask-secret-key": secrets.token_hex(32),
    }
    proxy_c = container(docs, "Deployment", FULLNAME)
    mlflow_c = container(docs, "Deployment", f"{FULLNAME}-mlflow")
    bucket_c = container(docs, "Job", f"{FULLNAME}-ensure-bucket")
    upgrade_c = container(docs, "Job", f"{FULLNAME}-db-upgrade")
    proxy_env, mlflow_env = resolve(proxy_c, secret, work), resolve(mlflow_c, secret, work)
    print(f"   proxy: PROXY_UPSTREAM={proxy_env['PROXY_UPSTREAM']} MLFLOW_AUTH={proxy_env.get('MLFLOW_AUTH')!r} "
          f"PROXY_MLFLOW_AUTH={proxy_env.get('PROXY_MLFLOW_AUTH')!r}", flush=True)
    print(f"   MLFLOW_SERVER_ALLOWED_HOSTS={mlflow_env['MLFLOW_SERVER_ALLOWED_HOSTS']}", flush=True)
    run = Run(work, logs)
    try:
        (work / "s3").mkdir()
        run.start("s3", [args.s3s_fs, "--host", "127.0.0.1", "--port", "9000", "--access-key", ACCESS_KEY,
                         "--secret-key", SECRET_KEY, str(work / "s3")], {"PATH": ENV["PATH"]})
        wait_for("s3s-fs", lambda: http_get(9000, "/")[0] != 0, 30)
        done = subprocess.run([args.proxy_bin, *bucket_c["args"]], env=resolve(bucket_c, secret, work),
                              capture_output=True, text=True, timeout=120)
        check(done.returncode == 0, f"the ensure-bucket Job's command and environment: {done.stdout.strip()}"
              f"{done.stderr.strip()[-300:]}")
        done = subprocess.run(upgrade_c["command"], env=resolve(upgrade_c, secret, work), capture_output=True,
                              text=True, timeout=600)
        check(done.returncode == 0, f"the db-upgrade Job's command ({' '.join(upgrade_c['command'])})"
              f"{'' if done.returncode == 0 else done.stderr[-500:]}")
        mlflow_env["PYTHON"] = str(Path(ENV["MLFLOW_STACK_VENV"]) / "bin" / "python")
        run.start("mlflow", ["sh", str(ROOT / "mlflow-image" / "entrypoint.sh"), *mlflow_c["args"]], mlflow_env)
        # The kubelet's probe, as rendered (Host: the Service name).
        probe = mlflow_c["readinessProbe"]["httpGet"]
        probe_host = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}.get("Host", "127.0.0.1")
        wait_for("MLflow's readiness probe", lambda: http_get(5001, probe["path"], probe_host)[0] == 200, 300)
        run.start("proxy", [args.proxy_bin, *proxy_c["args"]], proxy_env)
        ready = proxy_c["readinessProbe"]["httpGet"]
        wait_for("the proxy's listener", lambda: http_get(9464, "/healthz")[0] == 200, 30)
        # /readyz once the first auth check has ended (it is 503 until then).
        deadline = time.monotonic() + 60
        status, body = http_get(9464, ready["path"])
        while b"not checked yet" in body and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = http_get(9464, ready["path"])
        check(status == 200, f"the proxy's readiness probe ({ready['path']}): {status} {body.decode().strip()}")
        client(auth, work)
        if auth:
            status, _ = http_get(5000, "/api/2.0/mlflow-artifacts/artifacts/0/x.txt", INGRESS_HOST)
            check(status == 401, f"an artifact GET without credentials: {status} (MLflow's 401)")
    finally:
        run.stop()
        if failures:
            for name in ("proxy", "mlflow"):
                text = (logs / f"{name}.log").read_text(errors="replace") if (logs / f"{name}.log").exists() else ""
                print(f"--- last lines of {name}.log\n" + "\n".join(text.splitlines()[-15:]), flush=True)


def client(auth: bool, work: Path) -> None:
    """The real MLflow client, as a user behind the Ingress: http://<ingress host>:5000."""
    env = {k: v for k, v in ENV.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(MLFLOW_TRACKING_URI=f"http://{INGRESS_HOST}:5000", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               CHART_RUN_WORK=str(work))
    if auth:
        env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    script = r"""
import hashlib, os, mlflow
work = os.environ["CHART_RUN_WORK"]
data = os.urandom(3 * 1024 * 1024 + 11)
src = os.path.join(work, "model.bin")
open(src, "wb").write(data)
with mlflow.start_run() as run:
    mlflow.log_artifact(src, "weights")
back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="weights/model.bin",
                                           dst_path=os.path.join(work, "download"))
print("SHA256", hashlib.sha256(data).hexdigest(), hashlib.sha256(open(back, "rb").read()).hexdigest())
"""
    done = subprocess.run([str(Path(ENV["MLFLOW_STACK_VENV"]) / "bin" / "python"), "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    # (MLflow prints its own lines on stdout too.)
    hashes = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("SHA256 ")]
    ok = done.returncode == 0 and len(hashes) == 1 and hashes[0][0] == hashes[0][1]
    check(ok, "the MLflow client logs a 3 MiB artifact through the proxy and downloads it, sha256 equal"
          + ("" if ok else f": exit {done.returncode}, {done.stdout.strip()[-300:]} {done.stderr.strip()[-800:]}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm", required=True)
    parser.add_argument("--chart", default=str(ROOT / "charts" / "mlflow-stack"))
    parser.add_argument("--proxy-bin", default=str(ROOT / "target" / "release" / "mlflow-artifact-proxy"))
    parser.add_argument("--s3s-fs", required=True)
    parser.add_argument("--cases", default="noauth,auth", help="noauth, auth or both (comma-separated)")
    args = parser.parse_args()
    # This namespace's own loopback and /etc/hosts (see the module's docstring).
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="chart-run."))
    hosts = tmp / "hosts"
    names = [f"{FULLNAME}-mlflow", FULLNAME, S3_HOST, INGRESS_HOST]
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in names))
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    try:
        for name in args.cases.split(","):
            case(args.helm, Path(args.chart), name == "auth", tmp, args)
    finally:
        if not failures and not ENV.get("CHART_RUN_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"work folder kept: {tmp}")
    print(f"\n{'passed' if not failures else 'FAILED'}: {len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
