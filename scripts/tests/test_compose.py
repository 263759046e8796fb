"""Static checks of the compose stack (no Docker engine needed).

Checks compose/compose.yaml against the original system's table (../shared/spec/SEED.md: containers,
ports, variables, volumes, network), against compose/.env.example (the single source of values), and
against the native stack: both run MLflow through mlflow-image/entrypoint.sh, so the test runs that
script with a stand-in `mlflow` and compares the exact command lines.

Run: python -m pytest scripts/tests/test_compose.py  (needs PyYAML and pytest; docker-compose,
when installed, also renders the file for the tests marked "real compose").
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from configuration_reference import settings as proxy_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
MLFLOW_IMAGE_DIR = ROOT / "mlflow-image"
ENTRYPOINT = MLFLOW_IMAGE_DIR / "entrypoint.sh"
REQUIREMENTS = MLFLOW_IMAGE_DIR / "requirements.txt"
MLFLOW_DOCKERFILE = MLFLOW_IMAGE_DIR / "Dockerfile"
PROXY_DOCKERFILE = ROOT / "proxy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NATIVE_STACK = ROOT / "scripts" / "stack"

CORE_SERVICES = {"mysql", "minio", "defaultbucket", "mlflow", "proxy"}
LONG_RUNNING = {"mysql", "minio", "mlflow", "proxy", "prometheus"}

# The seed's values (SEED.md "Environment"), which the defaults must keep.
SEED_ENV = {
    "mysql": {
        "MYSQL_ROOT_PASSWORD": "root-password",
        "MYSQL_DATABASE": "mlflowdb",
        "MYSQL_USER": "mlflowuser",
        "MYSQL_PASSWORD": "mlflowpassword",
    },
    "minio": {"MINIO_ROOT_USER": "minio-access-key", "MINIO_ROOT_PASSWORD": "minio-secret-key"},
    "mlflow": {
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_ACCESS_KEY_ID": "minio-access-key",
        "AWS_SECRET_ACCESS_KEY": "minio-secret-key",
    },
}
# Variables compose itself reads from .env (not referenced inside compose.yaml), and the prefix of
# settings that only scripts/stack reads.
COMPOSE_OWN_VARIABLES = {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"}
NATIVE_ONLY_PREFIX = "MLFLOW_STACK_"

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<default>[^}]*)\}")


# --------------------------------------------------------------------------- helpers


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads them (no quoting is used in .env.example)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: expected KEY=VALUE, got {line!r}"
        assert key not in values, f"{path.name}:{number}: {key} is set twice"
        values[key] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} substitution ($$ is a literal $)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match["name"], match["op"], match["default"]
        value = env.get(name)
        if op == ":-":
            return value if value else default
        if op == "-":
            return default if value is None else value
        assert op is None, f"unsupported interpolation {match[0]!r}"
        assert value is not None, f"{name} has no default in compose.yaml and is not set"
        return value

    placeholder = "\0DOLLAR\0"
    return INTERPOLATION.sub(substitute, text.replace("$$", placeholder)).replace(placeholder, "$")


def render(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env or {}))


def env_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def published_ports(service: dict) -> dict[int, int]:
    """container port -> host port, from short syntax entries."""
    ports: dict[int, int] = {}
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        assert len(parts) in (2, 3), f"use HOST:CONTAINER or IP:HOST:CONTAINER, got {entry!r}"
        ports[int(parts[-1])] = int(parts[-2])
    return ports


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per stage; FROM lines with the global ARG defaults filled in, as docker builds them
    when no --build-arg is given."""
    result: list[list[tuple[str, str]]] = []
    global_args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "ARG" and not result:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip()
            continue
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], m[0]), rest)
            result.append([])
        assert result, f"{path}: instruction {keyword} before the first FROM"
        result[-1].append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    """compose.yaml as it runs without a .env (defaults only)."""
    return render()


# --------------------------------------------------------------------------- values


def test_compose_defaults_equal_env_example(env_example):
    text = COMPOSE_FILE.read_text()
    mismatches = []
    for match in INTERPOLATION.finditer(text.replace("$$", "")):
        name, op, default = match["name"], match["op"], match["default"]
        if op != ":-":
            mismatches.append(f"{match[0]}: use ${{{name}:-default}} so the file works without a .env")
        elif name not in env_example:
            mismatches.append(f"{name}: used in compose.yaml but missing from .env.example")
        elif env_example[name] != default:
            mismatches.append(f"{name}: compose default {default!r} != .env.example {env_example[name]!r}")
    assert not mismatches, "compose.yaml vs .env.example:\n" + "\n".join(mismatches)


def test_every_env_example_variable_is_used(env_example):
    used = {m["name"] for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    unused = sorted(key for key in set(env_example) - used - COMPOSE_OWN_VARIABLES
                    if not key.startswith(NATIVE_ONLY_PREFIX))
    assert not unused, f".env.example variables that compose.yaml never reads: {unused}"


def test_rendering_with_env_example_equals_defaults(env_example, compose):
    assert render(env_example) == compose, "copying .env.example to .env must change nothing"


def test_seed_environment(compose):
    for service, expected in SEED_ENV.items():
        got = env_of(compose["services"][service])
        for key, value in expected.items():
            assert got.get(key) == value, f"{service}.{key}: expected {value!r}, got {got.get(key)!r}"


def test_every_s3_client_uses_the_same_store(compose):
    keys = ["MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"]
    reference = {key: env_of(compose["services"]["mlflow"]).get(key) for key in keys}
    assert reference["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://default/"
    for service in ("proxy", "defaultbucket", "gc-orphans"):
        got = {key: env_of(compose["services"][service]).get(key) for key in keys}
        assert got == reference, f"{service} S3 settings: expected (as mlflow) {reference}, got {got}"
    minio = env_of(compose["services"]["minio"])
    assert (reference["AWS_ACCESS_KEY_ID"], reference["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]
    ), "the default S3 credentials must be MinIO's root user"


# --------------------------------------------------------------------------- the proxy's settings

# Set by compose, on purpose, to something else than the binary's default.
COMPOSE_NOT_DEFAULT = {
    "PROXY_METRICS_LISTEN": "every interface of the container, where Prometheus reaches it (published on loopback)",
    "PROXY_UPSTREAM": "the mlflow service",
}
# Set on a proxy-image service for something else than the binary.
NOT_FOR_THE_BINARY = {"GC_INTERVAL": "gc-orphans' shell loop sleeps this long between runs"}


def proxy_command(service: dict) -> str | None:
    """The subcommand a service of the proxy's image runs; None for other images."""
    if not service.get("image", "").startswith("mlflow-artifact-proxy:"):
        return None
    if service.get("command"):
        return service["command"][0]
    (command,) = re.findall(r"mlflow-artifact-proxy (\S+)", " ".join(service["entrypoint"]))
    return command


def test_env_example_gives_the_proxy_its_own_defaults(env_example):
    """Every setting of the binary (docs/configuration.md, generated from it) that .env.example sets
    has the binary's default. (That every PROXY_* it names exists is checked by cargo test:
    config_reference, over the docs, compose and the chart.)"""
    reference = proxy_settings()
    wrong, checked = [], 0
    for key, value in env_example.items():
        setting = reference.get(key)
        checked += setting is not None
        if setting and setting.default is not None and value != setting.default and key not in COMPOSE_NOT_DEFAULT:
            wrong.append(f"{key}={value!r}, the binary's default is {setting.default!r}")
    assert checked >= 15, checked
    assert not wrong, "compose/.env.example vs docs/configuration.md:\n" + "\n".join(wrong)


def test_proxy_services_set_what_their_command_reads(compose):
    """The proxy image's services set only variables their subcommand reads, with the binary's
    defaults unless COMPOSE_NOT_DEFAULT says why not."""
    reference = proxy_settings()
    wrong, checked = [], 0
    for name, service in compose["services"].items():
        command = proxy_command(service)
        if command is None:
            continue
        for var, value in env_of(service).items():
            if var in NOT_FOR_THE_BINARY:
                continue
            checked += 1
            setting = reference.get(var)
            if setting is None:
                wrong.append(f"{name}: {var} is no setting of the proxy")
            elif command not in setting.read_by:
                wrong.append(f"{name}: {var} is read by {sorted(setting.read_by)}, not by {command}")
            elif setting.default is not None and value != setting.default and var not in COMPOSE_NOT_DEFAULT:
                wrong.append(f"{name}: {var}={value!r}, the binary's default is {setting.default!r}")
    assert checked >= 30, checked
    assert not wrong, "compose.yaml vs docs/configuration.md:\n" + "\n".join(wrong)


# --------------------------------------------------------------------------- services, ports, volumes


def test_services(compose):
    services = compose["services"]
    assert CORE_SERVICES <= set(services), f"expected services {sorted(CORE_SERVICES)}, got {sorted(services)}"
    extra = {name: svc.get("profiles") for name, svc in services.items() if name not in CORE_SERVICES}
    for name, profiles in extra.items():
        assert profiles, f"extra service {name} must sit behind a profile, got profiles={profiles}"
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_published_ports(compose):
    services = compose["services"]
    expected = {"proxy": {5000: 5000}, "minio": {9000: 9000, 9001: 9001}, "prometheus": {9090: 9090}}
    for name, ports in expected.items():
        got = published_ports(services[name])
        for container, host in ports.items():
            assert got.get(container) == host, f"{name}: expected {host}->{container}, got {got}"
    for name in ("mysql", "mlflow", "defaultbucket"):
        assert not services[name].get("ports"), f"{name} must not be published, got {services[name]['ports']}"
    metrics = [str(p) for p in services["proxy"]["ports"] if str(p).endswith(":9464")]
    assert metrics and all(p.startswith("127.0.0.1:") for p in metrics), (
        f"the proxy's metrics port is published on loopback only, got {metrics}"
    )


def host_addresses(compose: dict) -> dict[tuple[str, int], str]:
    """(service, container port) -> host address, "all" for an entry without one."""
    found = {}
    for name, service in compose["services"].items():
        for entry in service.get("ports") or []:
            parts = str(entry).split(":")
            found[(name, int(parts[-1]))] = parts[0] if len(parts) == 3 else "all"
    return found


def test_nothing_is_published_beyond_loopback_by_default(compose):
    """Issue 20: MinIO (with its root credentials), Prometheus and the proxy on every interface was
    the default. Every port is on the host's loopback unless a variable says otherwise."""
    assert host_addresses(compose) == {
        ("proxy", 5000): "127.0.0.1", ("proxy", 9464): "127.0.0.1", ("minio", 9000): "127.0.0.1",
        ("minio", 9001): "127.0.0.1", ("prometheus", 9090): "127.0.0.1",
    }


def test_one_variable_opens_mlflow_and_one_the_admin_ports():
    team = host_addresses(render({"PUBLISH_ADDRESS": "0.0.0.0"}))
    assert team[("proxy", 5000)] == "0.0.0.0"
    assert {team[k] for k in team if k != ("proxy", 5000)} == {"127.0.0.1"}, team
    admin = host_addresses(render({"ADMIN_PUBLISH_ADDRESS": "192.168.1.10"}))
    assert {k: v for k, v in admin.items() if v != "127.0.0.1"} == {
        ("minio", 9000): "192.168.1.10", ("minio", 9001): "192.168.1.10", ("prometheus", 9090): "192.168.1.10",
    }
    # The metrics port never leaves loopback: Prometheus reaches it inside the compose network.
    assert admin[("proxy", 9464)] == team[("proxy", 9464)] == "127.0.0.1"


def test_the_project_is_named_whether_or_not_there_is_a_env():
    """Issue 20: without a top-level name the project was `compose` (the folder) until a .env
    (COMPOSE_PROJECT_NAME=mlflow) appeared, which switched to new, empty volumes."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert raw["name"] == "mlflow"
    example = read_env_file(ENV_EXAMPLE)
    assert "COMPOSE_PROJECT_NAME" not in example, "a .env copied from .env.example must not rename the project"


def test_one_auth_switch_for_mlflow_and_the_proxy(compose):
    """Issue 20: MLFLOW_AUTH=true left the proxy on `auto` (unchecked until its next detection)."""
    mlflow, proxy = env_of(compose["services"]["mlflow"]), env_of(compose["services"]["proxy"])
    # (The test's own YAML reading types `false`; compose passes the text.)
    assert mlflow["MLFLOW_AUTH"].lower() == proxy["MLFLOW_AUTH"].lower() == "false"
    assert proxy["PROXY_MLFLOW_AUTH"] == "", "empty: the proxy follows MLFLOW_AUTH"
    on = render({"MLFLOW_AUTH": "true"})["services"]
    assert env_of(on["mlflow"])["MLFLOW_AUTH"].lower() == env_of(on["proxy"])["MLFLOW_AUTH"].lower() == "true"


def test_every_s3_client_trusts_the_same_ca(compose):
    for name in ("mlflow", "proxy", "defaultbucket"):
        service = compose["services"][name]
        assert env_of(service)["AWS_CA_BUNDLE"] == "", name
        assert "./certs:/etc/ssl/s3:ro" in service["volumes"], name
    assert (COMPOSE_DIR / "certs" / "README.md").exists()
    assert '[ -n "${AWS_CA_BUNDLE:-}" ] || unset AWS_CA_BUNDLE' in ENTRYPOINT.read_text(), (
        "boto3 refuses an empty AWS_CA_BUNDLE: the entrypoint must drop it"
    )


def test_volumes(compose):
    expected = {"mysql": "mysql:/var/lib/mysql", "minio": "minio1:/export"}
    for service, mount in expected.items():
        got = compose["services"][service].get("volumes") or []
        assert mount in got, f"{service}: expected volume {mount!r}, got {got}"
    assert {"mysql", "minio1"} <= set(compose["volumes"]), f"top-level volumes: {sorted(compose['volumes'])}"


def test_one_network(compose):
    assert set(compose["networks"]) == {"nginx_network"}, f"networks: {sorted(compose['networks'])}"
    for name, service in compose["services"].items():
        assert service.get("networks") == ["nginx_network"], f"{name} networks: {service.get('networks')}"


def test_images_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image name"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} must be pinned, not latest"
    assert compose["services"]["mysql"]["image"] == "mysql:8.4"
    assert re.fullmatch(r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        compose["services"]["minio"]["image"]), compose["services"]["minio"]["image"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", compose["services"]["prometheus"]["image"])


def test_minio_command(compose):
    assert compose["services"]["minio"]["command"] == "server /export --console-address :9001"


# --------------------------------------------------------------------------- start order, health, restart


def test_healthchecks_and_restart(compose):
    for name in LONG_RUNNING:
        service = compose["services"][name]
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck, got {check}"
        assert service.get("restart") == "unless-stopped", f"{name} restart: {service.get('restart')!r}"
    assert compose["services"]["defaultbucket"].get("restart") == "no"


def test_mysql_healthcheck_keeps_root_password_off_the_command_line(compose):
    test = " ".join(compose["services"]["mysql"]["healthcheck"]["test"])
    assert "root-password" not in test and "-uroot" not in test and "-p" not in test.split(), test


def test_start_order(compose):
    expected = {
        "defaultbucket": {"minio": "service_healthy"},
        "mlflow": {"mysql": "service_healthy"},
        "proxy": {"mlflow": "service_healthy", "defaultbucket": "service_completed_successfully"},
        "prometheus": {"proxy": "service_healthy"},
    }
    for name, needs in expected.items():
        got = {dep: (cond or {}).get("condition") for dep, cond in compose["services"][name]["depends_on"].items()}
        assert got == needs, f"{name} depends_on: expected {needs}, got {got}"


def test_mlflow_healthcheck_is_patient(compose):
    check = compose["services"]["mlflow"]["healthcheck"]
    assert "/health" in " ".join(check["test"])
    seconds = int(str(check["start_period"]).rstrip("s"))
    assert seconds >= 120, f"mlflow start_period must cover the first `mlflow db upgrade`, got {seconds}s"


# --------------------------------------------------------------------------- the proxy and its bucket job


def test_proxy_service(compose):
    proxy = compose["services"]["proxy"]
    env = env_of(proxy)
    assert env["PROXY_UPSTREAM"] == "http://mlflow:5001", env
    assert env["PROXY_LISTEN"] == "0.0.0.0:5000", env
    assert env["PROXY_METRICS_LISTEN"] == "0.0.0.0:9464", env
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000", env
    assert proxy["command"] == ["serve"]
    assert proxy["healthcheck"]["test"][:3] == ["CMD", "mlflow-artifact-proxy", "healthcheck"]
    assert proxy["build"] == {"context": "..", "dockerfile": "proxy/Dockerfile"}, proxy["build"]


def test_defaultbucket_uses_the_proxy_image(compose):
    job, proxy = compose["services"]["defaultbucket"], compose["services"]["proxy"]
    assert job["image"] == proxy["image"] and job["build"] == proxy["build"], "defaultbucket must run the proxy image"
    assert job["command"] == ["ensure-bucket"], job["command"]
    assert "policy" not in COMPOSE_FILE.read_text().lower(), "the bucket stays private: no bucket policy"


def test_mlflow_is_not_published_and_uses_the_shared_entrypoint(compose):
    mlflow = compose["services"]["mlflow"]
    assert "command" not in mlflow and "entrypoint" not in mlflow, (
        "mlflow must run the image's entrypoint (mlflow-image/entrypoint.sh, shared with scripts/stack); "
        f"got command={mlflow.get('command')!r} entrypoint={mlflow.get('entrypoint')!r}"
    )
    assert mlflow["build"]["context"] == "../mlflow-image"
    assert [str(p) for p in mlflow.get("expose", [])] == ["5001"], mlflow.get("expose")


def test_prometheus_scrapes_the_proxy(compose):
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["proxy:9464"], f"expected the proxy's metrics listener, got {targets}"
    listen = env_of(compose["services"]["proxy"])["PROXY_METRICS_LISTEN"]
    assert listen.endswith(":9464"), listen
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts, mounts


# --------------------------------------------------------------------------- the MLflow command, compose = native


def fake_mlflow(tmp_path: Path) -> Path:
    """A stand-in `mlflow` that records each call's argv, one call per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mlflow"
    script.write_text(textwrap.dedent("""\
        #!/bin/sh
        printf '%s\\n' "$*" >> "$MLFLOW_CALLS"
    """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    calls = tmp_path / "calls"
    full_env = {"PATH": f"{fake_mlflow(tmp_path)}{os.pathsep}{os.environ['PATH']}", "MLFLOW_CALLS": str(calls), **env}
    subprocess.run(["sh", str(ENTRYPOINT), *args], env=full_env, check=True, timeout=60)
    return calls.read_text().splitlines()


def test_entrypoint_runs_the_seed_command_with_compose_env(tmp_path, compose):
    env = env_of(compose["services"]["mlflow"])
    calls = run_entrypoint(tmp_path, env)
    uri = "mysql://mlflowuser:mlflowpassword@mysql:3306/mlflowdb"
    expected = [
        f"db upgrade {uri}",
        f"server --host 0.0.0.0 --port 5001 --backend-store-uri {uri} --serve-artifacts --artifacts-destination s3://default/",
    ]
    assert calls == expected, f"expected\n  {expected}\ngot\n  {calls}"


def test_entrypoint_encodes_passwords_and_passes_extra_arguments(tmp_path):
    calls = run_entrypoint(tmp_path, {"MYSQL_USER": "u", "MYSQL_PASSWORD": "p@ss:w/rd%", "MYSQL_HOST": "127.0.0.1",
                                      "MYSQL_TCP_PORT": "3307", "MYSQL_DATABASE": "db"}, "--workers", "2")
    uri = "mysql://u:p%40ss%3Aw%2Frd%25@127.0.0.1:3307/db"
    assert calls[0] == f"db upgrade {uri}", calls
    assert calls[1].endswith(f"--backend-store-uri {uri} --serve-artifacts --artifacts-destination s3://default/ --workers 2"), calls


def test_entrypoint_has_no_default_artifact_root():
    text = ENTRYPOINT.read_text()
    assert "--default-artifact-root" not in text, "artifacts go through --serve-artifacts, not a client-side s3:// root"
    assert re.search(r'^mlflow db upgrade "\$BACKEND_STORE_URI"$', text, re.M), "entrypoint must run `mlflow db upgrade` first"
    assert re.search(r"^exec mlflow server", text, re.M), "entrypoint must exec the server (signals reach it)"


def test_mlflow_image_runs_the_shared_entrypoint():
    final = stages(MLFLOW_DOCKERFILE)[-1]
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(rest.split()[0] == "entrypoint.sh" for rest in copies), f"COPY entrypoint.sh missing: {copies}"
    entrypoint = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint and "mlflow-entrypoint.sh" in entrypoint[-1], entrypoint
    assert "CMD" not in [keyword for keyword, _ in final], "no CMD: arguments are extra `mlflow server` flags"
    runs = " ".join(rest for stage in stages(MLFLOW_DOCKERFILE) for keyword, rest in stage if keyword == "RUN")
    # install-mlflow.sh: requirements.txt as it is for the pin (the ARG's default), 3.18.0 over it.
    assert 'install-mlflow.sh /opt/mlflow/bin/python "$MLFLOW_VERSION"' in runs, "the image installs via install-mlflow.sh"
    installer = (MLFLOW_DOCKERFILE.parent / "install-mlflow.sh").read_text()
    assert '-r "$here/requirements.txt"' in installer, "install-mlflow.sh installs exactly requirements.txt"
    pin = re.search(r"^mlflow\[auth\]==(\S+)$", (MLFLOW_DOCKERFILE.parent / "requirements.txt").read_text(), re.M)[1]
    assert re.search(rf"^ARG MLFLOW_VERSION={re.escape(pin)}$", MLFLOW_DOCKERFILE.read_text(), re.M), "defaults to the pin"
    assert stages(MLFLOW_DOCKERFILE)[0][0] == ("FROM", "ubuntu:22.04 AS build"), "Ubuntu 22.04 (Python 3.10)"


def test_native_stack_uses_the_same_command_and_pins():
    if not NATIVE_STACK.exists():
        pytest.skip("scripts/stack is not in the tree yet")
    text = NATIVE_STACK.read_text()
    assert re.search(r'\bsh "\$ENTRYPOINT"|mlflow-image/entrypoint\.sh"?\s*$', text, re.M), (
        "scripts/stack must run mlflow-image/entrypoint.sh"
    )
    for needed in ("mlflow-image/entrypoint.sh", "mlflow-image/requirements.txt", "compose/.env.example"):
        assert needed in text, f"scripts/stack must use {needed} (the one shared with compose)"
    # An invocation (flags follow), not a message that mentions the words.
    own = [line for line in text.splitlines()
           if re.search(r"\bmlflow\s+server\s+(--|\\$)", line) and not line.lstrip().startswith("#")]
    assert not own, f"scripts/stack must start MLflow through entrypoint.sh, not its own `mlflow server`: {own}"


def test_requirements_are_exact_pins():
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([0-9][A-Za-z0-9.]*)", line)
            assert match, f"requirements.txt: expected name==version, got {line!r}"
            pins[match[1].lower()] = match[2]
    # flask-wtf and wtforms: the [auth] extra's requirements (MLflow's basic-auth app).
    assert set(pins) == {"mlflow", "mysqlclient", "sqlalchemy", "boto3", "flask-wtf", "wtforms"}, sorted(pins)
    assert pins["mlflow"] == "3.17.2", pins


# --------------------------------------------------------------------------- Dockerfiles


def test_proxy_dockerfile():
    all_stages = stages(PROXY_DOCKERFILE)
    assert len(all_stages) >= 2, "multi-stage: a builder and a small runtime"
    builder, runtime = all_stages[0], all_stages[-1]
    builder_image = builder[0][1].split()[0]
    runtime_image = runtime[0][1].split()[0]
    assert re.fullmatch(r"rust:1\.95[-.\w]*", builder_image), builder_image
    assert "slim" in runtime_image, f"small runtime image expected, got {runtime_image}"
    codename = re.search(r"(bookworm|trixie|bullseye)", builder_image)
    assert codename and codename[1] in runtime_image, (
        f"builder {builder_image} and runtime {runtime_image} must share the Debian release (glibc)"
    )
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "cargo build --release --locked -p mlflow-artifact-proxy" in runs, runs
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"runtime must run as non-root, got USER {users}"
    assert ("ENTRYPOINT", '["mlflow-artifact-proxy"]') in runtime


@pytest.mark.parametrize("dockerfile", [PROXY_DOCKERFILE, MLFLOW_DOCKERFILE], ids=["proxy", "mlflow-image"])
def test_dockerfile_minimal_lint(dockerfile):
    """What hadolint checks and matters most here, in case it is not installed."""
    problems = []
    all_stages = stages(dockerfile)
    for stage in all_stages:
        image = stage[0][1].split()[0]
        if ":" not in image and "@" not in image:
            problems.append(f"FROM {image}: untagged")
        elif image.endswith(":latest"):
            problems.append(f"FROM {image}: latest")
        for keyword, rest in stage:
            if keyword == "ADD" and re.search(r"https?://", rest):
                problems.append(f"ADD {rest}: download with a checked RUN instead")
            if keyword == "RUN" and "apt-get install" in rest:
                if "--no-install-recommends" not in rest:
                    problems.append("apt-get install without --no-install-recommends")
                if "rm -rf /var/lib/apt/lists" not in rest:
                    problems.append("apt-get install without cleaning /var/lib/apt/lists")
                if not re.search(r"apt-get install -y", rest):
                    problems.append("apt-get install without -y")
            if keyword == "RUN" and "pip install" in rest and "--no-cache-dir" not in rest:
                problems.append("pip install without --no-cache-dir")
            if keyword == "RUN" and re.search(r"\bsudo\b", rest):
                problems.append("sudo in RUN")
    users = [rest for keyword, rest in all_stages[-1] if keyword == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"final stage must switch to a non-root USER, got {users}")
    assert not problems, f"{dockerfile.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include the workspace"
    assert {"!Cargo.toml", "!Cargo.lock", "!proxy/", "!benches/", "!testkit/"} <= set(lines), lines
    assert "**/target" in lines, lines


# Debian's base-passwd creates these users and groups in every Debian and Ubuntu image
# (/usr/share/base-passwd/{passwd,group}.master); `groupadd proxy` fails there with exit 9.
BASE_PASSWD_FALLBACK = {
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "adm", "tty", "disk", "kmem", "dialout", "fax",
    "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip", "operator", "src", "shadow", "utmp",
    "video", "sasl", "plugdev", "staff", "users", "nogroup",
}


def base_passwd() -> tuple[set[str], set[int]]:
    names, ids = set(BASE_PASSWD_FALLBACK), set(range(0, 100)) | {65534}
    for master in ("passwd.master", "group.master"):
        path = Path("/usr/share/base-passwd") / master
        if path.exists():
            for line in path.read_text().splitlines():
                fields = line.split(":")
                names.add(fields[0])
                ids.add(int(fields[2]))
    return names, ids


@pytest.mark.parametrize("dockerfile", [PROXY_DOCKERFILE, MLFLOW_DOCKERFILE], ids=["proxy", "mlflow-image"])
def test_image_users_do_not_clash_with_debian_base_passwd(dockerfile):
    names, ids = base_passwd()
    runs = " && ".join(rest for keyword, rest in stages(dockerfile)[-1] if keyword == "RUN")
    created = re.findall(r"\b(groupadd|useradd)\b([^&;|]*)", runs)
    assert {tool for tool, _ in created} == {"groupadd", "useradd"}, f"expected a groupadd and a useradd: {created}"
    for tool, command in created:
        words = command.split()
        name = words[-1]
        assert name not in names, f"{tool} {name}: Debian's base-passwd already has {name!r} (the build fails)"
        for flag in ("--uid", "--gid", "-u", "-g"):
            if flag in words:
                value = words[words.index(flag) + 1]
                if value.isdigit():
                    assert int(value) not in ids and int(value) >= 1000, f"{tool} {flag} {value}: a system id"
    user = [rest for keyword, rest in stages(dockerfile)[-1] if keyword == "USER"][-1]
    assert user == "10001:10001", f"USER {user}: the created uid:gid, numeric (runAsNonRoot can check it)"


def test_mlflow_image_defaults_to_ubuntu_and_compose_passes_the_same_base(raw_compose):
    text = MLFLOW_DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=ubuntu:22\.04$", text, re.M), "the default base stays Ubuntu 22.04"
    assert [s[0][1].split()[0] for s in stages(MLFLOW_DOCKERFILE)] == ["ubuntu:22.04", "ubuntu:22.04"]
    build = raw_compose["services"]["mlflow"]["build"]
    assert build["args"] == {
        "BASE_IMAGE": "${MLFLOW_BASE_IMAGE:-ubuntu:22.04}",
        "MLFLOW_VERSION": "${MLFLOW_VERSION:-3.17.2}",
    }, build


# --------------------------------------------------------------------------- a real compose implementation

DOCKER_COMPOSE = shutil.which("docker-compose")


def compose_v1_file(tmp_dir: Path) -> Path:
    """compose.yaml for docker-compose 1.29 (Debian 12's), which predates the top-level `name:`."""
    path = tmp_dir / "compose.v1.yaml"
    path.write_text("".join(line for line in COMPOSE_FILE.read_text().splitlines(keepends=True)
                            if not line.startswith("name:")))
    return path


def compose_config(*args: str, env_file: Path, environ: dict[str, str] | None = None) -> dict:
    clean_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(environ or {})}
    v1_file = compose_v1_file(env_file.parent)
    command = ["docker-compose", "--env-file", str(env_file), "--project-directory", str(COMPOSE_DIR),
               "-f", str(v1_file), *args, "config"]
    done = subprocess.run(command, env=clean_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed")
def test_real_compose_validates_and_renders_like_env_example(tmp_path, env_example):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    example = tmp_path / "example.env"
    example.write_text(ENV_EXAMPLE.read_text())
    with_defaults = compose_config(env_file=empty)
    with_example = compose_config(env_file=example)
    assert with_defaults == with_example, "docker-compose renders the file differently with .env.example"
    services = with_defaults["services"]
    assert CORE_SERVICES <= set(services), sorted(services)
    assert env_of(services["mlflow"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["proxy"]["depends_on"]["defaultbucket"]["condition"] == "service_completed_successfully"
    monitoring = compose_config("--profile", "monitoring", env_file=empty)
    assert monitoring["services"]["prometheus"]["profiles"] == ["monitoring"]
    gc = compose_config("--profile", "gc", env_file=empty)
    assert {"gc", "gc-orphans"} <= set(gc["services"]), sorted(gc["services"])


# --------------------------------------------------------------------------- the same names natively

# What the entrypoint reads; compose sets each one, so nothing rests on the script's own defaults.
ENTRYPOINT_VARIABLES = {"MLFLOW_HOST", "MLFLOW_PORT", "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_USER",
                        "MYSQL_PASSWORD", "MYSQL_DATABASE", "MLFLOW_ARTIFACTS_DESTINATION",
                        # MLflow's basic-auth app (MLFLOW_AUTH=true)
                        "MLFLOW_AUTH", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                        "MLFLOW_AUTH_DEFAULT_PERMISSION", "MLFLOW_AUTH_CACHE_TTL_SECONDS",
                        "MLFLOW_FLASK_SERVER_SECRET_KEY", "AWS_CA_BUNDLE"}
# Read by the entrypoint with a default compose does not need to change.
ENTRYPOINT_OPTIONAL = {"MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_CONFIG_PATH", "TMPDIR"}


def test_compose_sets_every_variable_the_entrypoint_reads(compose):
    # MLFLOW_DB_UPGRADE: compose keeps its default (migrate at start); the Helm chart turns it off.
    read = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", ENTRYPOINT.read_text())) - {"BACKEND_STORE_URI", "PYTHON", "MLFLOW_DB_UPGRADE"}
    read -= ENTRYPOINT_OPTIONAL
    assert read <= ENTRYPOINT_VARIABLES | {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}, (
        f"entrypoint.sh reads variables this test does not know: {sorted(read - ENTRYPOINT_VARIABLES)}"
    )
    missing = sorted(ENTRYPOINT_VARIABLES - set(env_of(compose["services"]["mlflow"])))
    assert not missing, f"compose's mlflow service must set {missing}"


@pytest.mark.parametrize("service", ["mlflow", "proxy", "defaultbucket"])
def test_native_stack_sets_the_same_variable_names(service, compose, env_example):
    if not NATIVE_STACK.exists():
        pytest.skip("scripts/stack is not in the tree yet")
    stack = NATIVE_STACK.read_text()
    missing = [key for key in env_of(compose["services"][service])
               if key not in env_example and not re.search(rf"\b{key}\b", stack)]
    assert not missing, (
        f"{service}: compose sets {missing}, which neither compose/.env.example (read by scripts/stack) "
        "nor scripts/stack provides: the native stack would run it differently"
    )


PROXY_BIN = Path(os.environ.get("PROXY_BIN", ROOT / "target" / "release" / "mlflow-artifact-proxy"))


@pytest.mark.skipif(not PROXY_BIN.exists(), reason=f"{PROXY_BIN} is not built")
@pytest.mark.parametrize(
    ("service", "subcommand"), [("proxy", "serve"), ("defaultbucket", "ensure-bucket"), ("gc-orphans", "gc")]
)
def test_proxy_cli_knows_every_variable_compose_sets(service, subcommand, compose):
    done = subprocess.run([str(PROXY_BIN), subcommand, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    keys = [key for key in env_of(compose["services"][service]) if key.startswith(("PROXY_", "MLFLOW_"))]
    unknown = [key for key in keys if key not in done.stdout]
    assert not unknown, f"`mlflow-artifact-proxy {subcommand} --help` documents no {unknown}:\n{done.stdout}"


@pytest.mark.skipif(not PROXY_BIN.exists(), reason=f"{PROXY_BIN} is not built")
@pytest.mark.parametrize("service", ["proxy", "defaultbucket", "gc-orphans"])
def test_proxy_cli_accepts_the_environment_compose_gives_it(service, compose):
    """The service's own command, with exactly the environment compose renders (empty values
    included: `AWS_CA_BUNDLE: ${AWS_CA_BUNDLE:-}`), gets past argument parsing. Only the store's
    address is swapped for one the proxy refuses after parsing, so that nothing starts. Before, an
    empty AWS_CA_BUNDLE was a usage error (exit 2) and the proxy container never started."""
    spec = compose["services"][service]
    env = {**env_of(spec), "PATH": os.environ.get("PATH", ""), "MLFLOW_S3_ENDPOINT_URL": "ftp://nowhere"}
    if spec.get("entrypoint"):  # the gc loop: the proxy command it runs, once
        command = shlex.split(loop_command(spec))
        assert command[0] == "mlflow-artifact-proxy", command
        command = command[1:]
    else:
        command = spec["command"]
    done = subprocess.run([str(PROXY_BIN), *command], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "MLFLOW_S3_ENDPOINT_URL=ftp://nowhere" in done.stderr, (
        f"{service}: {command} exited {done.returncode}: {done.stderr}"
    )


@pytest.mark.skipif(not PROXY_BIN.exists(), reason=f"{PROXY_BIN} is not built")
def test_env_example_proxy_values_equal_the_cli_defaults(env_example):
    """.env.example repeats the proxy's defaults; a changed default must be changed in both."""
    help_text = " ".join(
        subprocess.run([str(PROXY_BIN), sub, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
        for sub in ("serve", "ensure-bucket")
    )
    defaults = dict(re.findall(r"\[env: ([A-Z0-9_]+)=?\] \[default: ([^\]]+)\]", help_text))
    differ = {key: (env_example[key], defaults[key]) for key in env_example
              if key in defaults and env_example[key] != defaults[key]
              and key not in {"PROXY_LISTEN", "PROXY_METRICS_LISTEN", "PROXY_UPSTREAM"}}
    assert not differ, f".env.example vs the proxy's --help defaults (env value, CLI default): {differ}"


def test_proxy_stop_grace_covers_its_shutdown_grace(compose):
    grace = int(env_of(compose["services"]["proxy"])["PROXY_SHUTDOWN_GRACE_SECS"])
    stop = int(str(compose["services"]["proxy"]["stop_grace_period"]).rstrip("s"))
    assert stop > grace, f"stop_grace_period {stop}s must exceed PROXY_SHUTDOWN_GRACE_SECS {grace}s"


# --------------------------------------------------------------------------- garbage collection (docs/gc.md)

GC_SERVICES = {"gc", "gc-orphans"}


def loop_command(service: dict) -> str:
    """The command the service's `sh -c` loop runs before it sleeps GC_INTERVAL."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"], entrypoint
    match = re.fullmatch(r'while :; do (.+); sleep "\$GC_INTERVAL"; done', entrypoint[2])
    assert match, f"expected a run-then-sleep loop, got {entrypoint[2]!r}"
    return match[1]


def test_gc_services_sit_behind_the_gc_profile(compose):
    services = compose["services"]
    for name in GC_SERVICES:
        service = services[name]
        assert service["profiles"] == ["gc"], f"{name}: {service.get('profiles')}"
        assert service["restart"] == "unless-stopped" and service["init"] is True, name
        assert not service.get("ports"), f"{name} publishes nothing"
        assert service["depends_on"]["proxy"]["condition"] == "service_healthy", name
        env = env_of(service)
        # Through the proxy (artifacts are mlflow-artifacts: URIs), as MLflow's admin when auth is on.
        assert env["MLFLOW_TRACKING_URI"] == "http://proxy:5000", env
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (
            env_of(services["mlflow"])["MLFLOW_AUTH_ADMIN_USERNAME"],
            env_of(services["mlflow"])["MLFLOW_AUTH_ADMIN_PASSWORD"],
        )
        assert env["GC_INTERVAL"] == "24h"


def test_gc_runs_mlflow_gc_in_the_mlflow_image_with_its_database(compose, raw_compose):
    gc, mlflow = compose["services"]["gc"], compose["services"]["mlflow"]
    assert gc["image"] == mlflow["image"] and gc["build"] == mlflow["build"], "gc runs the MLflow image"
    assert raw_compose["services"]["gc"]["build"] == raw_compose["services"]["mlflow"]["build"]
    assert loop_command(gc) == "python3 /usr/local/bin/mlflow-gc.py"
    copies = [rest.split() for keyword, rest in stages(MLFLOW_DOCKERFILE)[-1] if keyword == "COPY"]
    assert ["gc.py", "/usr/local/bin/mlflow-gc.py"] in copies, f"the MLflow image must carry gc.py: {copies}"
    env = env_of(gc)
    for key in ("MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD"):
        assert env[key] == env_of(mlflow)[key], f"gc.{key}: {env[key]!r}, mlflow's: {env_of(mlflow)[key]!r}"
    assert env["GC_OLDER_THAN"] == "30d"
    assert not [key for key in env if key.startswith("AWS_")], "mlflow gc deletes through the proxy: no S3 keys"
    assert gc["depends_on"]["mysql"]["condition"] == "service_healthy"


def test_gc_orphans_runs_the_proxy_image_against_the_same_store(compose):
    orphans, proxy = compose["services"]["gc-orphans"], compose["services"]["proxy"]
    assert orphans["image"] == proxy["image"] and orphans["build"] == proxy["build"]
    assert loop_command(orphans) == "mlflow-artifact-proxy gc --delete"
    assert env_of(orphans)["PROXY_GC_OLDER_THAN"] == "7d"
    assert orphans["healthcheck"] == {"disable": True}, "the image's healthcheck is the server's"


def test_gc_reads_what_compose_gives_it():
    """gc.py reads the variables compose sets (and builds the database URI as entrypoint.sh does)."""
    text = (MLFLOW_IMAGE_DIR / "gc.py").read_text()
    for key in ("MLFLOW_TRACKING_URI", "GC_OLDER_THAN", "MYSQL_HOST", "MYSQL_TCP_PORT", "MYSQL_USER",
                "MYSQL_PASSWORD", "MYSQL_DATABASE", "BACKEND_STORE_URI"):
        assert f'"{key}"' in text, f"gc.py does not read {key}"
