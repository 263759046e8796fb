"""Deleting frees the storage (docs/gc.md): the stack's gc, as its compose service and CronJob run it,
against the real MLflow server and client.

The world: runs (one with more than 1,000 objects in nested folders, one with none), logged models and
traces with artifacts, some deleted (runs and logged models softly, a trace for good with
delete_traces, a whole experiment). Then the stack's gc: MLflow's own `mlflow gc` through the proxy
(mlflow-image/gc.py), and `mlflow-artifact-proxy gc --delete` for what it cannot reach. Afterwards the
store holds exactly the kept objects, byte for byte, and nothing under any deleted prefix.

Everything is scoped to this test's experiments (`--run-ids`, `--experiment-ids`, `--under`): a gc of
the whole stack would also collect what a developer deleted on purpose.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import uuid
from pathlib import Path
from unittest import mock

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e_util import ARTIFACTS, PROXY_URL, check, check_equal, raw_request, write_random
from gc_util import (
    PROXY_BIN,
    backend_uri,
    dest_path,
    digests,
    key,
    lines_starting,
    listing,
    mlflow_gc,
    orphan_gc,
    proxy_gc_env,
)

BIG_RUN_FILES = 1050


def log_trace(name: str) -> str:
    """A trace whose data travels the artifact route (traces.json), as test_models.py logs one."""
    from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowV3SpanExporter, "_export_spans_incrementally", lambda self, spans: None)
        with mlflow.start_span(name=name) as span:
            span.set_inputs({"x": 1})
            span.set_outputs({"y": 2})
        trace_id = mlflow.get_last_active_trace_id()
        mlflow.flush_trace_async_logging()
    trace = MlflowClient().get_trace(trace_id)
    path = dest_path(trace.info.tags["mlflow.artifactLocation"])
    url = f"{ARTIFACTS}/{path}/traces.json"
    for _ in range(150):  # the upload is asynchronous: wait for it (bounded)
        if raw_request(PROXY_URL, "GET", url).status == 200:
            break
        threading.Event().wait(0.1)
    check_equal(f"traces.json of {trace_id} stored", 200, raw_request(PROXY_URL, "GET", url).status)
    return trace_id


def logged_model(client: MlflowClient, experiment_id: str, files: Path, name: str):
    model = client.create_logged_model(experiment_id=experiment_id, name=name)
    client.log_model_artifacts(model.model_id, str(files))
    return client.get_logged_model(model.model_id)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gc")
    small = base / "small"
    for rel, size in {"a.txt": 100, "sub/b.bin": 3000, "sub/deeper/ü c.json": 64, "empty": 0}.items():
        write_random(small / rel, size)
    big = base / "big"
    for i in range(BIG_RUN_FILES):
        write_random(big / f"d{i % 7}" / f"e{i % 3}" / f"f{i}.bin", 1 + i % 200)
    model = base / "model"
    write_random(model / "MLmodel", 200)
    write_random(model / "data" / "weights.bin", 20_000)
    return {"small": small, "big": big, "model": model}


def test_the_stacks_gc_frees_exactly_what_was_deleted(files, s3):
    client = MlflowClient()
    suffix = uuid.uuid4().hex[:8]

    # --- experiment A: kept and deleted runs, logged models and traces
    a = client.create_experiment(f"e2e-gc-{suffix}")
    mlflow.set_experiment(experiment_id=a)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files["small"]))
    keep_run = run.info
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files["big"]), "many")
        mlflow.log_artifacts(str(files["small"]))
    big_run = run.info
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files["small"]), "x")
    small_run = run.info
    with mlflow.start_run() as run:  # no artifacts at all (mlflow/mlflow#15461: stock answers 500)
        pass
    empty_run = run.info
    keep_model = logged_model(client, a, files["model"], "keep")
    del_model = logged_model(client, a, files["model"], "delete")
    keep_trace = log_trace("keep")
    del_trace = log_trace("delete")

    # --- experiment B: deleted with everything in it
    b = client.create_experiment(f"e2e-gc-deleted-{suffix}")
    mlflow.set_experiment(experiment_id=b)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files["small"]))
    b_run = run.info
    b_model = logged_model(client, b, files["model"], "in-deleted-experiment")
    b_trace = log_trace("in-deleted-experiment")

    a_path = dest_path(client.get_experiment(a).artifact_location)
    b_path = dest_path(client.get_experiment(b).artifact_location)
    # Each object's folder: <exp>/<run id>, <exp>/models/<model id>, <exp>/traces/<trace id>.
    root = lambda uri: dest_path(uri).removesuffix("/artifacts")  # noqa: E731
    trace_root = lambda t: root(client.get_trace(t).info.tags["mlflow.artifactLocation"])  # noqa: E731
    deleted = {
        "big run": root(big_run.artifact_uri),
        "small run": root(small_run.artifact_uri),
        "run without artifacts": root(empty_run.artifact_uri),
        "deleted logged model": root(del_model.artifact_location),
        "deleted trace": trace_root(del_trace),
        "deleted experiment's run": root(b_run.artifact_uri),
        "deleted experiment's logged model": root(b_model.artifact_location),
        "deleted experiment's trace": trace_root(b_trace),
    }
    kept = {
        "kept run": root(keep_run.artifact_uri),
        "kept logged model": root(keep_model.artifact_location),
        "kept trace": trace_root(keep_trace),
    }
    before = {**listing(s3, a_path), **listing(s3, b_path)}
    under = lambda path, keys: {k for k in keys if k.startswith(key(path) + "/")}  # noqa: E731
    big = len(under(deleted["big run"], before))
    check(big > 1000, "objects of the big run", "> 1000", big)
    for what, path in {**deleted, **kept}.items():
        if what != "run without artifacts":
            check(bool(under(path, before)), f"objects stored for the {what} ({path})", "some", 0)
    kept_keys = set().union(*(under(path, before) for path in kept.values()))
    check_equal("every object of the test's experiments belongs to a kept or a deleted prefix",
                set(before), kept_keys | set().union(*(under(p, before) for p in deleted.values())))
    kept_digests = digests(s3, kept_keys)

    # --- the deletions users make
    for info in (big_run, small_run, empty_run):
        client.delete_run(info.run_id)
    client.delete_logged_model(del_model.model_id)
    client.delete_traces(experiment_id=a, trace_ids=[del_trace])
    client.delete_experiment(b)

    # --- the stack's gc: MLflow's own gc through the proxy, then the stack's step
    out = mlflow_gc(
        "--run-ids", ",".join(i.run_id for i in (big_run, small_run, empty_run)),
        "--logged-model-ids", del_model.model_id,
        "--experiment-ids", b,
    )
    through_mlflow = [
        "big run", "small run", "run without artifacts", "deleted logged model", "deleted experiment's run"
    ]
    for what in through_mlflow:
        check_equal(f"keys left under the {what} after mlflow gc", {}, listing(s3, deleted[what]))
    freed_objects = sum(len(under(deleted[w], before)) for w in through_mlflow)
    freed_bytes = sum(before[k] for w in through_mlflow for k in under(deleted[w], before))
    check(
        f"mlflow-gc: done: 5 artifact deletions freed {freed_objects} objects, {freed_bytes} bytes" in out,
        "gc.py's summary of what the proxy freed", f"{freed_objects} objects, {freed_bytes} bytes", out[-2000:],
    )
    check(
        f"mlflow-gc: freed {deleted['big run']}/artifacts: {len(under(deleted['big run'], before))} objects" in out,
        "gc.py's line for the big run", deleted["big run"], out[-4000:],
    )
    # What MLflow's gc leaves behind, for the stack's step.
    left = {w: len(listing(s3, p)) for w, p in deleted.items() if listing(s3, p)}
    print(f"left by mlflow gc: {left}")

    # A dry run first: it reports, deletes nothing.
    dry = orphan_gc("--under", a_path, "--under", b_path, "--older-than", "0")
    orphans = sorted(
        f"{kind} {deleted[what]}/"
        for kind, what in [
            ("trace", "deleted trace"),
            ("logged_model", "deleted experiment's logged model"),
            ("trace", "deleted experiment's trace"),
        ]
    )
    check_equal("orphans the dry run reports", orphans, lines_starting(dry, "gc: orphan "))
    still = {w: len(listing(s3, p)) for w, p in deleted.items() if listing(s3, p)}
    check_equal("keys left after the dry run", left, still)

    out = orphan_gc("--delete", "--under", a_path, "--under", b_path, "--older-than", "0")
    check_equal("prefixes the stack's step deleted", orphans, lines_starting(out, "gc: deleted orphan "))

    # --- the store holds exactly the kept objects, byte for byte
    for what, path in deleted.items():
        check_equal(f"keys left under the {what} ({path})", {}, listing(s3, path))
    after = {**listing(s3, a_path), **listing(s3, b_path)}
    check_equal("keys of the test's experiments after gc", sorted(kept_keys), sorted(after))
    check_equal("SHA-256 of every kept object after gc", kept_digests, digests(s3, after))
    # and MLflow still serves them
    local = Path(mlflow.artifacts.download_artifacts(run_id=keep_run.run_id, dst_path=str(files["small"].parent / "dl")))
    tree = lambda top: sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())  # noqa: E731
    check_equal("files of the kept run downloaded after gc", tree(files["small"]), tree(local))


class Lines:
    """A process's stdout, line by line, read on a thread (every wait is bounded)."""

    def __init__(self, process: subprocess.Popen):
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process):
        for line in process.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, start: str, timeout: float = 300) -> str:
        while True:
            line = self.queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"gc ended before printing {start!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(start):
                return line

    def rest(self, timeout: float = 300) -> str:
        while (line := self.queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "\n".join(self.seen)


def test_orphan_gc_keeps_a_prefix_that_gains_its_run_while_it_runs(files, s3):
    """Orphans planted as a gc that died half way leaves them; one of them gets its run back (a
    restored database) while gc runs, at its pause point just before the re-check."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    client = MlflowClient()
    exp = client.create_experiment(f"e2e-gc-orphans-{uuid.uuid4().hex[:8]}")
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files["small"]))
    live = run.info
    base = dest_path(client.get_experiment(exp).artifact_location)
    restored, model, trace = uuid.uuid4().hex, f"m-{uuid.uuid4().hex}", f"tr-{uuid.uuid4().hex}"
    planted = {
        f"{base}/{restored}/artifacts/model/MLmodel": os.urandom(300),
        f"{base}/{restored}/artifacts/data.bin": os.urandom(5000),
        f"{base}/models/{model}/artifacts/MLmodel": os.urandom(200),
        f"{base}/traces/{trace}/artifacts/traces.json": os.urandom(100),
    }
    for path, data in planted.items():
        check_equal(f"PUT {path}", 200, raw_request(PROXY_URL, "PUT", f"{ARTIFACTS}/{path}", data).status)
    before = digests(s3, listing(s3, base))

    dry = orphan_gc("--under", base)
    orphans = [f"logged_model {base}/models/{model}/", f"run {base}/{restored}/", f"trace {base}/traces/{trace}/"]
    check_equal("orphans found (dry run, the default)", orphans, lines_starting(dry, "gc: orphan "))
    check(all(line.endswith("(younger than 7d: kept)") for line in dry.splitlines() if line.startswith("gc: orphan ")),
          "the default age threshold keeps fresh orphans", "younger than 7d", dry)
    check_equal("objects after a dry run", before, digests(s3, listing(s3, base)))

    process = subprocess.Popen(
        [PROXY_BIN, "gc", "--delete", "--older-than", "0", "--under", base, "--concurrency", "1",
         "--pause-before-delete"],
        env=proxy_gc_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = Lines(process)
    try:
        check_equal("first pause", f"gc: paused before re-checking run {base}/{restored}/ (press Enter)",
                    lines.until("gc: paused"))
        # While gc waits: the run comes back (as from a restored database), and a new run writes.
        store = SqlAlchemyStore(backend_uri(), "mlflow-artifacts:/")
        with mock.patch("uuid.uuid4", return_value=uuid.UUID(hex=restored)):
            back = store.create_run(exp, user_id="e2e", start_time=0, tags=[], run_name="restored")
        check_equal("id of the restored run", restored, back.info.run_id)
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(files["small"] / "a.txt"))
        new = run.info
        process.stdin.write("\n")
        process.stdin.flush()
        for what in (f"logged_model {base}/models/{model}/", f"trace {base}/traces/{trace}/"):
            check_equal("next pause", f"gc: paused before re-checking {what} (press Enter)", lines.until("gc: paused"))
            process.stdin.write("\n")
            process.stdin.flush()
        process.stdin.close()
        out = lines.rest()
        process.wait(timeout=300)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    check_equal(f"exit code of gc --delete\n{out}\n{err}", 0, process.returncode)
    check(f"gc: kept run {base}/{restored}/: MLflow has the run again (re-checked just before deleting)" in out,
          "the run that came back is kept", "kept", out)
    check_equal("prefixes deleted", [f"logged_model {base}/models/{model}/", f"trace {base}/traces/{trace}/"],
                lines_starting(out, "gc: deleted orphan "))
    expected = {k: v for k, v in before.items()
                if not k.startswith((key(f"{base}/models/{model}/"), key(f"{base}/traces/{trace}/")))}
    new_keys = listing(s3, dest_path(new.artifact_uri))
    check_equal("objects of the new run", [key(f"{dest_path(new.artifact_uri)}/a.txt")], sorted(new_keys))
    expected.update(digests(s3, new_keys))
    check_equal("objects after gc --delete: the restored run, the live and the new run intact", expected,
                digests(s3, listing(s3, base)))
    check(bool(listing(s3, dest_path(live.artifact_uri))), "objects of the live run", "kept", "none")
