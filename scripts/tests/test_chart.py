"""Invariants of charts/mlflow-stack over its rendered output (run by scripts/check-chart).

Each case renders the chart with Helm 4 and with Helm 3 (the values matrix in
charts/mlflow-stack/ci/) and checks what a reviewer would check by hand: the shutdown arithmetic,
probes and resources everywhere, secrets only by reference, selectors that resolve, the MLflow
Service internal, the ingress routing only to the proxy, the database connection budget, env
parity with compose, and that every `fail` guard and schema rule really refuses.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from configuration_reference import settings as proxy_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-stack"
TOOLS = Path(
    os.environ.get(
        "CHART_TOOLS",
        Path(os.environ.get("MLFLOW_STACK_TOOLS", Path.home() / ".cache/mlflow-stack/tools")) / "chart",
    )
)
HELMS = {"helm4": TOOLS / "helm4" / "helm", "helm3": TOOLS / "helm3" / "helm"}
NAMESPACE = "ml"
RELEASE = "mls"
FULLNAME = "mls-mlflow-stack"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

# name → (values file, extra helm arguments)
MATRIX = {
    "defaults": ("defaults-values.yaml", []),
    "no-hpa": ("no-hpa-values.yaml", []),
    "gateway": ("gateway-values.yaml", []),
    "monitoring": ("monitoring-values.yaml", ["--api-versions", SERVICE_MONITOR_API]),
    "chart-secret": ("chart-secret-values.yaml", []),
    "auth": ("auth-values.yaml", []),
}

SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|BACKEND_STORE_URI|_URI$)")


def helm(binary, *args, check=True):
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/check-chart.d/install-tools")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "HELM_CACHE_HOME": str(TOOLS / ".helm" / "cache"),
        "HELM_CONFIG_HOME": str(TOOLS / ".helm" / "config"),
        "HELM_DATA_HOME": str(TOOLS / ".helm" / "data"),
    }
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(binary, values_file="defaults-values.yaml", *extra, check=True):
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    args += ["-f", str(CHART / "ci" / values_file), *extra]
    result = helm(binary, *args, check=check)
    if not check:
        return result
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(params=sorted(HELMS))
def binary(request):
    return HELMS[request.param]


@pytest.fixture(params=sorted(MATRIX))
def case(request, binary):
    values_file, extra = MATRIX[request.param]
    return request.param, render(binary, values_file, *extra)


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(docs):
    """(owner, pod spec, pod labels) of every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"].get("labels", {})
        elif d["kind"] == "CronJob":
            template = d["spec"]["jobTemplate"]["spec"]["template"]
            yield d, template["spec"], template["metadata"].get("labels", {})


def containers_of(spec):
    """Every container of a pod spec, init containers first (the order they run in)."""
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In")
        for e in selector.get("matchExpressions", [])
    )


def proxy_deployment(docs):
    return one(docs, "Deployment", FULLNAME)


def container(deployment, name):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


# ---------------------------------------------------------------- invariants over the matrix


def test_grace_arithmetic(case):
    _, docs = case
    proxy = proxy_deployment(docs)
    spec = proxy["spec"]["template"]["spec"]
    sleep = container(proxy, "proxy")["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = int(env_of(container(proxy, "proxy"))["PROXY_SHUTDOWN_GRACE_SECS"]["value"])
    assert spec["terminationGracePeriodSeconds"] >= sleep + grace + 5
    for deployment in kinds(docs, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c["lifecycle"]["preStop"]["sleep"]["seconds"] + 5 <= (
                deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            )


def test_probes_resources_and_restricted_security_everywhere(case):
    _, docs = case
    for owner, spec, _ in pod_specs(docs):
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in containers_of(spec):
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], where
            assert c["resources"]["limits"]["memory"], where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            if owner["kind"] == "Deployment":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert c[probe]["httpGet"]["path"], f"{where}: {probe}"
    proxy = container(proxy_deployment(docs), "proxy")
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Readiness on the proxy alone: the deep check would empty the Service when MLflow restarts.
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_secrets_only_by_reference(case):
    name, docs = case
    for owner, spec, _ in pod_specs(docs):
        for c in containers_of(spec):
            for env_name, e in env_of(c).items():
                if SECRETISH.search(env_name) and env_name != "MLFLOW_TRACKING_URI":
                    assert "value" not in e, f"{owner['metadata']['name']}: {env_name} is a literal"
                    assert "secretKeyRef" in e["valueFrom"], env_name
    secrets = kinds(docs, "Secret")
    assert len(secrets) == (1 if name == "chart-secret" else 0)
    for owner, spec, _ in pod_specs(docs):
        for c in containers_of(spec):
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "valueFrom" in e}
            expected = {"mls-mlflow-stack-credentials" if name == "chart-secret" else "mlflow-credentials"}
            assert refs <= expected


def test_selectors_resolve(case):
    _, docs = case
    pods = [(owner, labels) for owner, _, labels in pod_specs(docs) if owner["kind"] == "Deployment"]
    for d in kinds(docs, "Deployment"):
        assert matches(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    for svc in kinds(docs, "Service"):
        selected = [o["metadata"]["name"] for o, labels in pods if matches({"matchLabels": svc["spec"]["selector"]}, labels)]
        assert len(selected) == 1, f"Service/{svc['metadata']['name']} selects {selected}"
        for port in svc["spec"]["ports"]:
            deployment = one(docs, "Deployment", selected[0])
            names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert port["targetPort"] in names
    for pdb in kinds(docs, "PodDisruptionBudget"):
        assert [o for o, labels in pods if matches(pdb["spec"]["selector"], labels)], pdb["metadata"]["name"]
    for hpa in kinds(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert "replicas" not in one(docs, "Deployment", target["name"])["spec"]
    for policy in kinds(docs, "NetworkPolicy"):
        assert [o for o, labels in pods if matches(policy["spec"]["podSelector"], labels)]
    for monitor in kinds(docs, "ServiceMonitor"):
        assert [s for s in kinds(docs, "Service") if matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_mlflow_is_internal_and_only_the_proxy_is_routed(case):
    _, docs = case
    mlflow = one(docs, "Service", f"{FULLNAME}-mlflow")
    assert mlflow["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in mlflow["spec"]["ports"]] == [5001]
    for svc in kinds(docs, "Service"):
        assert svc["spec"]["type"] == "ClusterIP"
    for ingress in kinds(docs, "Ingress"):
        backends = [
            p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]
        ]
        assert backends == [{"name": FULLNAME, "port": {"name": "http"}}]
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
        assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
        assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    for route in kinds(docs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            assert rule["backendRefs"] == [{"name": FULLNAME, "port": 5000}]
            assert rule["timeouts"] == {"request": "0s"}
    assert kinds(docs, "Ingress") or kinds(docs, "HTTPRoute")
    # The MLflow Service admits proxy pods only.
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-mlflow")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5001, "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {"matchLabels": proxy_deployment(docs)["spec"]["selector"]["matchLabels"]}}]
    assert env_of(container(proxy_deployment(docs), "proxy"))["PROXY_UPSTREAM"]["value"] == f"http://{FULLNAME}-mlflow:5001"


def test_database_connection_arithmetic(case):
    """Recomputed from the rendered pods, not from values: what MLflow can really open."""
    _, docs = case
    total = 0
    for owner, spec, _ in pod_specs(docs):
        c = next((c for c in containers_of(spec) if "BACKEND_STORE_URI" in env_of(c)), None)
        if c is None:
            continue
        env = env_of(c)
        per_engine = int(env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]["value"]) + int(
            env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]["value"]
        )
        assert int(env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]["value"]) >= 1, "MLflow ignores 0"
        if owner["kind"] == "Deployment":
            workers = int(c["args"][c["args"].index("--workers") + 1])
            total += owner["spec"]["replicas"] * workers * per_engine
        else:
            total += per_engine
    assert 0 < total + 10 <= 151
    # Migrations run once, in a hook; never in the serving pods.
    job = one(docs, "Job", f"{FULLNAME}-db-upgrade")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "mlflow db upgrade" in " ".join(container(job, "db-upgrade")["command"])
    periodic = []
    for d in kinds(docs, "Deployment"):
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        if "BACKEND_STORE_URI" in env:
            assert env["MLFLOW_DB_UPGRADE"]["value"] == "false"
            if env["MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS"]["value"] == "true":
                periodic.append(d["spec"]["replicas"])
            volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
            assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["home"]
    assert periodic == [1], "periodic tasks on exactly one replica"


def test_allowed_hosts_name_the_public_host_and_the_services(case):
    name, docs = case
    hosts = env_of(container(proxy_deployment(docs), "proxy"))["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    for svc in (FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc", f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"):
        assert svc in hosts and f"{svc}:*" in hosts
    public = "mlflow.internal.example.com" if name == "gateway" else "mlflow.example.com"
    assert public in hosts and f"{public}:*" in hosts
    mlflow = one(docs, "Deployment", f"{FULLNAME}-mlflow")
    assert env_of(mlflow["spec"]["template"]["spec"]["containers"][0])["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"] == ",".join(hosts)


def test_pdb_hpa_and_service_monitor_follow_the_values(case):
    name, docs = case
    assert bool(kinds(docs, "HorizontalPodAutoscaler")) == (name != "no-hpa")
    assert len(kinds(docs, "PodDisruptionBudget")) == 2
    assert bool(kinds(docs, "ServiceMonitor")) == (name == "monitoring")
    if name == "no-hpa":
        assert proxy_deployment(docs)["spec"]["replicas"] == 3


def test_gc_cronjob_runs_mlflow_gc_then_the_orphan_step(binary):
    """gc.enabled: `mlflow gc` (MLflow image, gc.py) as an init container, then the orphan step
    (proxy image) against the proxy's own store; what compose's gc profile runs (docs/gc.md)."""
    docs = render(binary, "monitoring-values.yaml", "--api-versions", SERVICE_MONITOR_API)
    cron = one(docs, "CronJob", f"{FULLNAME}-gc")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (gc,), (orphans,) = spec["initContainers"], spec["containers"]
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())["services"]
    proxy = container(proxy_deployment(docs), "proxy")
    assert gc["name"] == "gc" and gc["image"].startswith("mlflow-server:")
    assert gc["command"] == ["python3", "/usr/local/bin/mlflow-gc.py"]
    assert "mlflow-gc.py" in compose["gc"]["entrypoint"][2], "compose runs the same script"
    assert env_of(gc)["GC_OLDER_THAN"]["value"] == "30d"
    assert env_of(gc)["BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == "backend-store-uri"
    assert orphans["name"] == "gc-orphans" and orphans["image"] == proxy["image"]
    assert orphans["args"] == ["gc", "--delete"]
    assert compose["gc-orphans"]["entrypoint"][2].startswith("while :; do mlflow-artifact-proxy gc --delete;")
    assert env_of(orphans)["PROXY_GC_OLDER_THAN"]["value"] == "7d"
    for c in (gc, orphans):
        # Through the proxy's Service, as compose's gc services go through `proxy`.
        assert env_of(c)["MLFLOW_TRACKING_URI"]["value"] == f"http://{FULLNAME}:5000"
    store = ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_ARTIFACTS_DESTINATION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY")
    assert {k: env_of(orphans)[k] for k in store} == {k: env_of(proxy)[k] for k in store}, "the proxy's store"
    assert int(cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]) >= 3600

    # Without the orphan step, `mlflow gc` is the job's only container; without gc, no CronJob.
    docs = render(binary, "monitoring-values.yaml", "--api-versions", SERVICE_MONITOR_API,
                  "--set", "gc.orphans.enabled=false")
    spec = one(docs, "CronJob", f"{FULLNAME}-gc")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "initContainers" not in spec and [c["name"] for c in spec["containers"]] == ["gc"]
    assert not kinds(render(binary), "CronJob")

    # With MLflow's auth app, both steps act as MLflow's admin (anything less is refused, and gc
    # would free nothing); the password from the Secret, as MLflow's own.
    docs = render(binary, "auth-values.yaml", "--set", "gc.enabled=true")
    spec = one(docs, "CronJob", f"{FULLNAME}-gc")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mlflow = container(one(docs, "Deployment", f"{FULLNAME}-mlflow"), "mlflow")
    for c in spec["initContainers"] + spec["containers"]:
        env = env_of(c)
        assert env["MLFLOW_TRACKING_USERNAME"]["value"] == env_of(mlflow)["MLFLOW_AUTH_ADMIN_USERNAME"]["value"]
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"] == env_of(mlflow)["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]


# ---------------------------------------------------------------- env parity with compose

COMPOSE_TO_CHART = {"proxy": ("Deployment", FULLNAME), "mlflow": ("Deployment", f"{FULLNAME}-mlflow"), "defaultbucket": ("Job", f"{FULLNAME}-ensure-bucket")}
# Set differently on Kubernetes by design; each is checked elsewhere.
NOT_COPIED = {
    # MLflow's auth app: MLFLOW_AUTH itself is copied (auth.enabled, "false" as compose); the rest is
    # rendered only with auth.enabled (test_one_auth_switch_for_mlflow_and_the_proxy).
    "MLFLOW_AUTH_ADMIN_USERNAME": "only with auth.enabled (auth.*)",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "only with auth.enabled (from the Secret)",
    "MLFLOW_AUTH_DEFAULT_PERMISSION": "only with auth.enabled (auth.*)",
    "MLFLOW_AUTH_CACHE_TTL_SECONDS": "only with auth.enabled (auth.*)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "only with auth.enabled (from the Secret, one for every pod)",
    "AWS_CA_BUNDLE": "the mounted s3.caBundleConfigMap file, only when one is given",
    "MLFLOW_S3_ENDPOINT_URL": "a required value (s3.MLFLOW_S3_ENDPOINT_URL): there is no in-chart S3",
    "AWS_ACCESS_KEY_ID": "from the Secret",
    "AWS_SECRET_ACCESS_KEY": "from the Secret",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "built from the ingress host and the Service names",
    "PROXY_UPSTREAM": "the MLflow Service",
    "MYSQL_HOST": "BACKEND_STORE_URI from the Secret",
    "MYSQL_TCP_PORT": "BACKEND_STORE_URI from the Secret",
    "MYSQL_DATABASE": "BACKEND_STORE_URI from the Secret",
    "MYSQL_USER": "BACKEND_STORE_URI from the Secret",
    "MYSQL_PASSWORD": "BACKEND_STORE_URI from the Secret",
}


def env_example():
    values = {}
    for line in (ROOT / "compose" / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_default(raw, example):
    """`${VAR:-default}` → the default (and .env.example must agree); literals as they are."""
    raw = str(raw)
    found = re.fullmatch(r"\$\{(\w+):-(.*)\}", raw)
    if not found:
        return raw
    var, default = found.groups()
    assert example.get(var, default) == default, f"compose's default for {var} differs from .env.example"
    return default


def test_env_names_and_defaults_equal_compose(binary):
    docs = render(binary, "monitoring-values.yaml", "--api-versions", SERVICE_MONITOR_API)
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    example = env_example()
    checked = 0
    for service, (kind, name) in COMPOSE_TO_CHART.items():
        owner = one(docs, kind, name)
        env = env_of(owner["spec"]["template"]["spec"]["containers"][0])
        for var, raw in (compose["services"][service].get("environment") or {}).items():
            if var in NOT_COPIED:
                continue
            assert var in env, f"{service}: compose sets {var}, the chart's {name} does not"
            want = compose_default(raw, example)
            if var == "MLFLOW_PORT":
                want = "5001"
            assert env[var].get("value") == want, f"{name}: {var}={env[var]} but compose's default is {want!r}"
            checked += 1
    assert checked >= 15


def test_every_proxy_replica_gets_the_same_signing_key(case):
    _, docs = case
    proxy = one(docs, "Deployment", FULLNAME)
    env = env_of(proxy["spec"]["template"]["spec"]["containers"][0])
    ref = env["PROXY_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "proxy-signing-key"


def test_values_defaults_equal_env_example():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    example = env_example()
    flat = {**values["proxy"]["env"], **{k: v for k, v in values["s3"].items() if k.isupper()}}
    flat["PROXY_S3_WAIT_SECS"] = values["s3"]["ensureBucket"]["PROXY_S3_WAIT_SECS"]
    flat.update({k: v for k, v in values["auth"].items() if k.isupper()})
    for var, value in flat.items():
        if var in NOT_COPIED:
            continue
        assert var in example, f"{var} is not in compose/.env.example"
        assert str(value) == example[var], f"{var}: values.yaml {value!r}, .env.example {example[var]!r}"
    proxy_vars = {k for k in example if k.startswith("PROXY_") and k not in ("PROXY_PORT", "PROXY_METRICS_PORT", "PROXY_IMAGE")}
    assert proxy_vars <= set(flat), f"in .env.example but not in the chart: {proxy_vars - set(flat)}"


# The proxy's settings a user of either stack is likely to change: each in compose/.env.example and
# in the chart's values (the two tests above check that they agree, and agree with the binary).
USER_SETTINGS = {"MLFLOW_ARTIFACTS_DESTINATION", "AWS_DEFAULT_REGION", "PROXY_S3_WAIT_SECS", "PROXY_LOG_FORMAT",
                 "RUST_LOG", "PROXY_SINGLE_PUT_MAX_MIB", "PROXY_PART_SIZE_MIB", "PROXY_PARTS_IN_FLIGHT",
                 "PROXY_UPLOAD_BUDGET_MIB", "PROXY_DOWNLOAD_BUDGET_MIB", "PROXY_SHUTDOWN_GRACE_SECS",
                 "PROXY_MLFLOW_AUTH", "PROXY_MLFLOW_AUTH_CACHE_TTL_SECS"}


def test_settings_users_change_are_in_env_example_and_the_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    in_values = {*values["proxy"]["env"], *values["s3"], *values["s3"]["ensureBucket"]}
    assert not USER_SETTINGS - set(env_example()), "missing from compose/.env.example"
    assert not USER_SETTINGS - in_values, "missing from values.yaml"


# Set by the chart, on purpose, to something else than the binary's default.
CHART_NOT_DEFAULT = {
    "PROXY_METRICS_LISTEN": "every interface of the pod, where Prometheus and the kubelet reach it",
    "PROXY_UPSTREAM": "the MLflow Service",
}


def test_values_name_settings_the_proxy_has_with_its_defaults():
    """The proxy's variables in values.yaml (proxy.env, s3.*, s3.ensureBucket.*) exist in
    docs/configuration.md (generated from the binary), with the binary's defaults."""
    reference = proxy_settings()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named = {**values["proxy"]["env"], **{k: v for k, v in values["s3"].items() if k.isupper()},
             **{k: v for k, v in values["s3"]["ensureBucket"].items() if k.isupper()}}
    wrong = []
    for var, value in named.items():
        setting = reference.get(var)
        if setting is None:
            wrong.append(f"{var}: the proxy has no such setting")
        elif setting.default is not None and str(value) != setting.default:
            wrong.append(f"{var}={value!r}, the binary's default is {setting.default!r}")
    assert len(named) >= 10, named
    assert not wrong, "values.yaml vs docs/configuration.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("values_file, extra", [
    ("defaults-values.yaml", ["--set", "gc.enabled=true", "--set", "s3.ensureBucket.enabled=true",
                              "--set", "s3.caBundleConfigMap=s3-ca"]),
    ("auth-values.yaml", ["--set", "gc.enabled=true", "--set", "s3.ensureBucket.enabled=true"]),
])
def test_proxy_containers_set_what_their_command_reads(binary, values_file, extra):
    """Every container of the proxy's image (serve, ensure-bucket, gc) is given only variables its
    subcommand reads, each with the binary's default unless CHART_NOT_DEFAULT says why not."""
    reference = proxy_settings()
    docs = render(binary, values_file, *extra)
    image = container(proxy_deployment(docs), "proxy")["image"]
    wrong, commands = [], set()
    for owner, spec, _ in pod_specs(docs):
        for c in containers_of(spec):
            if c["image"] != image:
                continue
            command = c["args"][0]
            commands.add(command)
            for var, entry in env_of(c).items():
                setting = reference.get(var)
                where = f"{owner['kind']}/{owner['metadata']['name']} ({command})"
                if setting is None:
                    wrong.append(f"{where}: {var} is no setting of the proxy")
                elif command not in setting.read_by:
                    wrong.append(f"{where}: {var} is read by {sorted(setting.read_by)}, not by {command}")
                elif ("value" in entry and setting.default is not None and entry["value"] != setting.default
                      and var not in CHART_NOT_DEFAULT):
                    wrong.append(f"{where}: {var}={entry['value']!r}, the binary's default is {setting.default!r}")
    assert commands == {"serve", "ensure-bucket", "gc"}, commands
    assert not wrong, "the chart vs docs/configuration.md:\n" + "\n".join(wrong)


# ---------------------------------------------------------------- guards really refuse

BASE = ["--set", "s3.MLFLOW_S3_ENDPOINT_URL=https://s3.example.com", "--set", "secrets.existingSecret=x"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "proxy.env.PROXY_SHUTDOWN_GRACE_SECS=45"], "proxy.terminationGracePeriodSeconds=45 is too short"),
        (["--set", "proxy.terminationGracePeriodSeconds=44"], "is too short: it must be >= preStopSleepSeconds (10) + PROXY_SHUTDOWN_GRACE_SECS (30) + 5 = 45"),
        (["--set", "proxy.preStopSleepSeconds=20"], "is too short"),
        (["--set", "mlflow.terminationGracePeriodSeconds=6"], "mlflow.terminationGracePeriodSeconds=6"),
        (["--set", "mlflow.replicas=7"], "more than database.maxConnections=151"),
        (["--set", "mlflow.workers=16"], "more than database.maxConnections=151"),
        (["--set", "database.maxConnections=59"], "could open 60 database connections"),
        (["--set", "database.readReplica=true", "--set", "mlflow.replicas=4"], "more than database.maxConnections"),
        (["--set", "secrets.existingSecret="], "set secrets.existingSecret"),
        (["--set", "secrets.existingSecret=", "--set", "secrets.create.backendStoreUri=sqlite:///x.db", "--set", "secrets.create.awsAccessKeyId=a", "--set", "secrets.create.awsSecretAccessKey=b"], "backendStoreUri"),
        (["--set", "secrets.existingSecret=", "--set", "secrets.create.backendStoreUri=mysql://u:p@db/m", "--set", "secrets.create.awsAccessKeyId=a", "--set", "secrets.create.awsSecretAccessKey=b"], "signingKey"),
        (["--set", "secrets.existingSecret=", "--set", "secrets.create.backendStoreUri=mysql://u:p@db/m", "--set", "secrets.create.awsAccessKeyId=a", "--set", "secrets.create.awsSecretAccessKey=b", "--set", "secrets.create.signingKey=short"], "at least 32 characters"),
        (["--set", "s3.MLFLOW_S3_ENDPOINT_URL="], "s3.MLFLOW_S3_ENDPOINT_URL is required"),
        (["--set", "proxy.autoscaling.minReplicas=5", "--set", "proxy.autoscaling.maxReplicas=3"], "minReplicas must be <= maxReplicas"),
        # values.schema.json
        (["--set", "proxy.env.PROXY_PART_SIZE_MIB=4"], "PROXY_PART_SIZE_MIB"),
        (["--set", "mlflow.MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=0"], "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"),
        (["--set", "mlflow.MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=0"], "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"),
        (["--set", "s3.MLFLOW_ARTIFACTS_DESTINATION=file:///mlruns"], "MLFLOW_ARTIFACTS_DESTINATION"),
        (["--set", "proxy.env.PROXY_LOG_FORMAT=xml"], "PROXY_LOG_FORMAT"),
        (["--set", "proxy.terminationGracePeriodSecond=60"], "terminationGracePeriodSecond"),
        (["--set", "metrics.serviceMonitor.interval=30 seconds"], "interval"),
        # One auth switch: never weaker on the proxy than on MLflow; the user store from a Secret.
        (["--set", "auth.enabled=true", "--set", "proxy.env.PROXY_MLFLOW_AUTH=off"], "artifact requests could be served unchecked"),
        (["--set", "auth.enabled=true", "--set", "proxy.env.PROXY_MLFLOW_AUTH=auto"], "artifact requests could be served unchecked"),
        (["--set", "auth.enabled=true", "--set", "secrets.existingSecret=", "--set", "secrets.create.backendStoreUri=mysql://u:p@db/m", "--set", "secrets.create.awsAccessKeyId=a", "--set", "secrets.create.awsSecretAccessKey=b", "--set", "secrets.create.signingKey=0123456789abcdef0123456789abcdef"], "auth.enabled needs secrets.existingSecret"),
        (["--set", "proxy.env.PROXY_MLFLOW_AUTH=sometimes"], "PROXY_MLFLOW_AUTH"),
        (["--set", "gc.orphans.olderThan=7 days"], "olderThan"),
    ],
)
def test_each_guard_refuses(binary, args, message):
    result = helm(binary, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *BASE, *args, check=False)
    assert result.returncode != 0, f"rendered although {args}"
    assert message in result.stderr, result.stderr


def test_the_guards_pass_at_their_limits(binary):
    # 45 = 10 + 30 + 5 exactly; 151 = 2 x 4 x 5 + 5 + 5 + 10 with maxConnections at 60.
    render(binary, "defaults-values.yaml", "--set", "proxy.terminationGracePeriodSeconds=45", "--set", "database.maxConnections=60")


# ---------------------------------------------------------------- issue 20: auth, Host, private CA

MLFLOW_DEPLOYMENTS = (f"{FULLNAME}-mlflow", f"{FULLNAME}-mlflow-tasks")


def test_one_auth_switch_for_mlflow_and_the_proxy(binary):
    """auth.enabled sets MLFLOW_AUTH for MLflow (its entrypoint adds --app-name basic-auth) and the
    proxy alike; the proxy follows it (PROXY_MLFLOW_AUTH empty): on from the first request."""
    for enabled in (False, True):
        docs = render(binary, "defaults-values.yaml", *(["--set", "auth.enabled=true"] if enabled else []))
        proxy = env_of(container(proxy_deployment(docs), "proxy"))
        assert proxy["MLFLOW_AUTH"]["value"] == str(enabled).lower()
        assert proxy["PROXY_MLFLOW_AUTH"]["value"] == ""
        for name in MLFLOW_DEPLOYMENTS:
            env = env_of(container(one(docs, "Deployment", name), "mlflow"))
            assert env["MLFLOW_AUTH"]["value"] == str(enabled).lower(), name
            secret_refs = {k: e["valueFrom"]["secretKeyRef"]["key"] for k, e in env.items() if "valueFrom" in e}
            if enabled:
                assert env["MLFLOW_AUTH_ADMIN_USERNAME"]["value"] == "admin"
                assert {k: secret_refs.get(k) for k in ("MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                                         "MLFLOW_FLASK_SERVER_SECRET_KEY")} == {
                    "MLFLOW_AUTH_DATABASE_URI": "mlflow-auth-database-uri",
                    "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow-auth-admin-password",
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow-flask-secret-key",
                }, name
            else:
                assert not [k for k in env if k.startswith("MLFLOW_AUTH_")], name


def test_the_proxy_asks_mlflow_with_a_host_mlflow_allows(case):
    """The proxy's questions to MLflow (auth detection and probes) carry PROXY_UPSTREAM's address as
    Host; MLflow's allowed hosts must admit it (issue 20: `localhost` was sent, and refused)."""
    from fnmatch import fnmatch
    from urllib.parse import urlsplit

    _, docs = case
    upstream = env_of(container(proxy_deployment(docs), "proxy"))["PROXY_UPSTREAM"]["value"]
    host = urlsplit(upstream).netloc
    for name in MLFLOW_DEPLOYMENTS:
        allowed = env_of(container(one(docs, "Deployment", name), "mlflow"))["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
        assert any(fnmatch(host, pattern) for pattern in allowed.split(",")), (host, allowed)


def test_a_private_ca_reaches_every_s3_client(binary):
    docs = render(binary, "defaults-values.yaml", "--set", "s3.caBundleConfigMap=s3-ca", "--set",
                  "s3.ensureBucket.enabled=true", "--set", "gc.enabled=true")
    clients = 0
    for owner, spec, _ in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            env = env_of(c)
            if "MLFLOW_S3_ENDPOINT_URL" not in env:
                continue
            clients += 1
            where = f"{owner['kind']}/{owner['metadata']['name']}"
            assert env["AWS_CA_BUNDLE"]["value"] == env["SSL_CERT_FILE"]["value"] == "/etc/ssl/s3/ca.crt", where
            (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/ssl/s3"]
            assert volumes[mount["name"]]["configMap"]["name"] == "s3-ca", where
    # The proxy, two MLflow Deployments, the ensure-bucket and db-upgrade Jobs, the gc CronJob.
    assert clients >= 6, clients
