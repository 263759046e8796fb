"""Differential test: the same raw artifact requests to the proxy (PROXY_URL) and to stock MLflow's own
artifact routes (MLFLOW_URL, its internal port). Statuses, content types, bodies (JSON parsed) and the
headers a user sees must be equal, except for the short list of deliberate differences in DELIBERATE,
each with its reason; for those, both answers are checked against what the list says.

Each side works on its own copy of the same objects (seeded straight into S3 by the harness), so that
writes and deletes can be compared too: after a mutating request, the objects under each side's
prefix must be the same. Side prefixes have the same length and are replaced by {P} before comparing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest

from e2e_util import (
    BUCKET,
    BUCKET_PREFIX,
    MLFLOW_URL,
    PROXY_URL,
    STORE,
    Response,
    fmt,
    http_get,
    raw_request,
    sha256_bytes,
)

A = "/api/2.0/mlflow-artifacts/artifacts"
J = "/ajax-api/2.0/mlflow-artifacts/artifacts"
MPU = "/api/2.0/mlflow-artifacts/mpu"
PRESIGNED = "/api/2.0/mlflow-artifacts/presigned"
JSON_CT = {"Content-Type": "application/json"}

RANDOM_PNG = os.urandom(3000)
BIG = os.urandom(3 << 20)
TREE: dict[str, bytes] = {
    "hello.txt": b"hello world\n",
    "empty.bin": b"",
    "sub/a.json": b'{"a": 1}',
    "sub/deeper/x.csv": b"1,2\n",
    "a b.txt": b"space",
    "日本.txt": "jp".encode(),
    'q"uote.txt': b"q",
    "plus/plus+sign.txt": b"plus",
    "back\\slash.txt": b"backslash",
    "MLmodel": b"flavors: {}\n",
    "img.png": RANDOM_PNG,
    "doc.pdf": b"%PDF-1.4\n",
    "noext": b"no extension",
    "big.bin": BIG,
    "ünï dir/x y.txt": b"unicode dir",
    "a..b.txt": b"two dots inside a name",
}
# Writes and deletes work on a fresh, smaller copy each.
MUT_TREE = {k: TREE[k] for k in ("hello.txt", "empty.bin", "sub/a.json", "sub/deeper/x.csv", "a b.txt", "ünï dir/x y.txt")}


@dataclass
class Case:
    id: str
    method: str
    path: str  # {P}: the side's prefix; {PQ}: the same, form-encoded as the client sends it in ?path=
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    mutates: bool = False


def C(id, method, path, body=None, headers=None, mutates=None):
    if mutates is None:
        mutates = method in ("PUT", "DELETE", "POST")
    return Case(id, method, path, body, headers or {}, mutates)


CASES = [
    # ---- list
    C("list-dir", "GET", A + "?path={PQ}"),
    C("list-dir-slashes-raw", "GET", A + "?path={P}"),
    C("list-sub", "GET", A + "?path={PQ}%2Fsub"),
    C("list-deeper", "GET", A + "?path={PQ}%2Fsub%2Fdeeper"),
    C("list-unicode-dir", "GET", A + "?path={PQ}%2F%C3%BCn%C3%AF+dir"),
    C("list-plus", "GET", A + "?path={PQ}%2Fplus"),
    C("list-a-file", "GET", A + "?path={PQ}%2Fhello.txt"),
    C("list-missing", "GET", A + "?path={PQ}%2Fnope"),
    C("list-trailing-slash", "GET", A + "?path={PQ}%2Fsub%2F"),
    C("list-double-slash", "GET", A + "?path={PQ}%2F%2Fsub"),
    C("list-dot-segment", "GET", A + "?path={PQ}%2F.%2Fsub"),
    C("list-dot-encoded", "GET", A + "?path={PQ}%2F%252E%2Fsub"),
    C("list-dot-trailing", "GET", A + "?path={PQ}%2Fsub%2F."),
    C("list-double-encoded", "GET", A + "?path={PQ}%252Fsub"),
    C("list-unknown-param", "GET", A + "?path={PQ}&foo=bar"),
    C("list-ajax", "GET", J + "?path={PQ}"),
    C("list-empty-path", "GET", A + "?path="),
    C("list-no-path", "GET", A),
    C("list-dotdot", "GET", A + "?path={PQ}%2F..%2F..%2F.."),
    C("list-dotdot-raw", "GET", A + "?path=../.."),
    C("list-absolute", "GET", A + "?path=%2Fetc"),
    C("list-double-encoded-dotdot", "GET", A + "?path=%252e%252e"),
    C("list-hash", "GET", A + "?path={PQ}%2Fa%23b"),
    C("list-file-uri", "GET", A + "?path=file%3A%2F%2F%2Fetc"),
    C("list-windows-abs", "GET", A + "?path=C%3A%2FWindows"),
    C("list-unc", "GET", A + "?path=%5C%5Csrv%5Cshare"),
    C("list-malformed-ipv6", "GET", A + "?path=%2F%2F%5Bx"),
    # ---- download
    C("get-file", "GET", A + "/{P}/hello.txt"),
    C("get-empty-file", "GET", A + "/{P}/empty.bin"),
    C("get-json-is-text", "GET", A + "/{P}/sub/a.json"),
    C("get-csv", "GET", A + "/{P}/sub/deeper/x.csv"),
    C("get-space", "GET", A + "/{P}/a%20b.txt"),
    C("get-unicode", "GET", A + "/{P}/%E6%97%A5%E6%9C%AC.txt"),
    C("get-unicode-dir", "GET", A + "/{P}/%C3%BCn%C3%AF%20dir/x%20y.txt"),
    C("get-quote", "GET", A + "/{P}/q%22uote.txt"),
    C("get-plus", "GET", A + "/{P}/plus/plus+sign.txt"),
    C("get-plus-encoded", "GET", A + "/{P}/plus/plus%2Bsign.txt"),
    C("get-backslash", "GET", A + "/{P}/back%5Cslash.txt"),
    C("get-mlmodel", "GET", A + "/{P}/MLmodel"),
    C("get-png", "GET", A + "/{P}/img.png"),
    C("get-pdf", "GET", A + "/{P}/doc.pdf"),
    C("get-no-extension", "GET", A + "/{P}/noext"),
    C("get-3mib", "GET", A + "/{P}/big.bin"),
    C("get-ajax", "GET", J + "/{P}/hello.txt"),
    C("get-double-encoded-space", "GET", A + "/{P}/a%2520b.txt"),
    C("get-encoded-slash", "GET", A + "/{P}/sub%2Fa.json"),
    C("get-trailing-encoded-hash", "GET", A + "/{P}/hello.txt%23"),
    C("get-trailing-encoded-qmark", "GET", A + "/{P}/hello.txt%3F"),
    C("get-dot-segment", "GET", A + "/{P}/./hello.txt"),
    C("get-dot-encoded", "GET", A + "/{P}/%2E/hello.txt"),
    C("get-dot-double-encoded", "GET", A + "/{P}/%252E/hello.txt"),
    C("get-dot-first", "GET", A + "/./{P}/hello.txt"),
    C("get-dot-trailing", "GET", A + "/{P}/sub/."),
    C("get-dot-then-dotdot", "GET", A + "/{P}/./sub/../hello.txt"),
    C("get-dots-in-name", "GET", A + "/{P}/a..b.txt"),
    C("get-double-slash", "GET", A + "/{P}//hello.txt"),
    C("get-query-ignored", "GET", A + "/{P}/hello.txt?x=1"),
    C("get-range", "GET", A + "/{P}/big.bin", headers={"Range": "bytes=0-99"}),
    C("get-range-malformed", "GET", A + "/{P}/hello.txt", headers={"Range": "bytes=abc"}),
    C("get-range-reversed", "GET", A + "/{P}/hello.txt", headers={"Range": "bytes=5-1"}),
    C("get-range-other-unit", "GET", A + "/{P}/hello.txt", headers={"Range": "items=0-1"}),
    C("get-range-long-suffix", "GET", A + "/{P}/hello.txt", headers={"Range": "bytes=-5000"}),
    C("get-if-match-stale", "GET", A + "/{P}/hello.txt", headers={"If-Match": '"stale"'}),
    C("get-accept-ignored", "GET", A + "/{P}/sub/a.json", headers={"Accept": "application/json"}),
    C("get-missing", "GET", A + "/{P}/nope.txt"),
    C("get-missing-unicode", "GET", A + "/{P}/n%C3%B6pe.txt"),
    C("get-control-char", "GET", A + "/{P}/a%01b"),
    C("get-nul", "GET", A + "/{P}/a%00b"),
    C("get-backslash-dotdot", "GET", A + "/1%5C..%5C..%5Cfoo"),
    C("get-directory", "GET", A + "/{P}/sub"),
    C("get-directory-slash", "GET", A + "/{P}/sub/"),
    # ---- unsafe paths (spec §5): all "Invalid path"
    C("get-dotdot-raw", "GET", A + "/../../etc/passwd"),
    C("get-dotdot-after-prefix", "GET", A + "/{P}/../../../etc/passwd"),
    C("get-dotdot-encoded", "GET", A + "/%2e%2e/%2e%2e/etc/passwd"),
    C("get-dotdot-encoded-slash", "GET", A + "/..%2f..%2fetc%2fpasswd"),
    C("get-dotdot-double-encoded", "GET", A + "/%252e%252e/x"),
    C("get-absolute", "GET", A + "//etc/passwd"),
    C("get-absolute-encoded", "GET", A + "/%2Fetc%2Fpasswd"),
    C("get-windows-abs", "GET", A + "/C:/Windows/win.ini"),
    C("get-windows-unc", "GET", A + "/%5C%5Csrv%5Cshare%5Cx"),
    C("get-hash", "GET", A + "/{P}/a%23b"),
    C("get-raw-hash", "GET", A + "/{P}/hello.txt#frag"),
    C("get-file-uri", "GET", A + "/file:%2F%2F%2Fetc%2Fpasswd"),
    C("get-dotdot-ajax", "GET", J + "/%2e%2e/%2e%2e/etc/passwd"),
    C("get-malformed-ipv6", "GET", A + "/%2F%2F%5Bx"),
    C("get-scheme-like-missing", "GET", A + "/Zq:nope.txt"),
    # ---- other methods and headers
    C("head-file", "HEAD", A + "/{P}/hello.txt"),
    C("post-on-artifact", "POST", A + "/{P}/hello.txt", b"", mutates=False),
    C("patch-on-artifact", "PATCH", A + "/{P}/hello.txt", b"x", mutates=False),
    C("post-on-list", "POST", A, b"", mutates=False),
    C("options-plain", "OPTIONS", A + "/{P}/hello.txt"),
    C(
        "options-cors-preflight",
        "OPTIONS",
        A + "/{P}/hello.txt",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "PUT"},
    ),
    C("get-workspace-header", "GET", A + "/{P}/hello.txt", headers={"X-MLFLOW-WORKSPACE": "team-a"}),
    C("list-workspace-header", "GET", A + "?path={PQ}", headers={"X-MLFLOW-WORKSPACE": "team-a"}),
    C("get-foreign-host", "GET", A + "/{P}/hello.txt", headers={"Host": "evil.example.com"}),
    C("list-foreign-host", "GET", A + "?path={PQ}", headers={"Host": "evil.example.com"}),
    C("get-foreign-origin", "GET", A + "/{P}/hello.txt", headers={"Origin": "http://evil.example.com"}),
    # ---- multipart upload and presigned download
    C("presigned-file", "GET", PRESIGNED + "/{P}/hello.txt"),
    C("presigned-missing", "GET", PRESIGNED + "/{P}/nope.txt"),
    C("presigned-dot-segment", "GET", PRESIGNED + "/{P}/./hello.txt"),
    C("mpu-create", "POST", MPU + "/create/{P}", b'{"path": "x.bin", "num_parts": 2}', JSON_CT),
    C(
        "mpu-complete",
        "POST",
        MPU + "/complete/{P}",
        b'{"path": "x.bin", "upload_id": "nope", "parts": [{"part_number": 1, "etag": "\\"x\\""}]}',
        JSON_CT,
    ),
    C("mpu-abort", "POST", MPU + "/abort/{P}", b'{"path": "x.bin", "upload_id": "nope"}', JSON_CT),
    # ---- uploads
    C("put-new", "PUT", A + "/{P}/new.txt", b"new file"),
    C("put-overwrite", "PUT", A + "/{P}/hello.txt", b"replaced"),
    C("put-empty", "PUT", A + "/{P}/zero.bin", b""),
    C("put-nested-new-dir", "PUT", A + "/{P}/n1/n2/n3.txt", b"deep"),
    C("put-unicode", "PUT", A + "/{P}/%C3%BC%20n%C3%AAw%20%E6%97%A5.txt", b"unicode"),
    C("put-double-encoded", "PUT", A + "/{P}/x%2520y.txt", b"double"),
    C("put-encoded-slash", "PUT", A + "/{P}/es%2Fz.txt", b"encoded slash"),
    C("put-plus", "PUT", A + "/{P}/p+q.txt", b"plus"),
    C("put-ajax", "PUT", J + "/{P}/ajax.txt", b"ajax"),
    C("put-trailing-slash", "PUT", A + "/{P}/dir/", b"x"),
    C("put-dot-segment", "PUT", A + "/{P}/./dot.txt", b"dot"),
    C("put-dot-encoded", "PUT", A + "/{P}/%2E/enc.txt", b"dot"),
    C("put-dot-first", "PUT", A + "/./{P}/first.txt", b"dot"),
    C("put-dot-trailing", "PUT", A + "/{P}/sub/.", b"dot"),
    C("put-dots-in-name", "PUT", A + "/{P}/c..d.txt", b"dots"),
    C("put-double-slash", "PUT", A + "/{P}//dbl.txt", b"dbl"),
    C("put-reserved-name", "PUT", A + "/{P}/.artifact.uploading.x", b"r"),
    C("put-onto-directory", "PUT", A + "/{P}/sub", b"x"),
    C("put-dotdot", "PUT", A + "/%2e%2e/x.txt", b"x"),
    C("put-dotdot-after-prefix", "PUT", A + "/{P}/../../../x.txt", b"x"),
    C("put-absolute", "PUT", A + "//etc/x.txt", b"x"),
    C("put-hash", "PUT", A + "/{P}/a%23b", b"x"),
    C("put-raw-hash", "PUT", A + "/{P}/sub/n.txt#frag", b"x"),
    C("put-foreign-origin", "PUT", A + "/{P}/o.txt", b"x", {"Origin": "http://evil.example.com"}),
    C("put-localhost-origin", "PUT", A + "/{P}/o.txt", b"x", {"Origin": "http://localhost:3000"}),
    C("put-foreign-host", "PUT", A + "/{P}/h.txt", b"x", {"Host": "evil.example.com"}),
    C("put-workspace-header", "PUT", A + "/{P}/w.txt", b"x", {"X-MLFLOW-WORKSPACE": "team-a"}),
    C("put-content-type-ignored", "PUT", A + "/{P}/ct.txt", b"{}", JSON_CT),
    C("put-scheme-like", "PUT", A + "/Zq:{P}/x.txt", b"scheme-like prefix is lower-cased"),
    # ---- deletes
    C("delete-file", "DELETE", A + "/{P}/hello.txt"),
    C("delete-directory", "DELETE", A + "/{P}/sub"),
    C("delete-directory-slash", "DELETE", A + "/{P}/sub/"),
    C("delete-missing", "DELETE", A + "/{P}/nope"),
    C("delete-unicode-dir", "DELETE", A + "/{P}/%C3%BCn%C3%AF%20dir"),
    C("delete-dot-segment", "DELETE", A + "/{P}/./sub"),
    C("delete-dot-trailing", "DELETE", A + "/{P}/sub/."),
    C("delete-space", "DELETE", A + "/{P}/a%20b.txt"),
    C("delete-everything-under-prefix", "DELETE", A + "/{P}"),
    C("delete-ajax", "DELETE", J + "/{P}/hello.txt"),
    C("delete-with-body", "DELETE", A + "/{P}/hello.txt", b'{"ignored": true}', JSON_CT),
    C("delete-root", "DELETE", A + "/"),
    C("delete-query-form", "DELETE", A + "?path={PQ}%2Fhello.txt"),
    C("delete-dotdot", "DELETE", A + "/%2e%2e/x"),
    C("delete-dotdot-after-prefix", "DELETE", A + "/{P}/../../.."),
    C("delete-absolute", "DELETE", A + "//etc/passwd"),
    C("delete-hash", "DELETE", A + "/{P}/a%23b"),
    C("delete-raw-hash", "DELETE", A + "/{P}/sub#zzz"),
    C("delete-foreign-origin", "DELETE", A + "/{P}/hello.txt", None, {"Origin": "http://evil.example.com"}),
    C("delete-foreign-host", "DELETE", A + "/{P}/hello.txt", None, {"Host": "evil.example.com"}),
]

MISSING_404 = (
    "a missing object: stock MLflow on S3 answers 500 INTERNAL_ERROR (a boto3 HeadObject 404 wrapped as an "
    "internal error), which the client retries 7 times with backoff; the proxy answers 404 RESOURCE_DOES_NOT_EXIST, "
    "which is what stock MLflow answers for a local destination"
)
URLS_ON_PROXY = (
    "stock MLflow on S3 answers presigned URLs on the S3 store itself, which clients outside its network cannot "
    "reach and which send the bytes around the proxy; the proxy answers the same JSON shape with URLs on the "
    "proxy (signed/part, signed/object; docs/multipart.md), so the url values and the upload id differ"
)
UNKNOWN_UPLOAD = (
    "an upload id the proxy did not hand out for this path: stock crashes (HTML 500, which the client "
    "retries); the proxy answers 404 before asking the store (upload ids are sealed to their key)"
)

DOT_MISSING = (
    MISSING_404 + " (on a store that keeps keys opaque, such as Garage, the key with the '.' segment is not "
    "'{P}/hello.txt'; s3s-fs keeps keys as files and serves that file, so there both sides answer 200)"
)

# Store quirks (docs/stores.md): differences that come from the test store s3s-fs, not from the proxy.
STORE_QUIRK_DOT_FOLDER = (
    "not the proxy: s3s-fs keeps keys as files, so the key '{P}/sub/.' is its folder '{P}/sub', and it answers "
    "500 to a HEAD of a folder; stock passes that on as 500, the proxy as 502 (the store failed). On Garage the "
    "key does not exist (stock 500, proxy 404)"
)
# On Garage stock and the proxy answer alike, so these cases are compared like any other there.
STORE_QUIRK_PLUS = (
    "not the proxy: a quirk of the test S3 server. s3s-fs ignores encoding-type=url in ListObjectsV2, boto3 "
    "(inside stock MLflow) then url-decodes the raw key and turns '+' into a space, so stock lists "
    "'plus sign.txt' for the object 'plus+sign.txt'; the proxy lists the real key (with MinIO or AWS stock does too)"
)


RANGE = (
    "Range requests: stock MLflow on S3 spools the object to a temp file and ignores Range (200, whole body); "
    "the proxy honours a single range (206 with Content-Range, and Accept-Ranges: bytes on every download), "
    "as stock MLflow does for a local destination"
)
CONDITIONAL = (
    "conditional requests: stock MLflow on S3 streams a temp-file copy and ignores If-Match (200, whole body); "
    "the proxy evaluates If-Match, If-None-Match, If-Range and the If-*-Since headers itself (RFC 9110 §13.2.2), "
    "so a stale If-Match is 412, as HTTP asks"
)
DIRECTORY = (
    "GET of a 'directory' on S3: stock downloads the whole subtree to a temp dir and then answers 200 with an "
    "empty body (a stock bug, spec §3.1); the proxy answers 400 with the message stock uses for a local destination"
)
DOUBLE_SLASH_DELETE = (
    "DELETE .../artifacts//etc/passwd: stock's Flask router answers 308 to .../artifacts/etc/passwd (the client "
    "follows it and deletes etc/passwd under the root); the proxy refuses the absolute path with 400 Invalid path, "
    "as stock's own GET and PUT do"
)
S3_WRITE_ERROR = (
    "the S3 store refuses the write (s3s-fs cannot store key 'sub' while 'sub/' is a folder on its disk: a "
    "test-store quirk; real S3 accepts it): stock answers an unstructured 500 'Internal Server Error', the proxy "
    "a 502 with an MLflow JSON error naming the S3 status; both are retried by the client"
)


PARSE_ERROR = (
    "a path Python's urlparse cannot parse ('//[x': an unterminated IPv6 host): stock answers 500 (plain text for "
    "a download, HTML for a list), which the client retries; the proxy answers 400 Invalid path"
)


DOT_NAME = (
    "a file named '.' ('{P}/sub/.'): stock MLflow fails writing it (its temp file would be its temp folder: "
    "an unstructured 500, which the client retries); the proxy refuses the path (400 Invalid path) rather than "
    "store a key stock cannot serve, and that a store resolving '.' segments would write as '{P}/sub'"
)


def D(reason, stock_status, proxy_status, proxy_error_code=None, stock_names=None, proxy_names=None,
      proxy_body=None, proxy_detail=None, stock_new=None, proxy_new=None):
    return {
        # keys that appeared under each side's prefix (mutating cases)
        "stock_new": stock_new,
        "proxy_new": proxy_new,
        "reason": reason,
        "stock_status": stock_status,
        "proxy_status": proxy_status,
        "proxy_error_code": proxy_error_code,
        "stock_names": stock_names,
        "proxy_names": proxy_names,
        "proxy_body": proxy_body,
        "proxy_detail": proxy_detail,
    }


# The written list of deliberate differences: case id -> what each side answers, and why.
DELIBERATE: dict[str, dict] = {
    "get-missing": D(MISSING_404, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "get-missing-unicode": D(MISSING_404, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "get-control-char": D(MISSING_404 + " (the key is the literal text a%01b)", 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "get-nul": D(MISSING_404 + " (the key is the literal text a%00b)", 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "get-backslash-dotdot": D(
        MISSING_404 + " (a backslash is a plain character on Linux)", 500, 404, "RESOURCE_DOES_NOT_EXIST"
    ),
    "presigned-file": D(URLS_ON_PROXY, 200, 200, None),
    "mpu-create": D(URLS_ON_PROXY, 200, 200, None),
    "mpu-complete": D(UNKNOWN_UPLOAD, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "mpu-abort": D(UNKNOWN_UPLOAD, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "get-range": D(RANGE, 200, 206, None, proxy_body=BIG[:100]),
    "get-range-long-suffix": D(
        RANGE + "; a suffix longer than the object is all of it (206 bytes 0-11/12)", 200, 206, None,
        proxy_body=TREE["hello.txt"],
    ),
    "get-if-match-stale": D(CONDITIONAL, 200, 412, None),
    "get-directory": D(DIRECTORY, 200, 400, None, proxy_detail="Artifact path refers to a directory, not a file: '{P}/sub'"),
    "get-directory-slash": D(DIRECTORY, 200, 400, None),
    "delete-absolute": D(DOUBLE_SLASH_DELETE, 308, 400, "INVALID_PARAMETER_VALUE"),
    "get-malformed-ipv6": D(PARSE_ERROR, 500, 400, "INVALID_PARAMETER_VALUE"),
    "list-malformed-ipv6": D(PARSE_ERROR, 500, 400, "INVALID_PARAMETER_VALUE"),
    "put-dot-trailing": D(DOT_NAME, 500, 400, "INVALID_PARAMETER_VALUE"),
    "get-scheme-like-missing": D(MISSING_404 + " (the key is 'zq:nope.txt': MLflow lower-cases a scheme-like start)", 500, 404, "RESOURCE_DOES_NOT_EXIST"),
}
STORE_QUIRKS: dict[str, dict[str, dict]] = {
    "s3s-fs": {
        "list-plus": D(STORE_QUIRK_PLUS, 200, 200, None, ["plus sign.txt"], ["plus+sign.txt"]),
        "put-onto-directory": D(S3_WRITE_ERROR, 500, 502, "TEMPORARILY_UNAVAILABLE"),
        "get-dot-trailing": D(STORE_QUIRK_DOT_FOLDER, 500, 502, "TEMPORARILY_UNAVAILABLE"),
        "presigned-dot-segment": D(
            URLS_ON_PROXY + " (s3s-fs serves the file '{P}/hello.txt' for the key '{P}/./hello.txt'; on Garage "
            "the key does not exist and both answer 404)", 200, 200, None),
    },
    "garage": {
        "get-double-slash": D(
            MISSING_404 + " (on a real S3 store the key '{P}//hello.txt' does not exist; s3s-fs maps it to the "
            "file {P}/hello.txt, so there both sides answer 200)", 500, 404, "RESOURCE_DOES_NOT_EXIST"),
        # "." segments: both sides use the key as MLflow names it ('{P}/./hello.txt'), which a real
        # store keeps apart from '{P}/hello.txt'; nothing was stored under it.
        "get-dot-segment": D(DOT_MISSING, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
        "get-dot-encoded": D(DOT_MISSING, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
        "get-dot-double-encoded": D(DOT_MISSING, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
        "get-dot-first": D(DOT_MISSING, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
        "get-dot-trailing": D(DOT_MISSING, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    },
}
DELIBERATE.update(STORE_QUIRKS[STORE])

# Proxy bugs a store shows (docs/stores.md), asserted exactly as they are so that a fix makes this
# test fail until the entry is removed. None known.
KNOWN_PROXY_BUGS: dict[str, dict[str, dict]] = {"s3s-fs": {}, "garage": {}}
DELIBERATE.update(KNOWN_PROXY_BUGS[STORE])


def side_prefixes(base: str) -> dict[str, str]:
    return {"proxy": f"{base}/p", "stock": f"{base}/s"}


def key(path: str) -> str:
    return f"{BUCKET_PREFIX}/{path}" if BUCKET_PREFIX else path


def seed(s3, prefix: str, tree: dict[str, bytes]) -> None:
    for rel, data in tree.items():
        s3.put_object(Bucket=BUCKET, Key=key(f"{prefix}/{rel}"), Body=data)


def seeded_state() -> dict[str, tuple[int, str]]:
    return dict(sorted((rel, (len(d), sha256_bytes(d))) for rel, d in MUT_TREE.items()))


def side_state(s3, prefix: str) -> dict[str, tuple[int, str]]:
    """Objects under {P}/, and under 'zq:{P}/' or 'Zq:{P}/' (where a scheme-like path would land) or
    './{P}/' (a leading '.' segment, a key of its own on a store that keeps keys opaque)."""
    out = objects_under(s3, prefix)
    for scheme in ("zq:", "Zq:", "./"):
        out.update({f"{scheme}{{P}}/{k}": v for k, v in objects_under(s3, scheme + prefix).items()})
    return out


def objects_under(s3, prefix: str) -> dict[str, tuple[int, str]]:
    """{key relative to prefix: (size, sha256)} of every object under prefix/."""
    out = {}
    full = key(prefix) + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=full):
        for o in page.get("Contents", []):
            data = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            out[o["Key"][len(full) :]] = (o["Size"], sha256_bytes(data))
    return dict(sorted(out.items()))


def render(case: Case, prefix: str) -> str:
    return case.path.replace("{PQ}", quote(prefix, safe="")).replace("{P}", prefix)


# Headers compared per case (with status, content type and body).
SHOWN_HEADERS = ("content-disposition", "allow", "content-range")
# Headers MLflow's security and CORS middleware put on every response. They are compared for every case
# too, but reported together by test_security_and_cors_headers_match_stock (one list instead of a
# hundred failures that would hide the per-case differences).
SECURITY_HEADERS = (
    "x-content-type-options",
    "x-frame-options",
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
)


def view(resp: Response, prefix: str, method: str) -> dict:
    """What a user sees, with the side's prefix replaced by {P}."""
    body = resp.body.replace(prefix.encode(), b"{P}").replace(quote(prefix, safe="").encode(), b"{PQ}")
    r = Response(resp.status, resp.headers, body)
    out = r.summary()
    out["content-type"] = resp.headers.get("content-type")
    for h in SHOWN_HEADERS:
        if h in resp.headers:
            out[h] = resp.headers[h]
    if "allow" in out:  # Werkzeug's order of methods varies from process to process
        out["allow"] = sorted(m.strip() for m in out["allow"].split(","))
    if method == "HEAD":
        out["content-length"] = resp.headers.get("content-length")
    return out


def listed_names(resp: Response):
    try:
        return [f["path"] for f in json.loads(resp.body).get("files", [])]
    except (ValueError, AttributeError):
        return None


def error_code(resp: Response):
    try:
        return json.loads(resp.body).get("error_code")
    except (ValueError, AttributeError):
        return None


BASE = f"e2e-diff-{uuid.uuid4().hex[:8]}"  # everything this module writes is under it, and removed at the end


@pytest.fixture(scope="module")
def read_prefixes(s3):
    prefixes = side_prefixes(f"{BASE}/read")
    for p in prefixes.values():
        seed(s3, p, TREE)
    yield prefixes
    for scheme in ("", "zq:", "Zq:", "./"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key(scheme + BASE) + "/"):
            for o in page.get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=o["Key"])


_RESULTS: list[tuple[str, str]] = []
_SECURITY: dict[str, tuple[dict, dict]] = {}  # case id -> (stock headers, proxy headers)


def security_headers(resp: Response) -> dict:
    return {h: resp.headers[h] for h in SECURITY_HEADERS if h in resp.headers}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_proxy_matches_stock(case: Case, s3, read_prefixes):
    if case.mutates:
        prefixes = side_prefixes(f"{BASE}/{case.id}")
        for p in prefixes.values():
            seed(s3, p, MUT_TREE)
    else:
        prefixes = read_prefixes

    answers, views, states = {}, {}, {}
    untouched = None
    for side, base_url in (("proxy", PROXY_URL), ("stock", MLFLOW_URL)):
        prefix = prefixes[side]
        answers[side] = raw_request(base_url, case.method, render(case, prefix), case.body, case.headers)
        views[side] = view(answers[side], prefix, case.method)
        if case.mutates:
            states[side] = side_state(s3, prefix)
            if side == "proxy":
                # the proxy's request must not have touched the stock side's copy
                untouched = side_state(s3, prefixes["stock"]) == seeded_state()

    if case.id == "mpu-create":
        # do not leave either side's multipart upload behind
        for side, base_url in (("proxy", PROXY_URL), ("stock", MLFLOW_URL)):
            if answers[side].status == 200:
                upload_id = answers[side].json().get("upload_id")
                raw_request(
                    base_url, "POST", f"{MPU}/abort/{prefixes[side]}",
                    json.dumps({"path": "x.bin", "upload_id": upload_id}).encode(), JSON_CT,
                )

    _SECURITY[case.id] = (security_headers(answers["stock"]), security_headers(answers["proxy"]))

    request = f"{case.method} {case.path}" + (f"  headers={case.headers}" if case.headers else "") + (
        f"  body={case.body!r}" if case.body else ""
    )
    if case.id in DELIBERATE:
        d = DELIBERATE[case.id]
        reason = d["reason"]
        got = (answers["stock"].status, answers["proxy"].status, error_code(answers["proxy"]))
        want = (d["stock_status"], d["proxy_status"], d["proxy_error_code"])
        if d["stock_names"] is not None:
            got += (listed_names(answers["stock"]), listed_names(answers["proxy"]))
            want += (d["stock_names"], d["proxy_names"])
        if d["proxy_body"] is not None:
            got += (sha256_bytes(answers["proxy"].body),)
            want += (sha256_bytes(d["proxy_body"]),)
        if d["proxy_detail"] is not None:
            body = views["proxy"]["body"]
            got += (body.get("detail") if isinstance(body, dict) else body,)
            want += (d["proxy_detail"],)
        if d["stock_new"] is not None:
            seeded = seeded_state()
            got += tuple(sorted(k for k in states[side] if k not in seeded) for side in ("stock", "proxy"))
            want += (d["stock_new"], d["proxy_new"])
        kind = "known proxy bug" if case.id in KNOWN_PROXY_BUGS[STORE] else "deliberate difference"
        _RESULTS.append((case.id, kind if got == want else "DIFFERS FROM THE DELIBERATE LIST"))
        if got != want:
            raise AssertionError(
                f"{request}\n  deliberate difference: {reason}\n"
                f"  expected (stock status, proxy status, proxy error_code[, details]): {want}\n"
                f"  got:                                                                 {got}\n"
                f"  stock answer: {fmt(views['stock'])}\n  proxy answer: {fmt(views['proxy'])}"
            )
        return

    problems = []
    if untouched is False:
        problems.append(f"  the proxy's request changed objects outside its own prefix (under {prefixes['stock']})")
    if views["proxy"] != views["stock"]:
        differing = [k for k in {**views["stock"], **views["proxy"]} if views["stock"].get(k) != views["proxy"].get(k)]
        problems.append(f"  answers differ in: {', '.join(differing)}")
        problems.append(f"  answer\n    expected (stock): {fmt(views['stock'])}\n    got (proxy):      {fmt(views['proxy'])}")
    if case.mutates and states["proxy"] != states["stock"]:
        problems.append(
            f"  objects under {{P}} afterwards\n    expected (stock): {fmt(states['stock'])}\n"
            f"    got (proxy):      {fmt(states['proxy'])}"
        )
    _RESULTS.append((case.id, "same" if not problems else "DIFFERENT"))
    if problems:
        raise AssertionError(f"{request}\n" + "\n".join(problems))


def test_security_and_cors_headers_match_stock():
    """X-Content-Type-Options, X-Frame-Options and CORS headers, as stock MLflow's middleware sets them,
    on every answer of the cases above (this test runs after them, in file order)."""
    if len(_SECURITY) < len(CASES):
        pytest.fail(f"only {len(_SECURITY)} of {len(CASES)} cases ran before this test; run the whole module")
    # Where stock crashes (a deliberate difference with a stock 5xx), uvicorn's error handler answers
    # outside MLflow's security middleware, so that answer has no security headers; the proxy's
    # replacement answer keeps them.
    crashed = {cid for cid, d in DELIBERATE.items() if d["stock_status"] >= 500}
    differing = {
        cid: {"stock": s, "proxy": p} for cid, (s, p) in _SECURITY.items() if s != p and cid not in crashed
    }
    if differing:
        by_kind: dict[str, list[str]] = {}
        for cid, d in differing.items():
            kind = ", ".join(
                f"{h}: stock {d['stock'].get(h)!r} proxy {d['proxy'].get(h)!r}"
                for h in SECURITY_HEADERS
                if d["stock"].get(h) != d["proxy"].get(h)
            )
            by_kind.setdefault(kind, []).append(cid)
        lines = [f"{len(differing)} of {len(_SECURITY)} answers differ in security/CORS headers:"]
        for kind, ids in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {kind}\n    in {len(ids)} case(s): {', '.join(ids)}")
        raise AssertionError("\n".join(lines))


def test_deliberate_differences_are_listed_cases():
    """The written list only names cases that exist, for every store."""
    ids = {c.id for c in CASES}
    assert set(DELIBERATE) <= ids, f"unknown ids in DELIBERATE: {sorted(set(DELIBERATE) - ids)}"
    for store, quirks in [*STORE_QUIRKS.items(), *KNOWN_PROXY_BUGS.items()]:
        assert set(quirks) <= ids, f"unknown ids in STORE_QUIRKS/KNOWN_PROXY_BUGS[{store!r}]: {sorted(set(quirks) - ids)}"


# ==== The UI's and the registry's downloads (issue 19) ============================================
# /get-artifact, /model-versions/get-artifact and a logged model's artifacts/files, to the proxy
# (which streams them from S3) and to stock MLflow (which copies them into its temp folder first).
# Both sides read the same run, logged model and model versions; error answers name the key path
# ({exp}/{run}/artifacts/...), which is the same on both sides.
UI_TREE: dict[str, bytes] = {
    "hello.txt": b"hello world\n",
    "sub/a.json": b'{"a": 1}',
    "img.png": RANDOM_PNG,
    "big.bin": BIG,
    "ünï dir/x y.txt": b"unicode dir",
    "a b.txt": b"space",
    # A key with a literal '%20': the logged-model route joins its argument as it came (decoded
    # once, by Flask), the other two join it decoded until it settles.
    "pct%20name.txt": b"literal percent",
    "pct name.txt": b"decoded percent",
    "MLmodel": b"flavors: {}\n",
}


@dataclass
class UiWorld:
    run: str
    model: str
    name: str


@pytest.fixture(scope="module")
def ui_world(s3):
    import mlflow

    client = mlflow.MlflowClient(PROXY_URL)
    exp = client.create_experiment(f"{BASE}-ui")
    run = client.create_run(exp).info.run_id
    model = client.create_logged_model(experiment_id=exp, name="ui-diff")
    for rel, data in UI_TREE.items():
        s3.put_object(Bucket=BUCKET, Key=key(f"{exp}/{run}/artifacts/{rel}"), Body=data)
        s3.put_object(Bucket=BUCKET, Key=key(f"{exp}/models/{model.model_id}/artifacts/{rel}"), Body=data)
    name = f"{BASE}-ui-model"
    client.create_registered_model(name)
    client.create_model_version(name, source=f"models:/{model.model_id}", model_id=model.model_id)  # version 1
    client.create_model_version(name, source=f"runs:/{run}/sub", run_id=run)  # version 2
    yield UiWorld(run, model.model_id, name)
    for prefix in (f"{exp}/{run}/", f"{exp}/models/{model.model_id}/"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key(prefix)):
            for o in page.get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=o["Key"])


GA = "/get-artifact"
MVA = "/model-versions/get-artifact"
LMA = "/ajax-api/2.0/mlflow/logged-models/{model}/artifacts/files"
UI_CASES = [
    # ---- a run's artifacts (the run page's preview and download)
    C("ui-run-file", "GET", GA + "?path=hello.txt&run_id={run}"),
    C("ui-run-run-uuid", "GET", GA + "?path=hello.txt&run_uuid={run}"),
    C("ui-run-empty-run-id", "GET", GA + "?path=hello.txt&run_id=&run_uuid={run}"),
    C("ui-run-png", "GET", GA + "?path=img.png&run_id={run}"),
    C("ui-run-json-is-text", "GET", GA + "?path=sub%2Fa.json&run_id={run}"),
    C("ui-run-big", "GET", GA + "?path=big.bin&run_id={run}"),
    C("ui-run-unicode", "GET", GA + "?path=%C3%BCn%C3%AF+dir%2Fx+y.txt&run_id={run}"),
    C("ui-run-space", "GET", GA + "?path=a%20b.txt&run_id={run}"),
    C("ui-run-double-encoded", "GET", GA + "?path=pct%2520name.txt&run_id={run}"),
    C("ui-run-mlmodel", "GET", GA + "?path=MLmodel&run_id={run}"),
    C("ui-run-range", "GET", GA + "?path=big.bin&run_id={run}", None, {"Range": "bytes=100-199"}),
    C("ui-run-head", "HEAD", GA + "?path=hello.txt&run_id={run}"),
    C("ui-run-directory", "GET", GA + "?path=sub&run_id={run}"),
    C("ui-run-root", "GET", GA + "?path=&run_id={run}"),
    C("ui-run-missing", "GET", GA + "?path=nope.txt&run_id={run}"),
    C("ui-run-no-path", "GET", GA + "?run_id={run}"),
    C("ui-run-no-run", "GET", GA + "?path=hello.txt"),
    C("ui-run-unknown-run", "GET", GA + "?path=hello.txt&run_id=0123456789abcdef0123456789abcdef"),
    C("ui-run-dotdot", "GET", GA + "?path=..%2Fx&run_id={run}"),
    C("ui-run-double-encoded-dotdot", "GET", GA + "?path=%252e%252e%2Fx&run_id={run}"),
    C("ui-run-absolute", "GET", GA + "?path=%2Fetc%2Fpasswd&run_id={run}"),
    C("ui-run-hash", "GET", GA + "?path=a%23b&run_id={run}"),
    C("ui-run-post", "POST", GA + "?path=hello.txt&run_id={run}", mutates=False),
    C("ui-run-trailing-slash-route", "GET", GA + "/?path=hello.txt&run_id={run}"),
    C("ui-run-foreign-host", "GET", GA + "?path=hello.txt&run_id={run}", None, {"Host": "evil.example.com"}),
    # ---- a registered model version's files (the registry page)
    C("ui-mv-file", "GET", MVA + "?path=MLmodel&name={name}&version=1"),
    C("ui-mv-presigned", "GET", MVA + "?path=MLmodel&name={name}&version=1&presigned=true"),
    C("ui-mv-runs-source", "GET", MVA + "?path=a.json&name={name}&version=2"),
    C("ui-mv-directory", "GET", MVA + "?path=sub&name={name}&version=1"),
    C("ui-mv-missing", "GET", MVA + "?path=nope&name={name}&version=1"),
    C("ui-mv-unknown-version", "GET", MVA + "?path=MLmodel&name={name}&version=99"),
    C("ui-mv-unknown-model", "GET", MVA + "?path=MLmodel&name=no-such-model&version=1"),
    C("ui-mv-no-version", "GET", MVA + "?path=MLmodel&name={name}"),
    C("ui-mv-no-name", "GET", MVA + "?path=MLmodel&version=1"),
    C("ui-mv-no-path", "GET", MVA + "?name={name}&version=1"),
    C("ui-mv-dotdot", "GET", MVA + "?path=..%2F..%2Fx&name={name}&version=1"),
    # ---- a logged model's files (MLflow 3's model pages)
    C("ui-lm-file", "GET", LMA + "?artifact_file_path=MLmodel"),
    C("ui-lm-presigned", "GET", LMA + "?artifact_file_path=MLmodel&presigned=true"),
    C("ui-lm-unicode", "GET", LMA + "?artifact_file_path=%C3%BCn%C3%AF+dir%2Fx+y.txt"),
    C("ui-lm-joined-as-it-came", "GET", LMA + "?artifact_file_path=pct%2520name.txt"),
    C("ui-lm-directory", "GET", LMA + "?artifact_file_path=sub"),
    C("ui-lm-missing", "GET", LMA + "?artifact_file_path=nope"),
    C("ui-lm-no-arg", "GET", LMA),
    C("ui-lm-empty-arg", "GET", LMA + "?artifact_file_path="),
    C("ui-lm-unknown-model", "GET", "/ajax-api/2.0/mlflow/logged-models/m-0123456789abcdef0123456789abcdef/artifacts/files?artifact_file_path=MLmodel"),
    C("ui-lm-dotdot", "GET", LMA + "?artifact_file_path=%2E%2E%2Fx"),
    C("ui-lm-api-prefix", "GET", LMA.replace("/ajax-api/", "/api/") + "?artifact_file_path=MLmodel"),
]

UI_RUNS_SOURCE = (
    "a model version whose source is runs:/<run>/<path>: stock resolves it through the tracking URI, which in a "
    "server is the database, and fails (500 'the tracking URI must be a valid http or https URI'); the proxy "
    "resolves the run's artifact root through MLflow's REST API, as MLflow's RunsArtifactRepository does, and "
    "serves the file"
)
UI_DELIBERATE: dict[str, dict] = {
    "ui-run-missing": D(MISSING_404, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "ui-mv-missing": D(MISSING_404, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "ui-lm-missing": D(MISSING_404, 500, 404, "RESOURCE_DOES_NOT_EXIST"),
    "ui-mv-runs-source": D(UI_RUNS_SOURCE, 500, 200, None, proxy_body=UI_TREE["sub/a.json"]),
}


# What the proxy answers itself (the rest goes to MLflow as it came, which answers it before reading
# an artifact byte). An answer the proxy made has no `server: uvicorn` header.
UI_SERVED_BY_PROXY = {
    "ui-run-file", "ui-run-run-uuid", "ui-run-empty-run-id", "ui-run-png", "ui-run-json-is-text", "ui-run-big",
    "ui-run-unicode", "ui-run-space", "ui-run-double-encoded", "ui-run-mlmodel", "ui-run-range", "ui-run-head",
    "ui-run-directory", "ui-run-root", "ui-run-missing", "ui-run-foreign-host",
    "ui-mv-file", "ui-mv-presigned", "ui-mv-runs-source", "ui-mv-directory", "ui-mv-missing",
    "ui-lm-file", "ui-lm-presigned", "ui-lm-unicode", "ui-lm-joined-as-it-came", "ui-lm-directory",
    "ui-lm-missing",
}


def ui_render(case: Case, w: UiWorld) -> str:
    return case.path.format(run=w.run, model=w.model, name=quote(w.name, safe=""))


@pytest.mark.parametrize("case", UI_CASES, ids=[c.id for c in UI_CASES])
def test_ui_routes_match_stock(case: Case, ui_world):
    target = ui_render(case, ui_world)
    answers = {
        side: raw_request(base_url, case.method, target, case.body, case.headers)
        for side, base_url in (("proxy", PROXY_URL), ("stock", MLFLOW_URL))
    }
    if case.id.endswith("-presigned") and answers["stock"].body.startswith(b"{"):
        # MLflow 3.18 answers presigned=true with `{"url": …}` (3.17.2 ignores it and sends the file):
        # stock's URL is the store's own, the proxy's its signed URL; both give the same bytes. The
        # rest of the answer must be equal.
        urls = {side: json.loads(a.body)["url"] for side, a in answers.items()}
        assert "/mlflow-artifacts/signed/object?token=" in urls["proxy"], urls
        assert "X-Amz-" not in urls["proxy"] and "X-Amz-" in urls["stock"], urls
        from_store = http_get(urls["stock"])
        via_proxy = raw_request(PROXY_URL, "GET", "/" + urls["proxy"].split("/", 3)[3])
        assert from_store.status == via_proxy.status == 200 and from_store.body == via_proxy.body, urls
        for side, a in answers.items():
            a.body = a.body.replace(urls[side].encode(), b"<url>")
    views = {side: view(a, "\0no prefix\0", case.method) for side, a in answers.items()}
    request = f"{case.method} {target}" + (f"  headers={case.headers}" if case.headers else "")
    served = "server" not in answers["proxy"].headers
    assert served == (case.id in UI_SERVED_BY_PROXY), (
        f"{request}\n  answered by {'the proxy' if served else 'MLflow'}, expected "
        f"{'the proxy' if case.id in UI_SERVED_BY_PROXY else 'MLflow'}: {fmt(views['proxy'])}"
    )
    if case.id in UI_DELIBERATE:
        d = UI_DELIBERATE[case.id]
        got = (answers["stock"].status, answers["proxy"].status, error_code(answers["proxy"]))
        want = (d["stock_status"], d["proxy_status"], d["proxy_error_code"])
        if d["proxy_body"] is not None:
            got += (sha256_bytes(answers["proxy"].body),)
            want += (sha256_bytes(d["proxy_body"]),)
        assert got == want, (
            f"{request}\n  deliberate difference: {d['reason']}\n  expected {want}\n  got      {got}\n"
            f"  stock answer: {fmt(views['stock'])}\n  proxy answer: {fmt(views['proxy'])}"
        )
        # The store's address is in stock's 500; never in the proxy's answer.
        assert b"s3://" not in answers["proxy"].body, answers["proxy"].body[:300]
        return
    problems = []
    if views["proxy"] != views["stock"]:
        problems.append(f"  answer\n    expected (stock): {fmt(views['stock'])}\n    got (proxy):      {fmt(views['proxy'])}")
    stock_sec, proxy_sec = security_headers(answers["stock"]), security_headers(answers["proxy"])
    if stock_sec != proxy_sec:
        problems.append(f"  security headers\n    expected (stock): {stock_sec}\n    got (proxy):      {proxy_sec}")
    assert not problems, f"{request}\n" + "\n".join(problems)


def test_ui_deliberate_differences_are_listed_cases():
    ids = {c.id for c in UI_CASES}
    assert set(UI_DELIBERATE) <= ids, sorted(set(UI_DELIBERATE) - ids)
    assert UI_SERVED_BY_PROXY <= ids, sorted(UI_SERVED_BY_PROXY - ids)
