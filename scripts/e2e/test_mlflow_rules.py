"""MLflow's rules on the artifact routes, release by release: the same requests to the proxy and to stock
MLflow (its internal port) must be answered alike, on 3.17.2 and on 3.18.0, and leave the same objects.

- Skill content (3.18): PUT, DELETE and `mpu/*` under `skills/` (in any spelling MLflow resolves there) are
  refused with stock's 403 and its exact body; on 3.17.2 they are ordinary writes, done by both.
- server-info: the same document, but for the transfer flags the proxy sets to what it offers.
- `mpu/*` `path`: 3.18 clients send the file's name, older ones its local path (Windows paths too): the
  object lands where stock MLflow puts it.
- A 3.17.2 client against 3.18 through the proxy: its multipart upload and presigned download still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from urllib.parse import quote

import pytest

from e2e_util import (
    BUCKET,
    BUCKET_PREFIX,
    MLFLOW_URL,
    PROXY_URL,
    SETTINGS,
    check_equal,
    fmt,
    raw_request,
    request_retried,
    sha256_bytes,
)

A = "/api/2.0/mlflow-artifacts/artifacts"
J = "/ajax-api/2.0/mlflow-artifacts/artifacts"
MPU = "/api/2.0/mlflow-artifacts/mpu"
JSON_CT = {"Content-Type": "application/json"}
HOST = {"Host": "localhost"}
ID = uuid.uuid4().hex[:8]
# Each side works on a skill tree of its own; both names have the same length ({S} in the cases).
SKILL = {"proxy": f"skills/e2e-{ID}-p", "stock": f"skills/e2e-{ID}-s"}
# A folder outside the skill tree whose `workspaces/<ws>/skills` child is inside it ({W}).
WS = {"proxy": f"workspaces/e2e-{ID}-p", "stock": f"workspaces/e2e-{ID}-s"}
TOKEN = "0123456789abcdef0123456789abcdef"


def key(path: str) -> str:
    return f"{BUCKET_PREFIX}/{path}" if BUCKET_PREFIX else path


def objects(s3, prefix: str) -> dict[str, str]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key(prefix)):
        for o in page.get("Contents", []):
            data = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            out[o["Key"][len(key(prefix)):]] = sha256_bytes(data)
    return dict(sorted(out.items()))


# (id, method, target, body); {S}: the side's skill tree, {W}: its workspaces/ folder.
SKILL_CASES = [
    ("put", "PUT", A + "/{S}/" + TOKEN + "/SKILL.md", b"changed"),
    ("put-ajax", "PUT", J + "/{S}/" + TOKEN + "/SKILL.md", b"changed"),
    ("put-new-file", "PUT", A + "/{S}/" + TOKEN + "/extra.txt", b"new"),
    ("put-upper-case", "PUT", A + "/{SU}/" + TOKEN + "/SKILL.md", b"upper"),
    # 3.18 only: on 3.17 a write whose key keeps a `.` segment (the store-dependent dot-segment case of
    # test_differential.py).
    pytest.param(("put-dot-segment", "PUT", A + "/./{S}/" + TOKEN + "/dot.md", b"dot"),
                 marks=pytest.mark.mlflow(min="3.18"), id="put-dot-segment"),
    ("put-double-slash", "PUT", A + "/{S}//" + TOKEN + "/dbl.md", b"dbl"),
    ("put-encoded", "PUT", A + "/{SE}/" + TOKEN + "/enc.md", b"encoded"),
    ("put-under-workspaces", "PUT", A + "/{W}/skills/x/f.md", b"ws"),
    ("delete-file", "DELETE", A + "/{S}/" + TOKEN + "/SKILL.md", None),
    ("delete-tree", "DELETE", A + "/{S}", None),
    ("mpu-create", "POST", MPU + "/create/{S}/" + TOKEN, b'{"path": "big.bin", "num_parts": 1}'),
    ("mpu-create-name-makes-skills", "POST", MPU + "/create/{W}", b'{"path": "skills", "num_parts": 1}'),
    # 3.18 only: on 3.17 an unknown upload id reaches the store (test_differential.py's mpu cases).
    pytest.param(("mpu-complete", "POST", MPU + "/complete/{S}/" + TOKEN,
                  b'{"path": "big.bin", "upload_id": "x", "parts": [{"part_number": 1, "etag": "e"}]}'),
                 marks=pytest.mark.mlflow(min="3.18"), id="mpu-complete"),
    pytest.param(("mpu-abort", "POST", MPU + "/abort/{S}/" + TOKEN, b'{"path": "big.bin", "upload_id": "x"}'),
                 marks=pytest.mark.mlflow(min="3.18"), id="mpu-abort"),
    # Reads stay allowed.
    ("get", "GET", A + "/{S}/" + TOKEN + "/SKILL.md", None),
    ("list", "GET", A + "?path={SQ}%2F" + TOKEN, None),
]
SEED = {f"{TOKEN}/SKILL.md": b"# a skill\n", f"{TOKEN}/files/run.py": b"print(1)\n"}


def render(target: str, side: str) -> str:
    s = SKILL[side]
    return (
        target.replace("{SQ}", quote(s, safe=""))
        .replace("{SU}", s.replace("skills/", "SKILLS/"))
        .replace("{SE}", s.replace("skills/", "sk%69lls/"))
        .replace("{S}", s)
        .replace("{W}", WS[side])
    )


def view(r, side: str) -> dict:
    """What a client sees, the side's names replaced; MLflow's multipart URLs point at the store, the
    proxy's at itself (docs/multipart.md), so only their shape is compared."""
    body = r.body
    for name in (SKILL[side], WS[side]):
        body = body.replace(name.encode(), b"{S}").replace(quote(name, safe="").encode(), b"{S}")
    text: object = body.decode("utf-8", "replace")
    if r.headers.get("content-type", "").startswith("application/json") and body:
        text = json.loads(body)
        if isinstance(text, dict) and "upload_id" in text:
            text = {"upload_id": "<id>", "credentials": len(text.get("credentials", []))}
    return {"status": r.status, "content-type": r.headers.get("content-type"), "body": text}


@pytest.mark.parametrize("case", SKILL_CASES,
                         ids=[c[0] if isinstance(c, tuple) else None for c in SKILL_CASES])
def test_skill_content_writes_answer_as_stock(case, s3):
    case_id, method, target, body = case
    answers, states = {}, {}
    for side, base in (("proxy", PROXY_URL), ("stock", MLFLOW_URL)):
        for rel, data in SEED.items():
            s3.put_object(Bucket=BUCKET, Key=key(f"{SKILL[side]}/{rel}"), Body=data)
        headers = {**HOST, **(JSON_CT if method == "POST" else {})}
        r = request_retried(base, method, render(target, side), body, headers)
        answers[side] = view(r, side)
        states[side] = (objects(s3, SKILL[side] + "/"), objects(s3, SKILL[side].replace("skills/", "SKILLS/") + "/"),
                        objects(s3, WS[side] + "/"))
        if r.status == 200 and b"upload_id" in r.body:
            upload_id = r.json()["upload_id"]
            raw_request(base, "POST", render(target, side).replace("/create/", "/abort/"),
                        json.dumps({"path": json.loads(body)["path"], "upload_id": upload_id}).encode(),
                        {**HOST, **JSON_CT})
        for prefix in (SKILL[side], SKILL[side].replace("skills/", "SKILLS/"), WS[side]):
            for k in objects(s3, prefix + "/"):
                s3.delete_object(Bucket=BUCKET, Key=key(f"{prefix}/{k}"))
    check_equal(f"{method} {target}: the proxy's answer (stock MLflow's is expected)", answers["stock"], answers["proxy"])
    check_equal(f"{method} {target}: objects afterwards", states["stock"], states["proxy"])
    if SETTINGS["STACK_MLFLOW_VERSION"].startswith("3.18") and method != "GET":
        # On 3.18 every write is the immutable-content refusal (the reads aside).
        assert answers["proxy"]["status"] == 403 and "immutable" in json.dumps(answers["proxy"]["body"]), fmt(answers)


def test_server_info_is_stocks_with_the_proxys_transfers():
    stock = raw_request(MLFLOW_URL, "GET", "/api/3.0/mlflow/server-info", headers=HOST).json()
    for path in ("/api/3.0/mlflow/server-info", "/ajax-api/3.0/mlflow/server-info"):
        proxy = raw_request(PROXY_URL, "GET", path, headers=HOST).json()
        expected = dict(stock, multipart_uploads_enabled=True, multipart_downloads_enabled=True)
        if "model_artifact_presigned_downloads_supported" in stock:
            # 3.18's UI would ask for an S3 URL the client cannot reach (README: deliberate differences).
            expected["model_artifact_presigned_downloads_supported"] = False
        check_equal(f"server-info through the proxy ({path})", expected, proxy)
        check_equal("the order of server-info's keys", list(stock), list(proxy))


# `path` of mpu/create and mpu/complete as clients send it: 3.18 the file's name, older clients the
# local path. 3.18's server keeps the name after `/` and `\`; 3.17.2's took os.path.basename.
PATH_FORMS = {
    "name": "f.bin",
    "posix-path": "/tmp/some dir/f.bin",
    "windows-path": "C:\\Users\\me\\f.bin",
    "relative": "sub/f.bin",
}


def multipart_upload(base: str, directory: str, path: str, data: bytes) -> int:
    """create, one part PUT to the URL handed out (S3's for stock, the proxy's for the proxy), complete."""
    import requests

    # The client's own Host (the proxy's URLs are built from it).
    create = raw_request(base, "POST", f"{MPU}/create/{directory}",
                         json.dumps({"path": path, "num_parts": 1}).encode(), JSON_CT)
    assert create.status == 200, (base, create.status, create.body[:300])
    answer = create.json()
    credential = answer["credentials"][0]
    put = requests.put(credential["url"], data=data, headers=credential.get("headers") or {}, timeout=60)
    assert put.status_code == 200, (put.status_code, put.text[:300])
    complete = raw_request(base, "POST", f"{MPU}/complete/{directory}", json.dumps({
        "path": path, "upload_id": answer["upload_id"],
        "parts": [{"part_number": 1, "etag": put.headers["ETag"]}],
    }).encode(), JSON_CT)
    return complete.status


@pytest.mark.parametrize("form", list(PATH_FORMS))
def test_multipart_path_forms_land_where_stock_puts_them(form, s3):
    path = PATH_FORMS[form]
    data = os.urandom(1000)
    keys = {}
    for side, base in (("proxy", PROXY_URL), ("stock", MLFLOW_URL)):
        directory = f"e2e-mpu-{ID}-{side[0]}/{form}"
        status = multipart_upload(base, directory, path, data)
        keys[side] = (status, {k: v for k, v in objects(s3, directory + "/").items()})
        for k in keys[side][1]:
            s3.delete_object(Bucket=BUCKET, Key=key(f"{directory}/{k}"))
    stock, proxy = keys["stock"], keys["proxy"]
    if form == "windows-path" and SETTINGS["STACK_MLFLOW_VERSION"] == "3.17.2":
        # Deliberate: the proxy takes 3.18's rule on every version (README); 3.17.2 stored the whole
        # Windows path as one key segment.
        check_equal("3.17.2's key for a Windows path", (200, {"C:\\Users\\me\\f.bin": sha256_bytes(data)}), stock)
        check_equal("the proxy's key for a Windows path", (200, {"f.bin": sha256_bytes(data)}), proxy)
        return
    check_equal(f"mpu path {path!r}: status and the object's key", stock, proxy)
    assert proxy == (200, {"f.bin": sha256_bytes(data)}), proxy


OLD_CLIENT = """
import os, sys, mlflow
from mlflow.tracking import MlflowClient
assert mlflow.__version__ == "3.17.2", mlflow.__version__
work, experiment = sys.argv[1], sys.argv[2]
data = os.urandom(11 << 20)
src = os.path.join(work, "old-client.bin")
open(src, "wb").write(data)
mlflow.set_experiment(experiment)
with mlflow.start_run() as run:
    mlflow.log_artifact(src, "old")
out = MlflowClient().download_artifacts(run.info.run_id, "old/old-client.bin", os.path.join(work, "d"))
assert open(out, "rb").read() == data
print("ok", run.info.run_id)
"""


@pytest.mark.mlflow(min="3.18")
@pytest.mark.parametrize("multipart", [False, True], ids=["plain", "multipart-env"])
def test_a_3_17_client_still_works_against_3_18(tmp_path, multipart):
    """The pinned 3.17.2 client (the pin's venv) against 3.18 through the proxy. It reads no server-info:
    it PUTs and GETs, or, with MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD, uploads in parts sending its local
    path (not the name) in `path`, which 3.18's rule takes the name of."""
    from e2e_util import LOGS, LogWatch

    python = os.path.join(SETTINGS["STACK_PIN_VENV"], "bin", "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", MLFLOW_TRACKING_URI=PROXY_URL)
    if multipart:
        # S3's smallest part is 5 MiB: 11 MiB is three parts.
        env.update(MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD="true", MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE=str(1 << 20),
                   MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE=str(5 << 20))
    proxy_log = LogWatch(LOGS / "proxy.log")
    done = subprocess.run([python, "-c", OLD_CLIENT, str(tmp_path), f"e2e-old-client-{ID}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, (done.stdout[-2000:], done.stderr[-4000:])
    log = proxy_log.text()
    # It reads server-info's multipart_downloads_enabled (the proxy's true): downloads go through a
    # presigned URL on the proxy.
    routes = {"upload": log.count('route="upload"'), "mpu": log.count('route="mpu"'),
              "parts": log.count('route="signed_part"'), "presigned": log.count('route="presigned"'),
              "objects": log.count('route="signed_object"') > 0}
    check_equal("routes the 3.17.2 client used through the proxy",
                {"upload": 0, "mpu": 2, "parts": 3, "presigned": 1, "objects": True} if multipart
                else {"upload": 1, "mpu": 0, "parts": 0, "presigned": 1, "objects": True},
                routes)
