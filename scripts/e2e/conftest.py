"""End-to-end suite: the real MLflow client against the native stack (scripts/stack up).

The client runs as users run it: tracking URI = the proxy, nothing else. In particular no
MLFLOW_ENABLE_PROXY_MULTIPART_* override, and no S3 endpoint or S3 keys in its environment.
"""

from __future__ import annotations

import os
import time

# --- the client's environment, before anything imports mlflow -----------------------------------
for _k in list(os.environ):
    if _k.startswith(("MLFLOW_", "AWS_")) and not _k.startswith("MLFLOW_STACK_"):
        del os.environ[_k]
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
# Fewer retries than the default 7 with exponential backoff: a wrong 5xx then fails in seconds
# instead of minutes. It does not change which transfer path the client picks.
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"

import pytest  # noqa: E402

from e2e_util import (  # noqa: E402
    METRICS_URL,
    MLFLOW_URL,
    PROXY_URL,
    S3_URL,
    NESTED,
    SETTINGS,
    http_get,
    wait_for,
    write_random,
)

os.environ["MLFLOW_TRACKING_URI"] = PROXY_URL

_SKIPPED: list[str] = []
_DURATIONS: list[tuple[float, str]] = []
_OTHER_VERSION: list[str] = []

# The MLflow the stack runs (scripts/stack up --mlflow): tests that hold on some versions only say so
# with `@pytest.mark.mlflow(min="3.18")` (or max=); on the others they are not run, and the summary
# names them. A skipped test fails the run; a test for another version is not a skipped one.
MLFLOW_VERSION = tuple(int(x) for x in SETTINGS["STACK_MLFLOW_VERSION"].split(".")[:2])

# The client is the server's release: pytest from that version's venv (STACK_VENV). Another client
# would test a pairing no user runs, and gc.py (run with this interpreter) would meet a database
# schema of another release.
import mlflow  # noqa: E402

if mlflow.__version__ != SETTINGS["STACK_MLFLOW_VERSION"]:
    raise pytest.UsageError(
        f"the stack runs MLflow {SETTINGS['STACK_MLFLOW_VERSION']} but this pytest's client is {mlflow.__version__} "
        f"({mlflow.__file__}): run {SETTINGS['STACK_VENV']}/bin/python -m pytest"
    )


# The stack runs MLflow with its basic-auth app (`scripts/stack up --auth`) or without: the auth
# suite (test_auth*.py) needs the one, everything else the other. The same pytest command runs
# the suite that fits the stack; scripts/test runs both, one after the other.
AUTH_STACK = SETTINGS.get("STACK_AUTH") == "true"


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if not (name.startswith("test_") and name.endswith(".py")):
        return None
    is_auth_test = name.startswith("test_auth")
    return True if is_auth_test != AUTH_STACK else None


def pytest_configure(config):
    config.addinivalue_line("markers", "mlflow(min=None, max=None): the MLflow versions (major.minor) the test holds on")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def pytest_collection_modifyitems(config, items):
    keep = []
    for item in items:
        marker = item.get_closest_marker("mlflow")
        low, high = (marker.kwargs.get("min"), marker.kwargs.get("max")) if marker else (None, None)
        if (low and MLFLOW_VERSION < _version(low)) or (high and MLFLOW_VERSION > _version(high)):
            _OTHER_VERSION.append(f"{item.nodeid} (MLflow {low or ''}..{high or ''})")
        else:
            keep.append(item)
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_runtest_logreport(report):
    if report.skipped:
        _SKIPPED.append(report.nodeid)
    if report.when == "call":
        _DURATIONS.append((report.duration, report.nodeid))


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is not a passing test.
    if _SKIPPED and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _OTHER_VERSION:
        terminalreporter.write_line(
            f"not run against MLflow {SETTINGS['STACK_MLFLOW_VERSION']}: {len(_OTHER_VERSION)} test(s) for other versions:"
        )
        for nodeid in _OTHER_VERSION:
            terminalreporter.write_line(f"  {nodeid}")
    if _SKIPPED:
        terminalreporter.write_line(
            f"FAILING THE RUN: {len(_SKIPPED)} test(s) were skipped, and skipped does not count as passed:"
        )
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  {nodeid}")
    if _DURATIONS:
        terminalreporter.write_line("slowest tests:")
        for d, nodeid in sorted(_DURATIONS, reverse=True)[:8]:
            terminalreporter.write_line(f"  {d:7.2f}s {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def stack():
    """Fails (never skips) when the stack is not up. A busy machine may make a check slow (the deep
    readiness check gives MLflow 3 s): each is asked again until it answers 200, for a while."""

    def status_of(url):
        try:
            return http_get(url, timeout=10).status
        except OSError as e:
            return repr(e)

    problems = []
    for what, url in [
        ("proxy /health", f"{PROXY_URL}/health"),
        ("MLflow /health (internal port)", f"{MLFLOW_URL}/health"),
        ("proxy /readyz", f"{METRICS_URL}/readyz?deep=1"),
    ]:
        if what == "proxy /readyz" and os.environ.get("E2E_PROXY_URL"):
            continue
        if not wait_for(lambda: status_of(url) == 200, interval=0.5):
            problems.append(f"{what}: {url} -> {status_of(url)}")
    try:
        http_get(f"{S3_URL}/", timeout=10)
    except OSError as e:
        problems.append(f"S3 endpoint {S3_URL}: {e!r}")
    if problems:
        pytest.fail("the native stack is not up (run scripts/stack up):\n  " + "\n  ".join(problems))
    return SETTINGS


@pytest.fixture(scope="session")
def s3():
    """Direct S3 access for the harness only (seeding and inspecting), never for the client under test."""
    import boto3

    from botocore.handlers import decode_list_object_v2, set_list_objects_encoding_type_url

    client = boto3.client(
        "s3",
        endpoint_url=S3_URL,
        aws_access_key_id=SETTINGS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SETTINGS["AWS_SECRET_ACCESS_KEY"],
        region_name=SETTINGS["AWS_DEFAULT_REGION"],
    )
    # s3s-fs ignores encoding-type=url and returns raw keys; without this boto3 would url-decode them
    # again ('+' would become a space). Without encoding-type every store sends raw keys (docs/stores.md).
    client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", set_list_objects_encoding_type_url)
    client.meta.events.unregister("after-call.s3.ListObjectsV2", decode_list_object_v2)
    return client


def forget_cached_stores() -> None:
    """MLflow's client keeps server-info per host and one store per tracking URI, with what it learned from
    that server (whether it has workspaces). Every variant answers at the same URL with other features, so
    what was kept from the previous one would answer for the new one (the client then refuses a workspace)."""
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry
    from mlflow.utils.server_info import _clear_server_info_cache

    _clear_server_info_cache()
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    ModelRegistryStoreRegistry._get_store_with_resolved_uri.cache_clear()


@pytest.fixture(scope="session")
def variant():
    """Starts a second MLflow and proxy with the given setting (variant.py), stopping the previous one:
    `variant(workspaces=True, auth=True)`. The last one is stopped when the session ends."""
    from variant import Setting, Variant

    running: dict[str, Variant] = {}

    def start(**setting) -> Variant:
        wanted = Setting(**setting)
        current = running.get("v")
        if current is not None and current.setting == wanted:
            return current
        if current is not None:
            current.stop()
            running.clear()
        running["v"] = Variant(wanted).start()
        forget_cached_stores()
        return running["v"]

    yield start
    if "v" in running:
        running["v"].stop()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def small_files(data_dir):
    """0 B, 1 KiB and 7 MiB of random bytes: {name: (path, size, sha256)}."""
    out = {}
    for name, size in [("empty.bin", 0), ("one-kib.bin", 1024), ("seven-mib.bin", 7 << 20)]:
        p = data_dir / "files" / name
        out[name] = (p, size, write_random(p, size))
    return out


@pytest.fixture(scope="session")
def nested_dir(data_dir):
    """A folder tree whose names have spaces and unicode: (root, {relative path: sha256})."""
    root = data_dir / "nested"
    digests = {rel: write_random(root / rel, size) for rel, size in NESTED.items()}
    return root, dict(sorted(digests.items()))


@pytest.fixture(scope="session")
def big_file(data_dir):
    """600 MiB of random bytes, made once per session: (path, sha256)."""
    t = time.monotonic()
    p = data_dir / "big" / "big-600mib.bin"
    digest = write_random(p, 600 << 20)
    print(f"made {p} in {time.monotonic() - t:.1f}s")
    yield p, digest
    p.unlink(missing_ok=True)
