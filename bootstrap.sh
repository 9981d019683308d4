#!/usr/bin/env bash
# Create .venv and install the whole pinned stack, Horovod's source build included.
# Idempotent: a second run with unchanged requirements only checks a stamp (seconds).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
stamp="$VENV/.bootstrap-stamp"
SHIM_SRC=pipelines/training/remote/bind_address.c
want=$(cat requirements.txt requirements-dev.txt bootstrap.sh pyproject.toml "$SHIM_SRC" | sha256sum | cut -d' ' -f1)

# JVM artifacts (conf/jvm/pom.xml) into .jars/: delta/ (delta-spark engine) and hadoop/ (the tests' MiniCluster).
JARS=${JARS_DIR:-.jars}
jars_want=$(cat conf/jvm/pom.xml | sha256sum | cut -d' ' -f1)
if [[ ! -f "$JARS/.stamp" || "$(cat "$JARS/.stamp")" != "$jars_want" ]]; then
  if ! command -v mvn >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq maven >/dev/null
    else
      echo "bootstrap: Maven (mvn) is required to fetch the Delta and Hadoop jars (apt-get install maven)" >&2; exit 1
    fi
  fi
  pinned=$(sed -n 's/^delta-spark==//p' requirements.txt)
  grep -q "<delta.version>$pinned</delta.version>" conf/jvm/pom.xml \
    || { echo "bootstrap: conf/jvm/pom.xml delta.version differs from delta-spark==$pinned" >&2; exit 1; }
  rm -rf "$JARS" && mkdir -p "$JARS"
  mvn=(mvn -q -B -f conf/jvm/pom.xml dependency:copy-dependencies)
  "${mvn[@]}" -DoutputDirectory="$PWD/$JARS/delta" -DincludeGroupIds=io.delta -DexcludeTransitive=true
  "${mvn[@]}" -DoutputDirectory="$PWD/$JARS/hadoop" -DexcludeGroupIds=io.delta -DincludeScope=runtime
  echo "$jars_want" > "$JARS/.stamp"
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
command -v java >/dev/null || { echo "bootstrap: Java 17 is required (java not on PATH)" >&2; exit 1; }
if ! command -v cmake >/dev/null; then
  # Horovod's gloo build needs the system cmake (the PyPI cmake 4.x fails on gloo).
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
  else
    echo "bootstrap: a system cmake and g++ are required to build Horovod (apt-get install cmake g++)" >&2; exit 1
  fi
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip==24.3.1"
# setuptools<70 first: petastorm 0.13.1 needs pkg_resources, Horovod builds against it.
"${pip[@]}" install -q "setuptools==69.5.1" "wheel==0.45.1"
"${pip[@]}" install -q -r requirements.txt -r requirements-dev.txt
# Horovod has no wheel: build it against the TensorFlow just installed (pip caches the built wheel).
if ! "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
  echo "bootstrap: building horovod 0.28.1 from source (about 10 minutes the first time)" >&2
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
  HOROVOD_WITHOUT_MXNET=1 "${pip[@]}" install -q --no-build-isolation "horovod==0.28.1"
fi
# The tf-mwms training process's bind shim (keeps TensorFlow's gRPC server off the wildcard address), in the
# environment's lib/ so YARN's packed environment carries it.
command -v gcc >/dev/null || { echo "bootstrap: gcc is required to build $SHIM_SRC (apt-get install gcc)" >&2; exit 1; }
gcc -O2 -Wall -shared -fPIC -o "$VENV/lib/libbind_address.so" "$SHIM_SRC" -ldl
# The project itself, editable, so jobs, notebooks and tests import the same code.
"${pip[@]}" install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import horovod.tensorflow, petastorm, pyspark, deltalake, mlflow, tensorflow, torch"
echo "$want" > "$stamp"
echo "bootstrap: environment ready in $(( $(date +%s) - start ))s" >&2
