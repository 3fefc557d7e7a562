#!/usr/bin/env bash
# Refresh the constraints files that lock the installs to known-good versions.
#
#   scripts/lock.sh [cpu] [sglang]        (no argument: both)
#
# cpu     constraints/cpu.txt: a fresh venv in a temporary folder, `pip install torch==2.13.0`,
#         then `DS_BUILD_OPS=0 pip install -e ".[dev,notebooks,wandb,mlflow]"` with no constraints
#         (so the newest releases that pyproject.toml allows), frozen (`pip freeze
#         --exclude-editable`).
#         Used by .ci/run and the README's install commands as `pip install ... -c
#         constraints/cpu.txt`. About 2 minutes when the wheels are cached.
# sglang  constraints/sglang-cpu.txt: `scripts/setup_sglang_env.sh TMP --cpu --unlocked` (the
#         same steps with no constraints), frozen, without the test-only sgl_kernel stub (it is
#         installed from tests/sglang_cpu_stub, not from a registry). Used by that script's
#         --cpu builds. About 8 minutes (several GB of downloads on a machine without them).
#         SGLANG_ENV=DIR freezes an env already built by that script instead (e.g. the one the
#         tests passed with, ~/.cache/strace_ds/venv-sglang) and builds nothing.
#
# Then run the tests (`bash .ci/run`) and commit the changed files. The files are made with,
# and for, the CI machines' Python (3.11); pins may not exist for another Python, which can
# install unlocked (leave out `-c ...`; setup_sglang_env.sh takes --unlocked).
# Environment: PYTHON (interpreter for the venvs, default python3.11, else python3).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(cpu sglang)
for t in "${targets[@]}"; do
  case "$t" in
    cpu|sglang) ;;
    *) echo "lock: unknown target $t (use cpu, sglang)" >&2; exit 2 ;;
  esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# freeze ENV_PYTHON OUT DESCRIPTION: the env's packages as name==version lines, sorted, under
# a header. A package installed from a path or URL (name @ file://...) cannot be locked: it
# stops the script, except the sgl_kernel stub, which is left out on purpose.
freeze() {
  local env_python="$1" out="$2" what="$3" frozen
  frozen="$("$env_python" -m pip freeze --exclude-editable \
            | grep -v '^strace-ds-sgl-kernel-cpu-stub @ ' \
            | sed -E 's/^(torch|torchvision)==([^+]+)\+.*/\1==\2/' | LC_ALL=C sort -f)"
  if grep -q ' @ \|^-e ' <<<"$frozen"; then
    echo "lock: not from a registry, cannot be locked:" >&2
    grep ' @ \|^-e ' <<<"$frozen" >&2
    exit 1
  fi
  {
    echo "# Locked versions: $what"
    echo "# Made by scripts/lock.sh with Python $("$env_python" -c 'import platform; print(platform.python_version())') on $(date -u +%Y-%m-%d); refresh with it, do not edit by hand."
    echo "# Use as pip constraints (pip install ... -c THIS_FILE): they fix versions, install nothing."
    echo "$frozen"
  } > "$out"
  echo "lock: wrote $out ($(grep -vc '^#' "$out") packages)"
}

for t in "${targets[@]}"; do
  start_s=$SECONDS
  if [[ $t == cpu ]]; then
    "$python_bin" -m venv "$work/cpu"
    pip=("$work/cpu/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --upgrade pip
    # torch's local label (+cpu) is dropped from the pin: torch==2.13.0 matches the CPU wheel
    # and PyPI's build alike, and the CPU machines have the former on their disk.
    "${pip[@]}" torch==2.13.0
    (cd "$repo_root" && DS_BUILD_OPS=0 "${pip[@]}" -e ".[dev,notebooks,wandb,mlflow]")
    "$work/cpu/bin/python" -m pip check
    freeze "$work/cpu/bin/python" "$repo_root/constraints/cpu.txt" \
      "the trainer's env with the dev, notebooks, wandb and mlflow extras (torch==2.13.0, CPU)."
  else
    sglang_env="${SGLANG_ENV:-}"
    if [[ -z "$sglang_env" ]]; then
      sglang_env="$work/sglang"
      bash "$repo_root/scripts/setup_sglang_env.sh" "$sglang_env" --cpu --unlocked
    fi
    freeze "$sglang_env/bin/python" "$repo_root/constraints/sglang-cpu.txt" \
      "SGLang's own env as scripts/setup_sglang_env.sh --cpu builds it (sgl_kernel stub left out)."
  fi
  echo "lock: $t done in $((SECONDS - start_s)) s"
done
