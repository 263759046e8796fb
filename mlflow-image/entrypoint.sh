#!/bin/sh
# The one MLflow launch command, shared by the compose image (its ENTRYPOINT) and the native
# stack (scripts/stack). Keep every MLflow server flag here so both run exactly the same server.
#
# Variables (defaults match compose/.env.example):
#   BACKEND_STORE_URI             full SQLAlchemy URI; if unset it is built from the MYSQL_* variables
#                                 (user and password are URL-encoded):
#                                 mysql://$MYSQL_USER:$MYSQL_PASSWORD@$MYSQL_HOST:$MYSQL_TCP_PORT/$MYSQL_DATABASE
#   MYSQL_HOST (mysql), MYSQL_TCP_PORT (3306), MYSQL_USER (mlflowuser),
#   MYSQL_PASSWORD (mlflowpassword), MYSQL_DATABASE (mlflowdb)
#   MLFLOW_HOST                   listen address (0.0.0.0)
#   MLFLOW_PORT                   listen port, internal: the proxy's upstream (5001)
#   MLFLOW_ARTIFACTS_DESTINATION  where proxied artifacts go (s3://default/)
#   MLFLOW_DB_UPGRADE             true (default): run `mlflow db upgrade` before serving; false: skip
#                                 it (Kubernetes runs it once, as a hook Job, not in every replica)
#   MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
#   MLFLOW_SERVER_ALLOWED_HOSTS, MLFLOW_DISABLE_TELEMETRY, DO_NOT_TRACK: read by MLflow/boto3 directly.
#   AWS_CA_BUNDLE                 PEM file of a private CA the S3 store's certificate is signed by
#                                 (boto3 reads it); unset here when empty
#   MLFLOW_AUTH                   true: run MLflow's basic-auth app (`--app-name basic-auth`): users,
#                                 permissions, and the proxy applies them to artifacts (docs/security.md)
#   MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_ADMIN_PASSWORD (required with MLFLOW_AUTH=true;
#                                 used when the user store is created), MLFLOW_AUTH_DEFAULT_PERMISSION
#                                 (READ), MLFLOW_AUTH_DATABASE_URI (sqlite:////mlflow-auth/basic_auth.db;
#                                 MLflow's auth migrations fail on MySQL/MariaDB: duplicate constraint names),
#                                 MLFLOW_AUTH_CACHE_TTL_SECONDS (5: MLflow's own cache of password checks),
#                                 MLFLOW_FLASK_SERVER_SECRET_KEY (random per start when unset)
# Extra arguments are appended to `mlflow server` (e.g. --workers 2).
set -eu

# Compose passes AWS_CA_BUNDLE empty when no private CA is set; boto3 refuses an empty one.
[ -n "${AWS_CA_BUNDLE:-}" ] || unset AWS_CA_BUNDLE

MLFLOW_HOST="${MLFLOW_HOST:-0.0.0.0}"
MLFLOW_PORT="${MLFLOW_PORT:-5001}"
MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-s3://default/}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-true}"

if [ -z "${BACKEND_STORE_URI:-}" ]; then
    PYTHON="${PYTHON:-python3}"
    urlencode() { "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
    db_user="$(urlencode "${MYSQL_USER:-mlflowuser}")"
    db_pass="$(urlencode "${MYSQL_PASSWORD:-mlflowpassword}")"
    BACKEND_STORE_URI="mysql://${db_user}:${db_pass}@${MYSQL_HOST:-mysql}:${MYSQL_TCP_PORT:-3306}/${MYSQL_DATABASE:-mlflowdb}"
fi

case "${MLFLOW_DB_UPGRADE:-true}" in
    true | false) ;;
    *) echo "entrypoint.sh: MLFLOW_DB_UPGRADE must be true or false, not '$MLFLOW_DB_UPGRADE'" >&2; exit 2 ;;
esac
# Idempotent: creates the schema on an empty database, migrates an old one, no-op otherwise.
# Skipped with MLFLOW_DB_UPGRADE=false (Kubernetes runs it once, as a hook Job).
[ "${MLFLOW_DB_UPGRADE:-true}" = false ] ||
mlflow db upgrade "$BACKEND_STORE_URI"

if [ "${MLFLOW_AUTH:-false}" = true ]; then
    if [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
        echo "entrypoint: MLFLOW_AUTH=true needs MLFLOW_AUTH_ADMIN_PASSWORD (the admin's password)" >&2
        exit 1
    fi
    auth_db="${MLFLOW_AUTH_DATABASE_URI:-sqlite:////mlflow-auth/basic_auth.db}"
    # MLflow reads its auth settings from an ini file; this one is written from the environment.
    MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
    cat >"$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $auth_db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-5}
EOF
    export MLFLOW_AUTH_CONFIG_PATH
    if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
        MLFLOW_FLASK_SERVER_SECRET_KEY="$("${PYTHON:-python3}" -c 'import secrets; print(secrets.token_hex(32))')"
        export MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    set -- --app-name basic-auth "$@"
fi

exec mlflow server \
    --host "$MLFLOW_HOST" \
    --port "$MLFLOW_PORT" \
    --backend-store-uri "$BACKEND_STORE_URI" \
    --serve-artifacts \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    "$@"
