"""MLflow objects whose files travel the artifact routes: a pyfunc model (logged model, registry,
model version download URI) and a trace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from e2e_util import (
    ARTIFACTS,
    BUCKET,
    BUCKET_PREFIX,
    MLFLOW_URL,
    PROXY_URL,
    check,
    check_equal,
    raw_request,
    sha256_bytes,
    tree_digest,
    wait_for,
)
from urllib.parse import quote


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2 + 1


def dest_path(artifact_uri: str) -> str:
    """mlflow-artifacts:/1/models/m-x/artifacts -> 1/models/m-x/artifacts"""
    check(artifact_uri.startswith("mlflow-artifacts:/"), "artifact URI scheme", "mlflow-artifacts:/...", artifact_uri)
    return artifact_uri[len("mlflow-artifacts:") :].lstrip("/")


def s3_key(path: str) -> str:
    return f"{BUCKET_PREFIX}/{path}" if BUCKET_PREFIX else path


def test_pyfunc_model_log_register_load(tmp_path, s3):
    mlflow.set_experiment("e2e-models")
    frame = pd.DataFrame({"a": [1.0, 2.5, -3.0], "b": [0.0, 10.0, 7.25]})
    expected = Doubler().predict(None, frame)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Doubler(), pip_requirements=[f"mlflow=={mlflow.__version__}"]
        )

    # a logged model (MLflow 3): its files live under <exp>/models/<model id>/artifacts
    logged = mlflow.get_logged_model(info.model_id)
    path = dest_path(logged.artifact_location)
    check(
        path.split("/")[1:] == ["models", info.model_id, "artifacts"],
        "logged model artifact location",
        f"mlflow-artifacts:/<exp>/models/{info.model_id}/artifacts",
        logged.artifact_location,
    )
    listing = raw_request(PROXY_URL, "GET", f"{ARTIFACTS}?path={quote(path, safe='')}")
    check_equal("status of the proxy's list of the logged model's folder", 200, listing.status)
    names = sorted(f["path"] for f in listing.json().get("files", []))
    check({"MLmodel", "python_model.pkl"} <= set(names), "files of the logged model", "MLmodel, python_model.pkl, ...", names)
    stock_listing = raw_request(MLFLOW_URL, "GET", f"{ARTIFACTS}?path={quote(path, safe='')}")
    check_equal("list of the logged model's folder: stock MLflow (expected) vs proxy (got)", stock_listing.json(), listing.json())

    # the registry
    name = f"e2e-doubler-{uuid.uuid4().hex[:10]}"
    mv = mlflow.register_model(info.model_uri, name)
    check_equal("version of a newly registered model", "1", str(mv.version))
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    got = loaded.predict(frame)
    check_equal("predictions of models:/name/1", expected.to_dict("list"), got.to_dict("list"))
    got_by_id = mlflow.pyfunc.load_model(info.model_uri).predict(frame)
    check_equal(f"predictions of {info.model_uri}", expected.to_dict("list"), got_by_id.to_dict("list"))

    # the model version's download URI resolves and downloads; every file equals the stored object
    uri = MlflowClient().get_model_version_download_uri(name, "1")
    mv_path = dest_path(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "mv")))
    got_files = tree_digest(local)
    check("MLmodel" in got_files, "files downloaded from the model version's download URI", "MLmodel among them", sorted(got_files))
    stored = {
        rel: sha256_bytes(s3.get_object(Bucket=BUCKET, Key=s3_key(f"{mv_path}/{rel}"))["Body"].read())
        for rel in got_files
    }
    check_equal(f"SHA-256 of files downloaded from {uri} vs the objects in S3", stored, got_files)
    local2 = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1", dst_path=str(tmp_path / "mv2")))
    got2 = tree_digest(local2)
    got2.pop("registered_model_meta", None)  # written locally by the client for models:/ URIs
    check_equal("models:/name/1 downloads the same files as the download URI", got_files, got2)


@mlflow.trace(name="outer")
def _outer(x):
    return _inner(x) + 1


@mlflow.trace
def _inner(x):
    return x * 2


def test_trace_spans_and_artifact(monkeypatch):
    # With a SQL backend the client may send the spans to the tracking store (/v1/traces) and then
    # skip traces.json, depending on which of its two background calls lands first. Keep the spans
    # off that path, as a server without span ingestion would, so that the trace's data always
    # travels the artifact routes: the client PUTs traces.json through the proxy, and MLflow's
    # get_trace reads it back from S3 itself (both sides must agree on the key).
    from mlflow.tracing.export.mlflow_v3 import MlflowV3SpanExporter

    monkeypatch.setattr(MlflowV3SpanExporter, "_export_spans_incrementally", lambda self, spans: None)
    mlflow.set_experiment("e2e-traces")
    check_equal("return value of the traced function", 7, _outer(3))
    trace_id = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()

    def stored_trace():
        try:
            return mlflow.get_trace(trace_id)
        except Exception:
            return None

    trace = wait_for(stored_trace)
    check(trace is not None, f"mlflow.get_trace({trace_id!r})", "a trace", trace)
    location = trace.info.tags.get("mlflow.artifactLocation", "")
    path = dest_path(location)
    check(
        path.split("/")[1:] == ["traces", trace_id, "artifacts"],
        "trace artifact location",
        f"mlflow-artifacts:/<exp>/traces/{trace_id}/artifacts",
        location,
    )
    url = f"{ARTIFACTS}/{quote(path)}/traces.json"
    wait_for(lambda: raw_request(PROXY_URL, "GET", url).status == 200)
    resp = raw_request(PROXY_URL, "GET", url)
    check_equal(f"status of GET {url} through the proxy (body: {resp.body[:300]!r})", 200, resp.status)
    names = sorted(s["name"] for s in json.loads(resp.body)["spans"])
    check_equal("span names in traces.json, downloaded through the proxy", ["_inner", "outer"], names)

    # The spans MLflow serves come from that file.
    trace = wait_for(lambda: (t := stored_trace()) is not None and len(t.data.spans) == 2 and t)
    check(bool(trace), f"mlflow.get_trace({trace_id!r}) with its spans", "a trace with 2 spans", trace)
    spans = sorted((s.name, s.inputs, s.outputs) for s in trace.data.spans)
    check_equal("spans of the trace (name, inputs, outputs)", [("_inner", {"x": 3}, 6), ("outer", {"x": 3}, 7)], spans)
