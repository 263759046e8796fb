"""Helpers shared by the end-to-end tests: stack settings, raw HTTP, hashing, log and temp-dir watching."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pprint
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]


def stack_settings() -> dict[str, str]:
    """The resolved settings of the native stack (`scripts/stack env`): one source of values."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "stack"), "env"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


SETTINGS = stack_settings()
# E2E_PROXY_URL: aim the suite elsewhere (for example at stock MLflow, to check the harness itself).
PROXY_URL = os.environ.get("E2E_PROXY_URL", SETTINGS["PROXY_URL"])
MLFLOW_URL = SETTINGS["MLFLOW_URL"]
METRICS_URL = SETTINGS["METRICS_URL"]
S3_URL = SETTINGS["MLFLOW_S3_ENDPOINT_URL"]
LOGS = Path(SETTINGS["STACK_LOGS"])
STACK_TMP = Path(SETTINGS["STACK_TMP"])
# The S3 store the stack runs on: s3s-fs (the test store) or garage (scripts/stack up --s3 garage).
STORE = SETTINGS.get("STACK_S3", "s3s-fs")
BUCKET = urlsplit(SETTINGS["MLFLOW_ARTIFACTS_DESTINATION"]).netloc
BUCKET_PREFIX = urlsplit(SETTINGS["MLFLOW_ARTIFACTS_DESTINATION"]).path.strip("/")

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# How long a test waits for something that must happen (a log line, a background cleanup, a
# process): long enough that only a hang exhausts it on a loaded machine. Verdicts never depend
# on how much of it was used.
PATIENCE = 60.0
AJAX_ARTIFACTS = "/ajax-api/2.0/mlflow-artifacts/artifacts"

# A folder tree whose names have spaces and unicode: {relative path: size}.
NESTED = {
    "top level.txt": 100,
    "dir with spaces/inner file.bin": 3000,
    "dir with spaces/ünïcødé 日本語/fïlé ñame ü.json": 64,
    "dir with spaces/ünïcødé 日本語/deeper/empty file": 0,
    "Ωmega/α β γ.csv": 2048,
    "Ωmega/emoji 🚀 name.txt": 10,
}


# ---------------------------------------------------------------- failures that say what differs
def fmt(value) -> str:
    if isinstance(value, (bytes, bytearray)) and len(value) > 400:
        return f"<{len(value)} bytes, sha256 {sha256_bytes(value)}>"
    return pprint.pformat(value, width=110, sort_dicts=False)


def check_equal(what: str, expected, got) -> None:
    if expected != got:
        raise AssertionError(f"{what}\n  expected: {fmt(expected)}\n  got:      {fmt(got)}")


def check(condition: bool, what: str, expected, got) -> None:
    if not condition:
        raise AssertionError(f"{what}\n  expected: {fmt(expected)}\n  got:      {fmt(got)}")


# ---------------------------------------------------------------- hashing and files
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return dict(sorted(out.items()))


def write_random(path: Path, size: int, chunk: int = 8 << 20) -> str:
    """Writes `size` random bytes (os.urandom, in chunks) and returns their sha256."""
    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


# ---------------------------------------------------------------- raw HTTP (no URL normalisation)
@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.body)

    def summary(self) -> dict:
        """What a user sees: status, media type, and the body (parsed when it is JSON)."""
        media = self.content_type.split(";")[0].strip()
        body: object
        if media == "application/json":
            try:
                body = self.json()
            except ValueError:
                body = self.body.decode("utf-8", "replace")
        elif media.startswith("text/") and len(self.body) < 2000:
            body = self.body.decode("utf-8", "replace")
        else:
            body = f"<{len(self.body)} bytes, sha256 {sha256_bytes(self.body)}>"
        return {"status": self.status, "content-type": media, "body": body}


def raw_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> Response:
    """Sends `path` byte for byte (http.client does not normalise `..` or percent-escapes),
    on a new connection."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        own_host = any(k.lower() == "host" for k in (headers or {}))
        conn.putrequest(method, path, skip_host=own_host, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read() if method != "HEAD" else b""
        hdrs: dict[str, str] = {}
        for k, v in r.getheaders():
            k = k.lower()
            hdrs[k] = f"{hdrs[k]}, {v}" if k in hdrs else v
        return Response(r.status, hdrs, data)
    finally:
        conn.close()


def store_env() -> dict[str, str]:
    """The S3 store's settings, as the stack gives them to MLflow and the proxy."""
    keys = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "MLFLOW_ARTIFACTS_DESTINATION")
    return {k: SETTINGS[k] for k in keys}


def request_retried(base_url: str, method: str, path: str, body=None, headers=None) -> Response:
    """`raw_request` with one retry when the server drops the connection (a uvicorn worker of stock
    MLflow restarted under load); what is compared does not depend on the attempt."""
    try:
        return raw_request(base_url, method, path, body=body, headers=headers)
    except (ConnectionError, http.client.RemoteDisconnected):
        time.sleep(1)
        return raw_request(base_url, method, path, body=body, headers=headers)


def http_get(url: str, timeout: float = 30) -> Response:
    u = urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    return raw_request(f"{u.scheme}://{u.netloc}", "GET", path or "/", timeout=timeout)


# ---------------------------------------------------------------- watching the stack
class LogWatch:
    """Text appended to a log file since the watch started."""

    def __init__(self, path: Path):
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace")

    def text_once(self, done, timeout: float = PATIENCE) -> str:
        """The text once `done(text)` holds (or when `timeout` runs out: the caller's check then
        says what is missing). An access-log line is written as its request ends, a moment after
        the client has the answer: wait for the lines, never for a guessed while."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if done(text) or time.monotonic() > deadline:
                return text
            time.sleep(0.1)


def mlflow_log_settled(watch: LogWatch) -> str:
    """MLflow's log text once it shows a request sent now (a marker on /health): the lines of
    every request that ended before are in it."""
    marker = f"/health?settled={time.monotonic_ns()}"
    http_get(MLFLOW_URL + marker)
    return watch.text_once(lambda text: marker in text)


def dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


class DirSampler:
    """Samples the apparent size of everything under a directory every `interval` seconds."""

    def __init__(self, root: Path, interval: float = 0.02):
        self.root, self.interval = root, interval
        self.baseline = dir_bytes(root)
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, dir_bytes(self.root))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, dir_bytes(self.root))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


S3_REQ = re.compile(
    r"Request \{ method: (?P<method>[A-Z]+), uri: (?P<uri>\S+), .*?"
    r"\"user-agent\": \"(?P<ua>[^\"]*)\""
)
# How each store logs a request with its headers (scripts/stack runs s3s-fs with
# RUST_LOG=s3s::service=debug, Garage with garage_api_common=debug).
S3_REQ_MARKERS = ("s3s::service: req: Request {", "garage_api_common::generic_server: Request {")


def s3_requests(log_text: str) -> list[dict[str, str]]:
    """Requests the S3 store received, from its log (s3s-fs or Garage)."""
    out = []
    for line in log_text.splitlines():
        if not any(m in line for m in S3_REQ_MARKERS):
            continue
        m = S3_REQ.search(line)
        if m:
            out.append(m.groupdict())
        else:  # a request without a user-agent still counts
            mm = re.search(r"method: ([A-Z]+), uri: (\S+),", line)
            out.append({"method": mm.group(1) if mm else "?", "uri": mm.group(2) if mm else line, "ua": ""})
    return out


def wait_for(predicate, timeout: float = PATIENCE, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
