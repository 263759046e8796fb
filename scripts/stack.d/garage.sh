# shellcheck shell=bash
# Garage (https://garagehq.deuxfleurs.fr), a production S3 store, as the stack's `s3` service:
# `scripts/stack up --s3 garage`. Sourced by scripts/stack; uses its helpers and settings.
#
# One node on loopback, replication_factor = 1, data and metadata under .stack/data/garage.
# `garage server --single-node --default-access-key` lays out the node and imports the stack's own
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (allowed to create buckets) at every start, idempotently;
# `mlflow-artifact-proxy ensure-bucket` then creates the bucket, as on the test store. Garage signs
# with its own region name, so the stack's AWS_DEFAULT_REGION becomes $GARAGE_S3_REGION (garage).
# Ports: S3 on $MINIO_API_PORT; RPC and admin API on $MINIO_API_PORT+1000 and +1001 unless
# GARAGE_RPC_PORT / GARAGE_ADMIN_PORT say otherwise (so stacks on other ports do not collide).

GARAGE_VERSION=2.5.0
GARAGE_BIN="$TOOLS/bin/garage"
GARAGE_DIR="$DATA/garage"

garage_settings() {
    GARAGE_S3_REGION="${GARAGE_S3_REGION:-garage}"
    GARAGE_RPC_PORT="${GARAGE_RPC_PORT:-$((MINIO_API_PORT + 1000))}"
    GARAGE_ADMIN_PORT="${GARAGE_ADMIN_PORT:-$((MINIO_API_PORT + 1001))}"
    export AWS_DEFAULT_REGION="$GARAGE_S3_REGION"
}

ensure_garage() {
    # `garage --version` says "garage cargo:2.5.0 [features: ...]" when built by cargo install.
    case "$("$GARAGE_BIN" --version 2>/dev/null)" in *":$GARAGE_VERSION "* | *"v$GARAGE_VERSION"*) return 0 ;; esac
    command -v cargo >/dev/null || die "cargo is needed to build garage (https://rustup.rs)"
    say "building garage $GARAGE_VERSION into $TOOLS (once; 15-40 minutes on 2 cores)"
    cargo install garage --version "$GARAGE_VERSION" --locked --root "$TOOLS" \
        || die "cargo install garage failed"
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
