# shellcheck shell=bash
# Garage (https://garagehq.deuxfleurs.fr), a production S3 store, as the stack's `s3` service:
# `scripts/stack up --s3 garage`. Sourced by scripts/stack; uses its helpers and settings.
#
# One node on loopback, replication_factor = 1, data and metadata under .stack/data/garage.
# `garage server --single-node --default-access-key` lays out the node and imports the stack's own
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (allowed to create buckets) at every start, idempotently;
# `mlflow-artifact-proxy ensure-bucket` then creates the bucket, as on the test store. Garage signs
# with its own region name, so the stack's AWS_DEFAULT_REGION becomes $GARAGE_S3_REGION (garage).
# Ports: S3 on $MINIO_API_PORT; RPC and admin API on $MINIO_API_PORT+2 and +3 (+1 is the console's)
# unless GARAGE_RPC_PORT / GARAGE_ADMIN_PORT say otherwise: next to the S3 port, inside the stack's own
# port block, so that stacks on other ports do not collide (+1000 met the next block's S3 port).

GARAGE_VERSION=2.5.0
# What the stack uses of Garage: the LMDB metadata engine (db_engine below), the S3 API and the
# admin API's /health (always built). Left out of the default build: SQLite (its bundled C library,
# the longest single compile), K2V and the Prometheus metrics (264 crates instead of 286).
# bundled-libs bundles only SQLite's library here, so it costs nothing.
GARAGE_FEATURES=bundled-libs,lmdb
GARAGE_BIN="$TOOLS/bin/garage"
GARAGE_DIR="$DATA/garage"

garage_settings() {
    GARAGE_S3_REGION="${GARAGE_S3_REGION:-garage}"
    GARAGE_RPC_PORT="${GARAGE_RPC_PORT:-$((MINIO_API_PORT + 2))}"
    GARAGE_ADMIN_PORT="${GARAGE_ADMIN_PORT:-$((MINIO_API_PORT + 3))}"
    export AWS_DEFAULT_REGION="$GARAGE_S3_REGION"
}

garage_installed() {
    # `garage --version` says "garage cargo:2.5.0 [features: ...]" when built by cargo install (a
    # default build, with more features, serves as well).
    case "$("$GARAGE_BIN" --version 2>/dev/null)" in *":$GARAGE_VERSION "* | *"v$GARAGE_VERSION"*) return 0 ;; esac
    return 1
}

ensure_garage() {
    garage_installed && return 0
    command -v cargo >/dev/null || die "cargo is needed to build garage (https://rustup.rs)"
    mkdir -p "$TOOLS"
    # One build at a time: a second caller (another stack, or .ci/run's build in the background)
    # waits for the first and uses its binary.
    (
        flock 8
        garage_installed && exit 0
        say "building garage $GARAGE_VERSION ($GARAGE_FEATURES) into $TOOLS (once; 10-25 minutes on 2 cores)"
        cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
            --features "$GARAGE_FEATURES" --root "$TOOLS"
    ) 8>"$TOOLS/.garage-build.lock" || die "cargo install garage failed"
}

# The config is rewritten at every start (ports may change); the RPC secret is made once.
garage_config() {
    local secret_file="$GARAGE_DIR/rpc_secret" config="$GARAGE_DIR/garage.toml"
    mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    if [ ! -s "$secret_file" ]; then
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$secret_file")
    fi
    (umask 077 && cat >"$config" <<TOML
# Written by scripts/stack at each start of the garage store; edits are lost.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(cat "$secret_file")"

[s3_api]
s3_region = "$GARAGE_S3_REGION"
api_bind_addr = "127.0.0.1:$MINIO_API_PORT"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
TOML
    )
    printf '%s' "$config"
}

garage_healthy() { http_ok "http://127.0.0.1:$GARAGE_ADMIN_PORT/health"; }

start_garage() {
    local config
    for p in "$MINIO_API_PORT" "$GARAGE_RPC_PORT" "$GARAGE_ADMIN_PORT"; do
        port_open "$p" && die "127.0.0.1:$p is in use by another program (not started by scripts/stack)"
    done
    config=$(garage_config)
    # garage_api_common=debug logs each request with its headers (user-agent): the e2e suite reads it.
    start_bg s3 env RUST_LOG="${S3_RUST_LOG:-garage=info,garage_api_common=debug}" NO_COLOR=1 \
        GARAGE_DEFAULT_ACCESS_KEY="$AWS_ACCESS_KEY_ID" GARAGE_DEFAULT_SECRET_KEY="$AWS_SECRET_ACCESS_KEY" \
        "$GARAGE_BIN" -c "$config" server --single-node --default-access-key
    wait_until s3 60 garage_healthy || { stop_svc s3; die "garage did not become healthy"; }
}

# Run on its own (`scripts/stack.d/garage.sh build`): only build Garage into the tools folder, as
# `scripts/stack setup --s3 garage` would; .ci/run does so in the background.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    [ "${1:-}" = build ] || { echo "usage: scripts/stack.d/garage.sh build" >&2; exit 2; }
    TOOLS="${MLFLOW_STACK_TOOLS:-$HOME/.cache/mlflow-stack/tools}"
    GARAGE_BIN="$TOOLS/bin/garage"
    say() { printf '%s\n' "$*"; }
    die() { printf 'garage: error: %s\n' "$*" >&2; exit 1; }
    ensure_garage
    say "garage: $("$GARAGE_BIN" --version)"
fi
