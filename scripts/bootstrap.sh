#!/usr/bin/env bash
# Creates/updates the project's virtual environment (.venv) and installs everything the main job
# and the tests need. Idempotent: a second run only checks what is installed.
#   - Python deps: exact pins from setup.cfg (+ test, torch and qat extras).
#   - Fashion-MNIST: the Debian package dataset-fashion-mnist when apt is available and we are
#     root; without it the demo falls back to scikit-learn's bundled digits and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${ELASTICVIT_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import elasticvit_tf, tensorflow, keras_tuner, ai_edge_litert, pytest, torch, tensorflow_model_optimization" >/dev/null 2>&1 \
   || [ setup.cfg -nt "$VENV/.elasticvit_installed" ]; then
  echo "[bootstrap] installing Python packages (pinned in setup.cfg)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[test,torch,qat]"
  # Its metadata pins absl-py~=1.2, which conflicts with TF 2.21's stack; it runs fine with 2.x.
  "$VENV/bin/python" -m pip install --quiet --no-deps tensorflow-model-optimization==0.8.1
  touch "$VENV/.elasticvit_installed"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[bootstrap] installing Debian package dataset-fashion-mnist"
    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
      || echo "[bootstrap] could not install dataset-fashion-mnist; the demo will use digits"
  else
    echo "[bootstrap] dataset-fashion-mnist not installed (needs root + apt); the demo will use digits"
  fi
fi
echo "[bootstrap] ready: $VENV"
