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
# Extra arguments are appended to `mlflow server` (e.g. --workers 2).
set -eu

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

exec mlflow server \
    --host "$MLFLOW_HOST" \
    --port "$MLFLOW_PORT" \
    --backend-store-uri "$BACKEND_STORE_URI" \
    --serve-artifacts \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    "$@"
