#!/usr/bin/env bash
# Build SGLang's OWN virtual environment, separate from the trainer's.
#
#   scripts/setup_sglang_env.sh [ENV_DIR] [--cpu|--gpu] [--force] [--unlocked]
#
# ENV_DIR defaults to .venv-sglang in the repository root. The trainer talks to SGLang over
# HTTP only, so the two environments never share packages: sglang 0.5.23 pins torch==2.14.1,
# transformers==5.19.0 and tokenizers==0.23.2, which the trainer's venv does not use.
#
# --gpu  (default when `nvidia-smi -L` finds a GPU): the ordinary install,
#        `pip install "sglang==0.5.23"`, which brings torch 2.14.1 (CUDA 13), sglang-kernel,
#        flashinfer and the other CUDA packages. SGLANG_EXTRAS="[all]" adds the optional extras
#        (diffusion, tracing, http2); they are not needed for RL rollouts.
# --cpu  (default otherwise): what docs/STACK_ON_CPU.md measured on CPU-only machines:
#        torch 2.14.1 + torchvision 0.29.1 (on the CI machines' local disk for Python 3.11),
#        `pip install --no-deps sglang==0.5.23`, its non-GPU dependencies at sglang's pins, and
#        the test-only sgl_kernel stub from tests/sglang_cpu_stub (sglang-kernel has no CPU
#        wheel). Meant for tests and development; real rollouts run on GPUs. Every package is
#        held at the version locked in constraints/sglang-cpu.txt (pip -c; refreshed by
#        scripts/lock.sh), so a rebuild gets the env that was tested.
# --unlocked  --cpu without constraints/sglang-cpu.txt: the newest releases that the steps allow
#        (what scripts/lock.sh freezes). --gpu builds are not locked: sglang pins its own core.
# --force  delete ENV_DIR first.
#
# Idempotent: if ENV_DIR already holds a finished build of the same variant that imports, it
# prints so and exits 0. Environment: PYTHON (interpreter for the venv, default python3.11, else
# python3), SGLANG_VERSION (default 0.5.23).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir=""
mode=""
force=0
unlocked=0
for arg in "$@"; do
  case "$arg" in
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    --force) force=1 ;;
    --unlocked) unlocked=1 ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "setup_sglang_env: unknown option $arg (use --cpu, --gpu, --force, --unlocked)" >&2
        exit 2 ;;
    *) [[ -z "$env_dir" ]] || { echo "setup_sglang_env: one ENV_DIR only" >&2; exit 2; }
       env_dir="$arg" ;;
  esac
done
env_dir="${env_dir:-$repo_root/.venv-sglang}"
if [[ -z "$mode" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then mode=gpu; else mode=cpu; fi
  echo "setup_sglang_env: no --cpu/--gpu given; detected --$mode"
fi
sglang_version="${SGLANG_VERSION:-0.5.23}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$env_dir/.strace_ds_sglang_env"
want_stamp="sglang==$sglang_version mode=$mode"
if [[ $mode == cpu ]]; then
  # A changed stub must be reinstalled: its content is part of what "already built" means.
  stub_hash="$(cd "$repo_root/tests/sglang_cpu_stub" && find . -type f \( -name '*.py' -o -name '*.toml' \) \
               -not -path './build/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)"
  want_stamp="$want_stamp stub=$stub_hash"
  # The locked versions too: a changed lock means a rebuild (pip then changes only what moved).
  lock_file="$repo_root/constraints/sglang-cpu.txt"
  lock=()
  if [[ $unlocked == 1 ]]; then
    want_stamp="$want_stamp lock=none"
  else
    locked_sglang="$(sed -n 's/^sglang==//p' "$lock_file")"
    if [[ "$locked_sglang" != "$sglang_version" ]]; then
      echo "setup_sglang_env: SGLANG_VERSION=$sglang_version but $lock_file locks" \
           "sglang==$locked_sglang; pass --unlocked, or refresh the lock (scripts/lock.sh sglang)" >&2
      exit 2
    fi
    lock=(-c "$repo_root/constraints/sglang-cpu.txt")
    want_stamp="$want_stamp lock=$(sha256sum "$lock_file" | cut -c1-12)"
  fi
fi
start_s=$SECONDS

# What must import for the env to count as built. The CPU check also proves the stub is the
# one installed (a real sgl_kernel would have no __version__ ending in cpu-stub).
if [[ $mode == cpu ]]; then
  check_py='import sglang, sgl_kernel, torch, torchvision
import sglang.srt.server_args
assert sgl_kernel.__version__.endswith("cpu-stub"), sgl_kernel.__file__
print("sglang", sglang.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__)'
else
  check_py='import sglang, sgl_kernel, torch
import sglang.srt.server_args
print("sglang", sglang.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)'
fi

if [[ $force == 1 && -d "$env_dir" ]]; then
  echo "setup_sglang_env: --force: removing $env_dir"
  rm -rf "$env_dir"
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] \
   && "$env_dir/bin/python" -c "$check_py" >/dev/null 2>&1; then
  echo "setup_sglang_env: $env_dir already built ($want_stamp) and importable; nothing to do" \
       "($((SECONDS - start_s)) s)"
  exit 0
fi

echo "setup_sglang_env: building $env_dir ($want_stamp) with $("$python_bin" --version 2>&1)"
if [[ ! -x "$env_dir/bin/python" ]]; then
  "$python_bin" -m venv "$env_dir"
fi
rm -f "$stamp"
pip=("$env_dir/bin/python" -m pip install --disable-pip-version-check)

if [[ $mode == gpu ]]; then
  "${pip[@]}" "sglang${SGLANG_EXTRAS:-}==$sglang_version"
else
  if [[ "$("$python_bin" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != True ]]; then
    echo "setup_sglang_env: warning: the local torch 2.14.1 wheels are for Python 3.11;" \
         "another Python downloads them from PyPI (several GB)" >&2
  fi
  # 1. torch first, from the local disk on the CI machines. PyPI's torch 2.14.1 is the CUDA
  #    build (about 5.5 GB with its nvidia-* wheels) but runs on CPU; it is what sglang pins,
  #    and torchvision 0.29.1 is the build that loads beside it.
  pip+=("${lock[@]}")
  "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
  # 2. sglang itself without its dependency list: that list drags in sglang-kernel (373 MB,
  #    CUDA only), flashinfer, flash-attn, cutlass and other GPU-only wheels.
  "${pip[@]}" --no-deps "sglang==$sglang_version"
  # 3. sglang 0.5.23's dependencies minus the GPU-only ones (cuda-python, flashinfer,
  #    flash-attn-4, humming-kernels, kernels, nvidia-*, nvshmem4py, quack-kernels, sgl-*,
  #    sglang-kernel, tilelang, torch_memory_saver, torchaudio, torchcodec, deepseek-recipe,
  #    tml-renderers, apache-tvm-ffi), at sglang's own pins. torch stays where step 1 put it.
  "${pip[@]}" \
    "torch==2.14.1" "torchvision==0.29.1" \
    "transformers==5.19.0" "tokenizers==0.23.2" \
    aiohttp "anthropic>=0.20.0" "blobfile==3.0.0" build "compressed-tensors==0.18.0" datasets \
    distro easydict einops fastapi gguf interegular IPython "llguidance>=1.7.6,<2.0.0" \
    "mistral_common>=1.11.5" modelscope msgspec ninja "numba==0.65.1" numpy "openai==2.8.0" \
    "openai-harmony==0.0.4" orjson "outlines==0.1.11" packaging partial_json_parser pillow \
    "prometheus-client>=0.20.0" psutil py-spy pybase64 pydantic "python-dateutil<3" \
    python-multipart "pyzmq>=25.1.2" regex requests safetensors scipy "sentencepiece==0.2.1" \
    setproctitle "smg-grpc-servicer>=0.9.0" "soundfile==0.13.1" tiktoken "timm==1.0.25" tqdm \
    "uvicorn>=0.51" uvloop watchfiles "xgrammar==0.2.7" xxhash zstandard
  # 4. The test-only sgl_kernel stub (see tests/sglang_cpu_stub/README.md). Installed from a
  #    temporary copy (setuptools would leave build/ and *.egg-info in the checkout), not
  #    editable, so the env does not depend on this checkout staying where it is.
  stub_tmp="$(mktemp -d)"
  cp -r "$repo_root/tests/sglang_cpu_stub/." "$stub_tmp/"
  "${pip[@]}" --no-deps --force-reinstall "$stub_tmp"
  rm -rf "$stub_tmp"
fi

echo "setup_sglang_env: checking imports"
"$env_dir/bin/python" -c "$check_py"
echo "$want_stamp" > "$stamp"
echo "setup_sglang_env: done in $((SECONDS - start_s)) s; $env_dir is $(du -sh "$env_dir" | cut -f1)"
echo "setup_sglang_env: python for --sglang-launch / STRACE_DS_SGLANG_PYTHON: $env_dir/bin/python"
