#!/bin/sh
# install-mlflow.sh PYTHON [VERSION]: the one way MLflow is installed, shared by the image
# (Dockerfile, build argument MLFLOW_VERSION) and the native stack (scripts/stack --mlflow).
#
#   VERSION unset or 3.17.2: requirements.txt, the pin, exactly as it is.
#   VERSION 3.18.0: requirements.txt, then mlflow and mlflow-skinny 3.18.0 over it without their
#       dependencies. `pip install mlflow==3.18.0` cannot work yet: it requires
#       mlflow-tracing==3.18.0, which is not in the package registry. 3.18.0 runs on 3.17.2's
#       dependencies (mlflow-tracing 3.17.2 stays) plus python-multipart, which mlflow-skinny
#       3.18.0 added. Once mlflow-tracing 3.18.0 is published, move the pin in requirements.txt.
#
# Other versions are refused: each needs its dependencies checked first (docs/compose.md).
set -eu

python=${1:?usage: install-mlflow.sh PYTHON [VERSION]}
here=$(cd "$(dirname "$0")" && pwd)
pin=$(sed -n 's/^mlflow\[auth\]==\([^ ]*\).*/\1/p' "$here/requirements.txt")
version=${2:-$pin}

case $version in
    "$pin" | 3.18.0) ;;
    *) echo "install-mlflow.sh: MLflow $version is not supported here (supported: $pin, 3.18.0)" >&2; exit 2 ;;
esac

"$python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"
if [ "$version" != "$pin" ]; then
    "$python" -m pip install --disable-pip-version-check -q --no-deps \
        "mlflow==$version" "mlflow-skinny==$version" python-multipart==0.0.34
fi
# What is installed is what was asked for (a partial install must not pass for the other version).
"$python" -W ignore -c 'import sys, mlflow; sys.exit(0 if mlflow.__version__ == sys.argv[1] else "installed MLflow " + mlflow.__version__ + ", not " + sys.argv[1])' "$version"
