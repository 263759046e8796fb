"""The MLflow UI in a real browser through the proxy (issue 19): headless Chromium (Debian's
`chromium`, driven by Playwright) opens port 5000 as a user would. The run page previews an image
artifact, and from the registry page the user reaches the model version's logged model and downloads
a model file. Each artifact the pages fetch must be the exact bytes logged, answered by the proxy
itself (an answer MLflow made carries `server: uvicorn`), with no artifact route in MLflow's access
log. Screenshots go to $E2E_SCREENSHOTS (default /tmp/mlflow-e2e-screenshots)."""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import uuid
import zlib
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e_util import LOGS, PROXY_URL, LogWatch, check, check_equal

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
    page = browser.new_page()
    with page.expect_response(lambda r: "/get-artifact?" in r.url and "plot.png" in r.url) as caught:
        page.goto(f"{PROXY_URL}/#/experiments/{exp}/runs/{run.info.run_id}/artifacts/images/plot.png")
    response = caught.value
    check_equal("status of the preview's get-artifact", 200, response.status)
    check("the preview's bytes were answered by the proxy", served_by_proxy(response), "no server: uvicorn", response.headers)
    check_equal("Content-Length of the image the page fetched", str(len(image)), response.headers.get("content-length"))
    check_equal("SHA-256 of the image, fetched in the page", sha(image), browser_sha(page, response.url))
    # The browser decoded it: an image of exactly that size is on the page.
    page.wait_for_function("() => [...document.images].some(i => i.naturalWidth === 64 && i.naturalHeight === 48)")
    page.screenshot(path=str(SHOTS / "run-page-image-preview.png"))
    hits = [line for line in mlflow_log.text().splitlines() if any(a in line for a in ARTIFACT_ROUTES)]
    check_equal("artifact routes in MLflow's access log while the page loaded", [], hits)
    page.close()


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
    page = browser.new_page()
    # The registry page reads the version's MLmodel through the registry's own download route.
    with page.expect_response(lambda r: "/model-versions/get-artifact?" in r.url) as caught:
        page.goto(f"{PROXY_URL}/#/models/{registered}/versions/{version.version}")
    response = caught.value
    check_equal("status of the registry page's model-versions/get-artifact", 200, response.status)
    check("the registry page's MLmodel was answered by the proxy", served_by_proxy(response), "no server: uvicorn", response.headers)
    check_equal("Content-Length of the MLmodel the registry page fetched", str(len(mlmodel)), response.headers.get("content-length"))
    check_equal("SHA-256 of the MLmodel, fetched in the page", sha(mlmodel), browser_sha(page, response.url))
    page.screenshot(path=str(SHOTS / "registry-model-version.png"))

    # From the version to its logged model, its files, and the download button.
    page.get_by_role("link", name=f"browser-{SUFFIX}").click()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("model.pkl").first.click()
    with page.expect_response(lambda r: "/artifacts/files?" in r.url and "model.pkl" in r.url) as fetched:
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
    page.close()
