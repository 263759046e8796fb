"""The MLflow UI in a real browser through the proxy (issue 19): headless Chromium (Debian's
`chromium`, driven by Playwright) opens port 5000 as a user would. The run page previews an image
artifact, and from the registry page the user reaches the model version's logged model and downloads
a model file. Each artifact the pages fetch must be the exact bytes logged, answered by the proxy
itself (an answer MLflow made carries `server: uvicorn`), with no artifact route in MLflow's access
log. MLflow 3.17's UI fetches a file from the UI's routes (`/get-artifact`, `/model-versions/get-artifact`,
the logged model's `/artifacts/files`); 3.18's, told by server-info that downloads may be presigned
(`multipart_downloads_enabled`, the proxy's true), asks `mlflow-artifacts/presigned/<path>` for a URL,
the proxy's signed one, and fetches that.

The model pages (registered models, a registered model, a version, the experiment's logged models, a
logged model and its files) are visited too. While any page is open, every request the browser makes
and every answer it gets is recorded, bodies included: none may go to the S3 store or name its address
(host:port of MLFLOW_S3_ENDPOINT_URL), and none may carry an `X-Amz-` signature (stock 3.18 hands its
UI URLs on the store, signed with its key: aimed at stock, E2E_PROXY_URL=<MLflow's URL>, the model
pages' test fails so). Screenshots go to $E2E_SCREENSHOTS (default /tmp/mlflow-e2e-screenshots)."""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e_util import LOGS, PROXY_URL, S3_URL, SETTINGS, LogWatch, check, check_equal

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("E2E_SCREENSHOTS", "/tmp/mlflow-e2e-screenshots"))
# Every wait is bounded; these are bounds, not timings (the UI loads slowly on a loaded machine).
PAGE_TIMEOUT_MS = 180_000
SUFFIX = uuid.uuid4().hex[:8]
ARTIFACT_ROUTES = ("/get-artifact", "/artifacts/files", "/mlflow-artifacts/")


def png(width: int, height: int) -> bytes:
    """A real RGB PNG (a colour gradient), so that the browser decodes it."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 4) % 256, (y * 5) % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; scripts/stack setup --test-deps)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,  # a fresh user data dir
            executable_path=CHROMIUM,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1280, "height": 800},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context
        context.close()


# What would show that an answer sends the browser to the store, or hands out the store's signature.
STORE_ADDRESS = urlsplit(S3_URL).netloc
# A signed S3 URL's parameters, or a SigV4 authorization (the proxy's own x-amz-checksum-* headers,
# docs/integrity.md, are neither).
SIGNATURES = ("x-amz-signature", "x-amz-credential", "aws4-hmac-sha256")


def signed(text: str) -> bool:
    return any(s in text.lower() for s in SIGNATURES)


@dataclass
class Answer:
    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: bytes | None  # None: the browser could not give it (`error` says why)
    error: str = ""

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")


class Traffic:
    """Every request the browser makes and every answer it gets (body read as it arrives), while
    attached to a browser context."""

    def __init__(self, context):
        self.context = context
        self.requests: list[str] = []
        self.answers: list[Answer] = []
        self.pending: set = set()
        self.handlers = {"request": self._request, "response": self._response,
                         "requestfinished": self._ended, "requestfailed": self._ended}
        for event, handler in self.handlers.items():
            context.on(event, handler)

    def _request(self, request):
        self.requests.append(f"{request.method} {request.url}")
        self.pending.add(request)

    def _ended(self, request):
        self.pending.discard(request)

    def settle(self, page):
        """Until every request has ended (but the UI's telemetry worker's, which stays open), so that
        no answer arrives after its page is closed, when its body can no longer be read."""
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while any(".worker.js" not in r.url for r in self.pending) and time.monotonic() < deadline:
            page.wait_for_timeout(100)  # lets Playwright deliver the browser's events

    def _response(self, response):
        try:
            body, error = response.body(), ""
        except Exception as e:  # a download or a redirect has no body for the page
            body, error = None, f"{type(e).__name__}: {e}"
        self.answers.append(Answer(response.request.method, response.url, response.status,
                                   dict(response.headers), body, error))

    def detach(self):
        for event, handler in self.handlers.items():
            self.context.remove_listener(event, handler)

    def check_the_store_never_shows(self, what: str) -> list[Answer]:
        """Nothing went to the store; no answer's URL, headers or body names its address or carries a
        signature; every JSON body was read (else it could not be checked). Returns the JSON answers."""
        self.detach()
        to_store = [r for r in self.requests if STORE_ADDRESS in r or signed(r)]
        check_equal(f"{what}: requests the browser sent to the S3 store ({STORE_ADDRESS}) or with a signature",
                    [], to_store)
        leaks = []
        for a in self.answers:
            head = a.url + "\n" + "\n".join(f"{k}: {v}" for k, v in a.headers.items())
            if STORE_ADDRESS in head or signed(head):
                leaks.append(f"{a.method} {a.url}: in the URL or headers")
            if a.body is not None and (STORE_ADDRESS.encode() in a.body or signed(a.body.decode("latin-1"))):
                leaks.append(f"{a.method} {a.url} ({a.status}): in the body {a.body[:300]!r}")
        check_equal(f"{what}: answers naming the S3 store ({STORE_ADDRESS}) or carrying an X-Amz- signature",
                    [], leaks)
        json_answers = [a for a in self.answers if a.is_json]
        unread = [f"{a.method} {a.url}: {a.error}" for a in json_answers if a.body is None]
        check_equal(f"{what}: JSON answers whose body the browser did not give (so unchecked)", [], unread)
        check(bool(json_answers), f"{what}: JSON answers recorded", "at least one", len(json_answers))
        return json_answers


# The answer that carries a file's bytes to the page (see the module's doc): a UI route naming the file
# (3.17), or the proxy's signed URL (3.18).
FILE_ROUTES = ("/get-artifact?", "/artifacts/files?")
SIGNED_URL = "/mlflow-artifacts/signed/object?"


def carries_file(url: str, name: str) -> bool:
    return (any(r in url for r in FILE_ROUTES) and name in url) or SIGNED_URL in url


def served_by_proxy(response) -> bool:
    return response.headers.get("server") is None


# Playwright cannot read this Chromium's response bodies (it gets 0 bytes for every response): the
# page itself fetches the same URL again, through the same browser network stack, and hashes it.
BROWSER_SHA256 = """async (url) => {
    const bytes = await (await fetch(url)).arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, "0")).join("");
}"""


def browser_sha(page, url: str) -> str:
    return page.evaluate(BROWSER_SHA256, url)


def test_run_page_previews_an_image(browser, tmp_path):
    image = png(64, 48)
    (tmp_path / "plot.png").write_bytes(image)
    mlflow.set_experiment(f"e2e-browser-{SUFFIX}")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "plot.png"), "images")
    exp = run.info.experiment_id
    mlflow_log = LogWatch(LOGS / "mlflow.log")
    traffic = Traffic(browser)
    page = browser.new_page()
    with page.expect_response(lambda r: carries_file(r.url, "plot.png")) as caught:
        page.goto(f"{PROXY_URL}/#/experiments/{exp}/runs/{run.info.run_id}/artifacts/images/plot.png")
    response = caught.value
    check_equal(f"status of the preview's {response.url}", 200, response.status)
    check("the preview's bytes were answered by the proxy", served_by_proxy(response), "no server: uvicorn", response.headers)
    check_equal("Content-Length of the image the page fetched", str(len(image)), response.headers.get("content-length"))
    check_equal("SHA-256 of the image, fetched in the page", sha(image), browser_sha(page, response.url))
    # The browser decoded it: an image of exactly that size is on the page.
    page.wait_for_function("() => [...document.images].some(i => i.naturalWidth === 64 && i.naturalHeight === 48)")
    page.screenshot(path=str(SHOTS / "run-page-image-preview.png"))
    hits = [line for line in mlflow_log.text().splitlines() if any(a in line for a in ARTIFACT_ROUTES)]
    check_equal("artifact routes in MLflow's access log while the page loaded", [], hits)
    traffic.settle(page)
    page.close()
    traffic.check_the_store_never_shows("the run's artifact page")


def test_registry_page_downloads_a_model_file(browser, tmp_path):
    mlmodel = b"artifact_path: model\nflavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
    weights = os.urandom(300_000)
    (tmp_path / "MLmodel").write_bytes(mlmodel)
    (tmp_path / "model.pkl").write_bytes(weights)
    client = MlflowClient()
    exp = mlflow.set_experiment(f"e2e-browser-models-{SUFFIX}").experiment_id
    model = client.create_logged_model(experiment_id=exp, name=f"browser-{SUFFIX}")
    for name in ("MLmodel", "model.pkl"):
        client.log_model_artifact(model.model_id, str(tmp_path / name))
    registered = f"browser-model-{SUFFIX}"
    client.create_registered_model(registered)
    version = client.create_model_version(registered, source=f"models:/{model.model_id}", model_id=model.model_id)

    mlflow_log = LogWatch(LOGS / "mlflow.log")
    traffic = Traffic(browser)
    page = browser.new_page()
    # The registry page reads the version's MLmodel (3.17: through the registry's own download route).
    with page.expect_response(lambda r: carries_file(r.url, "MLmodel")) as caught:
        page.goto(f"{PROXY_URL}/#/models/{registered}/versions/{version.version}")
    response = caught.value
    check_equal(f"status of the registry page's {response.url}", 200, response.status)
    check("the registry page's MLmodel was answered by the proxy", served_by_proxy(response), "no server: uvicorn", response.headers)
    check_equal("Content-Length of the MLmodel the registry page fetched", str(len(mlmodel)), response.headers.get("content-length"))
    check_equal("SHA-256 of the MLmodel, fetched in the page", sha(mlmodel), browser_sha(page, response.url))
    page.screenshot(path=str(SHOTS / "registry-model-version.png"))

    # From the version to its logged model, its files, and the download button.
    page.get_by_role("link", name=f"browser-{SUFFIX}").click()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("model.pkl").first.click()
    with page.expect_response(lambda r: carries_file(r.url, "model.pkl")) as fetched:
        with page.expect_download() as download:
            page.locator("button[data-component-id*=artifactview]").first.click()
    check_equal("status of the model file's download", 200, fetched.value.status)
    check("the model file was answered by the proxy", served_by_proxy(fetched.value), "no server: uvicorn", fetched.value.headers)
    saved = Path(download.value.path()).read_bytes()
    check_equal("name of the downloaded file", "model.pkl", download.value.suggested_filename)
    check_equal("SHA-256 of the downloaded model file", sha(weights), sha(saved))
    page.screenshot(path=str(SHOTS / "logged-model-download.png"))
    hits = [line for line in mlflow_log.text().splitlines() if any(a in line for a in ARTIFACT_ROUTES)]
    check_equal("artifact routes in MLflow's access log while the pages loaded", [], hits)
    traffic.settle(page)
    page.close()
    traffic.check_the_store_never_shows("the registry page and the logged model's download")


# The model pages of the UI: (what, route, the answers the page is built from, each named by a piece of
# its URL). {name}: the registered model, {version}, {exp}: the experiment, {model}: the logged model's id.
MODEL_PAGES = [
    ("registered models", "/#/models", ("/registered-models/search",)),
    ("a registered model", "/#/models/{name}", ("/registered-models/get?", "/model-versions/search?")),
    ("a model version", "/#/models/{name}/versions/{version}",
     ("/model-versions/get?", ("/model-versions/get-artifact?", SIGNED_URL), "/logged-models/{model}")),
    ("the experiment's logged models", "/#/experiments/{exp}/models", ("/logged-models/search",)),
    ("a logged model", "/#/experiments/{exp}/models/{model}", ("/logged-models/{model}",)),
    ("a logged model's files", "/#/experiments/{exp}/models/{model}/artifacts",
     ("/logged-models/{model}", "/logged-models/{model}/artifacts/directories")),
]


def wait_for_answers(page, traffic: Traffic, since: int, pieces: list) -> list:
    """Until the browser has had an answer (200) for each piece of URL (a tuple: for one of them), after
    the first `since` answers; returns the pieces still without one when the page's time ran out. Not
    "network idle": the UI's telemetry worker keeps a request open."""
    def missing():
        return [p for p in pieces if not any(
            any(q in a.url for q in (p if isinstance(p, tuple) else (p,))) and a.status == 200
            for a in traffic.answers[since:])]

    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while missing() and time.monotonic() < deadline:
        page.wait_for_timeout(100)  # lets Playwright deliver the browser's events
    return missing()


def test_model_pages_never_show_the_store(browser, tmp_path):
    """Each model page, opened fresh, once it has fetched what it is built from, and the logged model's
    MLmodel previewed: everything the browser fetched is checked for the store's address and signatures."""
    mlmodel = b"artifact_path: model\nflavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
    (tmp_path / "MLmodel").write_bytes(mlmodel)
    (tmp_path / "model.pkl").write_bytes(os.urandom(50_000))
    client = MlflowClient()
    exp = mlflow.set_experiment(f"e2e-browser-model-pages-{SUFFIX}").experiment_id
    model = client.create_logged_model(experiment_id=exp, name=f"pages-{SUFFIX}")
    for name in ("MLmodel", "model.pkl"):
        client.log_model_artifact(model.model_id, str(tmp_path / name))
    registered = f"browser-pages-{SUFFIX}"
    client.create_registered_model(registered)
    version = client.create_model_version(registered, source=f"models:/{model.model_id}", model_id=model.model_id)
    fill = {"name": registered, "version": version.version, "exp": exp, "model": model.model_id}

    traffic = Traffic(browser)
    unanswered = {}
    for what, route, pieces in MODEL_PAGES:
        page, since = browser.new_page(), len(traffic.answers)
        page.goto(PROXY_URL + route.format(**fill))
        pieces = [p if isinstance(p, tuple) else p.format(**fill) for p in pieces]
        if missing := wait_for_answers(page, traffic, since, pieces):
            unanswered[what] = missing
        if route.endswith("/artifacts"):
            # The MLmodel's preview: the logged model's file, fetched by the page.
            since = len(traffic.answers)
            page.get_by_text("MLmodel", exact=True).first.click()
            pieces = [(f"/logged-models/{model.model_id}/artifacts/files?", SIGNED_URL)]
            if missing := wait_for_answers(page, traffic, since, pieces):
                unanswered["the MLmodel preview"] = missing
            else:
                page.get_by_text("python_function").first.wait_for()
        page.screenshot(path=str(SHOTS / f"model-pages-{what.replace(' ', '-').replace(chr(39), '')}.png"))
        traffic.settle(page)
        page.close()
    # The store showing is the telling failure (a page that got no answer may be why): checked first.
    json_answers = traffic.check_the_store_never_shows("the model pages")
    check_equal("answers (200) the model pages never received", {}, unanswered)
    print(f"MLflow {SETTINGS['STACK_MLFLOW_VERSION']}: {len(traffic.answers)} answers checked "
          f"({len(json_answers)} JSON) on {len(MODEL_PAGES)} model pages: "
          f"{sorted({a.url.split('?')[0].removeprefix(PROXY_URL) for a in json_answers})}")
