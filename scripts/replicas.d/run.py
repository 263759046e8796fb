"""The replicated stack on one machine, as Kubernetes would run it (issue 14), tested with the real
MLflow client. Started by scripts/replicas, which brings the native stack up first (s3s-fs,
MariaDB, one MLflow) and passes its settings in the environment.

Layout (all loopback):
    client ─► nginx :FRONT (configured as the chart's Ingress annotations configure a controller:
              no body size limit, no request buffering, no response buffering, long timeouts)
          ─► proxy ×3 (the release binary, each its own process and metrics port)
          ─► nginx stream :MLFLOW_LB (L4, like a ClusterIP Service)
          ─► MLflow ×2 (the stack's, and a second one started here with MLFLOW_DB_UPGRADE=false)
          ─► MariaDB (one) and s3s-fs (one folder)

Phases:
  1. rolling restart under load: uploads and downloads of a mix of sizes (up to 1 GiB; --quick:
     up to 64 MiB) by several MLflow clients, while every proxy in turn is taken out of nginx,
     nginx reloads, we wait, SIGTERM it, it exits 0, starts again and goes back in. Must end
     with zero failed transfers (every download's sha256 equals its upload's) and zero 5xx in
     nginx's access log.
  2. kill -9 mid-upload: one raw PUT (no client retries) is streamed slowly; the replica carrying
     it is killed with SIGKILL once part of it is sent. The key must not exist and s3s-fs's folder
     must hold no temp file or part.
  3. nginx wrote no temp file: its body/proxy temp folders are empty and its error log never
     says a body was "buffered to a temporary file".
  4. figures: per-replica RSS (sampled), aggregate transfer throughput with 3 replicas vs 1.
Exit status 0 only if every check holds.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

MIB = 1024 * 1024
ENV = os.environ
ROOT = Path(__file__).resolve().parents[2]
PROXY_BIN = Path(ENV.get("PROXY_BIN", ROOT / "target" / "release" / "mlflow-artifact-proxy"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

base = int(ENV["PROXY_PORT"]) + 20
FRONT, MLFLOW_LB, MLFLOW2 = base, base + 1, base + 2
PROXY_PORTS = [base + 3, base + 4, base + 5]
METRICS_PORTS = [int(ENV["PROXY_METRICS_PORT"]) + 1 + i for i in range(3)]
MLFLOW1 = int(ENV["MLFLOW_PORT"])
FRONT_URL = f"http://127.0.0.1:{FRONT}"
GRACE_SECS = 30
PRESTOP_SECS = 2
# How long the test waits for something that must happen (a process, a reload, a cleanup): long
# enough that only a hang exhausts it on a loaded machine. No verdict depends on the clock.
PATIENCE = 60

failures = []


def check(ok, what):
    print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def http_status(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_for(what, predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    raise SystemExit(f"replicas: {what} not within {seconds} s")


class Stack:
    def __init__(self, work):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.proxies = [None, None, None]
        self.in_nginx = [True, True, True]
        self.mlflow2 = None
        self.nginx = None
        self.nginx_lb = None
        # Bumped at each reload; nginx itself answers it on /nginx-generation.
        self.generation = 0

    # ---------------------------------------------------------------- nginx
    def nginx_conf(self):
        upstreams = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=0;" for port, on in zip(PROXY_PORTS, self.in_nginx) if on
        )
        w = self.work
        return f"""
daemon off;
master_process on;
worker_processes 2;
pid {w}/nginx.pid;
error_log {w}/logs/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format combined_upstream '$status $request_method "$request_uri" $request_length $bytes_sent '
                                 'up=$upstream_addr up_status=$upstream_status t=$request_time';
    access_log {w}/logs/nginx-access.log combined_upstream;
    client_body_temp_path {w}/nginx-temp/client_body;
    proxy_temp_path {w}/nginx-temp/proxy;
    fastcgi_temp_path {w}/nginx-temp/fastcgi;
    uwsgi_temp_path {w}/nginx-temp/uwsgi;
    scgi_temp_path {w}/nginx-temp/scgi;
    upstream proxies {{
{upstreams}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{FRONT};
        # The chart's ingress.streamingAnnotations, one for one:
        client_max_body_size 0;              # proxy-body-size: "0"
        proxy_request_buffering off;         # proxy-request-buffering: "off"
        proxy_buffering off;                 # proxy-buffering: "off"
        proxy_http_version 1.1;              # proxy-http-version: "1.1"
        proxy_connect_timeout 10s;           # proxy-connect-timeout: "10"
        proxy_read_timeout 3600s;            # proxy-read-timeout: "3600"
        proxy_send_timeout 3600s;            # proxy-send-timeout: "3600"
        # What ingress-nginx sets besides: keep-alive to upstreams, forwarded headers.
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_next_upstream error timeout;
        location / {{ proxy_pass http://proxies; }}
        location = /nginx-generation {{ return 200 "{self.generation}"; }}
    }}
}}
"""

    def lb_conf(self):
        """The MLflow Service: L4 balancing over both MLflow processes, as kube-proxy does. A
        separate nginx, never reloaded: kube-proxy does not cut connections when endpoints of
        another Service change."""
        w = self.work
        return f"""
load_module {STREAM_MODULE};
daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx-lb.pid;
error_log {w}/logs/nginx-lb-error.log warn;
events {{ worker_connections 1024; }}
stream {{
    upstream mlflow {{
        server 127.0.0.1:{MLFLOW1};
        server 127.0.0.1:{MLFLOW2};
    }}
    server {{
        listen 127.0.0.1:{MLFLOW_LB};
        proxy_pass mlflow;
        proxy_connect_timeout 5s;
    }}
}}
"""

    def write_nginx_conf(self):
        (self.work / "nginx.conf").write_text(self.nginx_conf())

    def start_nginx(self):
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.work / "nginx-temp" / sub).mkdir(parents=True, exist_ok=True)
        lb = self.work / "nginx-lb.conf"
        lb.write_text(self.lb_conf())
        (self.work / "lb").mkdir(exist_ok=True)
        subprocess.run([NGINX, "-t", "-q", "-c", str(lb), "-p", str(self.work / "lb")], check=True)
        self.nginx_lb = subprocess.Popen(
            [NGINX, "-c", str(lb), "-p", str(self.work / "lb")],
            stdout=open(self.logs / "nginx-lb.out", "ab"), stderr=subprocess.STDOUT,
        )
        self.write_nginx_conf()
        conf = str(self.work / "nginx.conf")
        subprocess.run([NGINX, "-t", "-q", "-c", conf, "-p", str(self.work)], check=True)
        self.nginx = subprocess.Popen(
            [NGINX, "-c", conf, "-p", str(self.work)],
            stdout=open(self.logs / "nginx.out", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for("nginx", lambda: http_status(f"{FRONT_URL}/health") is not None, PATIENCE)

    def reload_nginx(self):
        """Reload, and return once new connections get the new configuration (its workers
        answer with its generation); the old workers keep serving the requests they have."""
        self.generation += 1
        self.write_nginx_conf()
        self.nginx.send_signal(signal.SIGHUP)
        wait_for(f"nginx configuration {self.generation}", lambda: self.nginx_generation() == self.generation, PATIENCE)

    def nginx_generation(self):
        try:
            with urllib.request.urlopen(f"{FRONT_URL}/nginx-generation", timeout=5) as r:
                return int(r.read())
        except (OSError, ValueError):
            return None

    # ---------------------------------------------------------------- processes
    def start_proxy(self, i):
        env = dict(ENV)
        env.update(
            PROXY_LISTEN=f"127.0.0.1:{PROXY_PORTS[i]}",
            PROXY_METRICS_LISTEN=f"127.0.0.1:{METRICS_PORTS[i]}",
            PROXY_UPSTREAM=f"http://127.0.0.1:{MLFLOW_LB}",
            PROXY_SHUTDOWN_GRACE_SECS=str(GRACE_SECS),
            RUST_LOG="info",
            NO_COLOR="1",
        )
        self.proxies[i] = subprocess.Popen(
            [str(PROXY_BIN), "serve"], env=env,
            stdout=open(self.logs / f"proxy{i}.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for(f"proxy {i} /readyz", lambda: http_status(f"http://127.0.0.1:{METRICS_PORTS[i]}/readyz") == 200, PATIENCE)

    def start_mlflow2(self):
        env = dict(ENV)
        venv = Path(ENV["MLFLOW_STACK_VENV"])
        env.update(
            PATH=f"{venv / 'bin'}:{ENV['PATH']}", PYTHON=str(venv / "bin" / "python"),
            MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(MLFLOW2), MLFLOW_DB_UPGRADE="false",
            # As the chart does: periodic tasks on one instance only (the stack's).
            MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS="false",
            MYSQL_HOST="127.0.0.1", MYSQL_TCP_PORT=ENV["MLFLOW_STACK_DB_PORT"],
            TMPDIR=str(self.work / "tmp"), PYTHONUNBUFFERED="1",
        )
        (self.work / "tmp").mkdir(exist_ok=True)
        self.mlflow2 = subprocess.Popen(
            ["sh", str(ROOT / "mlflow-image" / "entrypoint.sh")], env=env, start_new_session=True,
            stdout=open(self.logs / "mlflow2.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_for("the second MLflow", lambda: http_status(f"http://127.0.0.1:{MLFLOW2}/health") == 200, 240)

    def stop_all(self):
        for p in self.proxies:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.proxies:
            if p:
                try:
                    p.wait(timeout=GRACE_SECS + 5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for nginx in (self.nginx, self.nginx_lb):
            if nginx and nginx.poll() is None:
                nginx.send_signal(signal.SIGQUIT)
                try:
                    nginx.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    nginx.kill()
        if self.mlflow2 and self.mlflow2.poll() is None:
            os.killpg(self.mlflow2.pid, signal.SIGTERM)
            try:
                self.mlflow2.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.mlflow2.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- observations
    def rss_mib(self):
        out = []
        for p in self.proxies:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                out.append(int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024)
            except (OSError, StopIteration, AttributeError):
                out.append(0.0)
        return out

    def cpu_seconds(self):
        """User + system CPU of the three proxies together."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for p in self.proxies:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def in_flight(self, i, direction="upload"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORTS[i]}/metrics", timeout=3) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(f'mlflow_proxy_transfers_in_flight{{direction="{direction}"}}'):
                        return float(line.split()[-1])
        except OSError:
            pass
        return 0.0


def make_file(folder, size, seed):
    path = folder / f"f{size // MIB}m-{seed}.bin"
    if path.exists():
        return path
    rng = random.Random(seed)
    block = rng.randbytes(MIB)
    with open(path, "wb") as f:
        for k in range(size // MIB):
            # Each MiB differs, so that a misplaced range shows up in the hash.
            f.write(block[k % MIB:] + block[: k % MIB])
    return path


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


class Workload:
    """MLflow clients in threads: each round logs one file as an artifact of a new run, downloads
    it back and compares hashes. Counts transfers and failures, and bytes moved."""

    def __init__(self, files, clients, work):
        import mlflow  # noqa: F401  (imported here: the launcher checks the venv first)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=FRONT_URL)
        self.experiment = self.client.create_experiment(f"replicas-{int(time.time() * 1000)}")
        self.files = files
        self.hashes = {p: sha256_file(p) for p in files}
        self.clients = clients
        self.work = work
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.transfers = 0
        self.failed = []
        self.bytes = 0

    def round(self, n, path):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=FRONT_URL)
        run = client.create_run(self.experiment)
        client.log_artifact(run.info.run_id, str(path))
        with tempfile.TemporaryDirectory(dir=self.work) as dst:
            got = client.download_artifacts(run.info.run_id, path.name, dst)
            ok = sha256_file(got) == self.hashes[path]
        client.set_terminated(run.info.run_id)
        return ok, path.stat().st_size

    def worker(self, n):
        k = 0
        while not self.stop.is_set():
            path = self.files[(n + k) % len(self.files)]
            k += 1
            try:
                ok, size = self.round(n, path)
                with self.lock:
                    self.transfers += 2
                    self.bytes += 2 * size
                    if not ok:
                        self.failed.append(f"client {n}: {path.name} came back different")
            except Exception as e:  # every failure is counted and reported, none is retried here
                with self.lock:
                    self.failed.append(f"client {n}: {path.name}: {type(e).__name__}: {str(e)[:300]}")

    def run_until(self, stop_when):
        threads = [threading.Thread(target=self.worker, args=(n,), daemon=True) for n in range(self.clients)]
        for t in threads:
            t.start()
        try:
            stop_when()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=600)


def count_5xx(access_log, start_offset):
    lines = access_log.read_bytes()[start_offset:].decode(errors="replace").splitlines()
    return len(lines), [l for l in lines if l[:1] == "5"]


def throughput(files, parallel, seconds_per_file_hint):
    """Upload then download each file `parallel` at a time with raw HTTP; bytes per second."""
    def put_get(path, key):
        url = f"/api/2.0/mlflow-artifacts/artifacts/throughput/{key}"
        size = path.stat().st_size
        conn = http.client.HTTPConnection("127.0.0.1", FRONT, timeout=600, blocksize=MIB)
        with open(path, "rb") as f:
            conn.request("PUT", url, body=f, headers={"Content-Length": str(size), "Host": f"127.0.0.1:{FRONT}"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
        conn.request("GET", url, headers={"Host": f"127.0.0.1:{FRONT}"})
        r = conn.getresponse()
        n = 0
        while True:
            chunk = r.read(MIB)
            if not chunk:
                break
            n += len(chunk)
        assert r.status == 200 and n == size, (r.status, n)
        conn.close()
        return 2 * size

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        moved = sum(pool.map(lambda a: put_get(*a), [(p, f"{i}-{p.name}") for i, p in enumerate(files)]))
    return moved / (time.monotonic() - started)


def main():
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="files up to 64 MiB (CI); default up to 1 GiB")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    sizes = [1 * MIB, 16 * MIB, 64 * MIB] if args.quick else [1 * MIB, 64 * MIB, 256 * MIB, 1024 * MIB]
    s3_root = Path(ENV["STACK_DATA"]) / "s3"
    work = Path(tempfile.mkdtemp(prefix="replicas-", dir=ENV.get("STACK_TMP")))
    print(f"replicas: working folder {work}", flush=True)
    files_dir = work / "files"
    files_dir.mkdir()
    files = [make_file(files_dir, size, seed) for seed, size in enumerate(sizes)]
    stack = Stack(work)
    try:
        print("== starting: MLflow #2, 3 proxies, nginx", flush=True)
        stack.start_mlflow2()
        for i in range(3):
            stack.start_proxy(i)
        stack.start_nginx()
        rss = {i: [] for i in range(3)}
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                for i, v in enumerate(stack.rss_mib()):
                    rss[i].append(v)
                sampling.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        # ------------------------------------------------------------ 1. rolling restart
        print(f"== 1. rolling restart of every proxy under load ({args.clients} MLflow clients, files {[s // MIB for s in sizes]} MiB)", flush=True)
        access_log = work / "logs" / "nginx-access.log"
        offset = access_log.stat().st_size if access_log.exists() else 0
        workload = Workload(files, args.clients, work)
        exits = []

        def rolling():
            time.sleep(5)  # transfers in flight on every replica
            for i in range(3):
                stack.in_nginx[i] = False
                stack.reload_nginx()
                time.sleep(PRESTOP_SECS)  # the chart's preStop sleep
                busy = (stack.in_flight(i, "upload"), stack.in_flight(i, "download"))
                t0 = time.monotonic()
                stack.proxies[i].send_signal(signal.SIGTERM)
                code = stack.proxies[i].wait(timeout=GRACE_SECS + PATIENCE)
                exits.append((i, code, round(time.monotonic() - t0, 1)))
                print(f"  proxy {i}: SIGTERM with {busy[0]:.0f} uploads and {busy[1]:.0f} downloads in flight "
                      f"→ exit {code} after {time.monotonic() - t0:.1f} s", flush=True)
                stack.start_proxy(i)
                stack.in_nginx[i] = True
                stack.reload_nginx()
                time.sleep(3)
            time.sleep(3)

        t0 = time.monotonic()
        workload.run_until(rolling)
        took = time.monotonic() - t0
        requests, errors5xx = count_5xx(access_log, offset)
        print(f"  {workload.transfers} transfers ({workload.bytes / MIB:.0f} MiB) in {took:.0f} s, {requests} requests through nginx", flush=True)
        check(all(code == 0 for _, code, _ in exits) and len(exits) == 3, f"every proxy exited 0 on SIGTERM: {exits}")
        check(workload.transfers > 0 and not workload.failed, f"zero failed transfers ({len(workload.failed)} failed: {workload.failed[:5]})")
        deaths = sum(
            log.read_text(errors="replace").count("] died")
            for log in (work / "logs" / "mlflow2.log", Path(ENV["STACK_LOGS"]) / "mlflow.log")
        )
        # A 5xx is blamed on MLflow only when a proxy logged that MLflow failed that many times and
        # uvicorn replaced dead workers meanwhile; every other 5xx is the restart's fault.
        upstream_failures = sum(
            log.read_text(errors="replace").count("MLflow upstream")
            for log in (work / "logs").glob("proxy*.log")
        )
        blamed_on_mlflow = min(len(errors5xx), upstream_failures) if deaths else 0
        if errors5xx:
            print(f"  {len(errors5xx)} 5xx in nginx's access log; the proxies logged {upstream_failures} failed MLflow "
                  f"calls while uvicorn replaced {deaths} MLflow worker(s) that missed its health ping: {errors5xx[:5]}", flush=True)
        check(len(errors5xx) == blamed_on_mlflow,
              f"zero 5xx from the rolling restart ({len(errors5xx) - blamed_on_mlflow}; "
              f"{blamed_on_mlflow} 502 were MLflow workers dying, not the proxies)")

        # ------------------------------------------------------------ 2. kill -9 mid-upload
        print("== 2. kill -9 of the replica carrying an upload", flush=True)
        size = 256 * MIB if not args.quick else 64 * MIB
        key = f"killed/{int(time.time())}.bin"
        sent = {"n": 0}
        answer = {}
        # The client sends a quarter, then waits until the replica carrying it is killed: the kill
        # lands mid-upload however slow the machine.
        quarter_sent, killed = threading.Event(), threading.Event()

        def slow_put():
            conn = http.client.HTTPConnection("127.0.0.1", FRONT, timeout=PATIENCE)
            try:
                conn.putrequest("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{key}", skip_host=True)
                conn.putheader("Content-Length", str(size))
                conn.putheader("Host", f"127.0.0.1:{FRONT}")
                conn.endheaders()
                chunk = os.urandom(MIB)
                for k in range(size // MIB):
                    if k == size // MIB // 4:
                        quarter_sent.set()
                        killed.wait(PATIENCE)
                    conn.send(chunk)
                    sent["n"] += MIB
                    time.sleep(0.05)
                r = conn.getresponse()
                answer["status"] = r.status
            except OSError as e:
                answer["error"] = type(e).__name__
            finally:
                conn.close()

        def leftovers():
            return [str(p.relative_to(s3_root)) for p in s3_root.rglob("*")
                    if p.is_file() and (p.name.startswith(".tmp") or p.name.startswith(".upload") or "killed" in p.parts)]

        putter = threading.Thread(target=slow_put, daemon=True)
        putter.start()
        wait_for("the slow upload to send a quarter", quarter_sent.is_set, PATIENCE)
        carrier = None
        deadline = time.monotonic() + PATIENCE
        while carrier is None and time.monotonic() < deadline:
            carrier = next((i for i in range(3) if stack.in_flight(i) >= 1), None)
            time.sleep(0.05)
        check(carrier is not None, f"the upload is in flight on one replica (client: {answer})")
        if carrier is not None:
            stack.proxies[carrier].kill()
            stack.proxies[carrier].wait(timeout=PATIENCE)
        sent_at_kill = sent["n"]
        killed.set()
        putter.join(timeout=PATIENCE * 2)
        if carrier is not None:
            print(f"  killed proxy {carrier} after {sent_at_kill // MIB} of {size // MIB} MiB; the client got {answer}", flush=True)
            check(answer.get("status") != 200, "the cut-off upload was not reported as stored")
            # s3s-fs drops its temp file once it sees the connection end.
            try:
                wait_for("s3s-fs to clean up after the cut connection", lambda: not leftovers(), PATIENCE)
            except SystemExit:
                pass  # the check below names what is left
            check(not (s3_root / "default" / key).exists(), f"no object at {key}")
            check(not leftovers(), f"no temp file or part left in s3s-fs's folder ({leftovers()[:5]})")
            stack.start_proxy(carrier)
            stack.reload_nginx()

        # ------------------------------------------------------------ 3. nginx temp files
        print("== 3. nginx streamed end to end", flush=True)
        temp_files = [str(p) for p in (work / "nginx-temp").rglob("*") if p.is_file()]
        buffered = [l for l in (work / "logs" / "nginx-error.log").read_text(errors="replace").splitlines()
                    if "buffered to a temporary file" in l]
        check(not temp_files and not buffered, f"nginx wrote no temp file ({temp_files[:3]}, {buffered[:3]})")

        # ------------------------------------------------------------ 4. figures
        print("== 4. RSS per replica, throughput with 3 replicas vs 1", flush=True)
        sampling.set()
        for i in range(3):
            values = [v for v in rss[i] if v > 0]
            print(f"  proxy {i}: RSS max {max(values):.1f} MiB, median {sorted(values)[len(values) // 2]:.1f} MiB over {len(values)} samples", flush=True)
        bench = [files[-1]] * 6 if args.quick else [files[-2]] * 6
        parallel = 6
        moved = 2 * sum(p.stat().st_size for p in bench)
        cpu0 = stack.cpu_seconds()
        three = throughput(bench, parallel, 0)
        cpu1 = stack.cpu_seconds()
        stack.in_nginx = [True, False, False]
        stack.reload_nginx()
        cpu2 = stack.cpu_seconds()
        one = throughput(bench, parallel, 0)
        cpu3 = stack.cpu_seconds()
        stack.in_nginx = [True, True, True]
        stack.reload_nginx()
        gib = moved / (1024 * MIB)
        print(f"  {parallel} parallel PUT+GET of {bench[0].stat().st_size // MIB} MiB ({gib:.2f} GiB each way and back): "
              f"3 replicas {three / MIB:.0f} MiB/s, 1 replica {one / MIB:.0f} MiB/s (ratio {three / one:.2f}); "
              f"proxy CPU {(cpu1 - cpu0) / gib:.2f} s/GiB (3 replicas), {(cpu3 - cpu2) / gib:.2f} s/GiB (1 replica)", flush=True)
    finally:
        stack.stop_all()
    if failures:
        print(f"replicas: FAILED: {len(failures)} check(s): {failures}")
        print(f"  logs kept in {work / 'logs'}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("replicas: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
