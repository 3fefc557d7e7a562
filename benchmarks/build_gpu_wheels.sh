#!/usr/bin/env bash
# Wheels that benchmarks/gpu_smoke.py installs on the GPU machine, which has PyTorch (CUDA) and
# transformers but not DeepSpeed, math-verify, tensorboard, datasets, nor this project. Built
# here with `pip wheel --no-deps`, versions pinned to this venv's (so what travels is what the
# CPU tests ran), into one folder that must stay under 64 MiB (what a device run can carry).
#
#   benchmarks/build_gpu_wheels.sh [OUT_DIR]      # default: gpu_wheels/ (git-ignored)
#
# DeepSpeed is built with DS_BUILD_OPS=0: no compiled ops in the wheel (JIT on demand; the
# smoke run's ZeRO-3 config uses torch's AdamW, so none is needed). Left out for size, and not
# imported by a synthetic-task run: pyarrow and pandas (datasets' loaders), grpcio and
# tensorboard-data-server (TensorBoard's server, not SummaryWriter). Binary wheels (pydantic-core,
# msgpack, xxhash, psutil) are for this machine's Python (cp311, x86_64); gpu_smoke.py says which
# import fails if the GPU machine's Python differs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_wheels}"
PY="${PYTHON:-.venv/bin/python}"
LIMIT_MIB=64
mkdir -p "$OUT"
rm -f "$OUT"/*.whl

pin() {  # name==version as installed in this venv
  "$PY" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"
}

"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" .
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps -w "$OUT" "$(pin deepspeed)"
DEPS=(
  hjson py-cpuinfo msgpack ninja einops pydantic pydantic_core annotated-types typing-inspection
  math-verify latex2sympy2_extended antlr4-python3-runtime
  tensorboard absl-py markdown protobuf werkzeug
  datasets dill multiprocess xxhash fsspec
  accelerate psutil
)
pins=()
for name in "${DEPS[@]}"; do pins+=("$(pin "$name")"); done
"$PY" -m pip wheel --quiet --no-deps -w "$OUT" "${pins[@]}"

ls -l "$OUT"
total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024 / 1024)) MiB in $(ls "$OUT"/*.whl | wc -l) wheels (limit ${LIMIT_MIB} MiB)"
if (( total > LIMIT_MIB * 1024 * 1024 )); then
  echo "error: the wheels exceed ${LIMIT_MIB} MiB" >&2
  exit 1
fi
