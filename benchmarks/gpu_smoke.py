"""GPU smoke run: a few ZeRO-3 bf16 training steps of two models through ``scripts/train.py``.

    benchmarks/build_gpu_wheels.sh                    # here: wheels into gpu_wheels/ (< 64 MiB)
    python -m benchmarks.gpu_smoke --wheels gpu_wheels   # on the GPU machine (<= 8 min)
    python -m benchmarks.gpu_smoke --cpu                 # the same logic, tiny sizes, on CPU

The GPU machine has PyTorch (CUDA) and transformers only. ``--wheels DIR`` installs the carried
wheels with ``pip --no-index --no-deps`` into a venv that sees the system's packages
(``--system-site-packages``; ``pip --user`` if no venv can be made), checks that DeepSpeed,
math-verify, TensorBoard's writer and the trainer import, and re-runs this script there.

Then, each in a fresh process (its own CUDA peak and process group), one GPU, ZeRO-3
(``ds_configs/zero3.json``, bf16), the synthetic task, ``--steps`` steps:

* ``tiny``: the embedded tiny policy (the default run's model, default batch sizes);
* ``random-0.5b``: a randomly initialised Qwen3-shaped model written with
  ``AutoModelForCausalLM.from_config`` + ``save_pretrained`` and the tiny policy's tokenizer:
  vocabulary 151,936, hidden 1024, 24 layers, 16 heads of 128 (8 KV heads), MLP 3072, tied
  embeddings (Qwen3-0.6B with 24 of its 28 layers), 0.53B parameters. Its answers are random
  tokens (reward 0): the step's compute is what is measured, not learning.

Printed per model, from the last step (the first carries start-up costs): step time, training
tokens/s (answer tokens x epochs / update time, the trainer's ``perf/train_tokens_per_s``),
peak GPU memory (``torch.cuda.max_memory_allocated``, rollout copy included) and model-FLOPs
utilisation of the update phase, ``6 * params * train tokens / update time / 989e12`` (H200 bf16
dense peak; prompt tokens and the scoring pass are not counted, so it is a lower bound). Exits
non-zero when an install, import or run fails, a loss is not finite, or the whole run exceeds
``--time_limit_s``. ``--cpu`` uses a tiny random model with the real vocabulary instead of the
0.5B one, a short run, CPU peak RSS instead of GPU memory, and no MFU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H200_BF16_FLOPS = 989e12  # dense bf16 peak of one H200 (SXM)
VOCAB = 151_936
RANDOM_SHAPES = {
    # name: (hidden, layers, heads, kv heads, head dim, MLP)
    "random-0.5b": (1024, 24, 16, 8, 128, 3072),
    "random-tiny": (64, 2, 4, 2, 16, 192),  # --cpu: the real vocabulary, little else
}
IMPORTS = ("deepspeed", "math_verify", "torch.utils.tensorboard", "strace_ds.train.loop")


def model_flops_utilisation(params: int, tokens: float, seconds: float,
                            peak_flops: float = H200_BF16_FLOPS) -> float:  # fmt: skip
    """``6 N T / (time * peak)``: forward (2 N) and backward (4 N) FLOPs per trained token."""
    return 6.0 * params * tokens / max(seconds, 1e-12) / peak_flops


# ----------------------------------------------------------------------- install (GPU side)
def install(wheels: Path, venv: Path) -> Path:
    """Install every wheel of ``wheels`` (no index, no dependencies); the python to use."""
    found = sorted(str(w) for w in wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"no wheels in {wheels} (run benchmarks/build_gpu_wheels.sh)")
    python = venv / "bin" / "python"
    made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                          capture_output=True, text=True)  # fmt: skip
    user: list[str] = []
    if made.returncode != 0 or not python.exists():
        print(f"no venv ({made.stderr.strip()[-200:]}); installing with pip --user", flush=True)
        python, user = Path(sys.executable), ["--user"]
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *user]
    subprocess.run(pip + found, check=True)
    probe = "; ".join(f"import {name}" for name in IMPORTS)
    checked = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if checked.returncode != 0:
        raise SystemExit(f"installed, but an import fails:\n{checked.stderr[-2000:]}")
    return python


# ---------------------------------------------------------------------------- the models
def write_random_model(name: str, out: Path) -> Path:
    """A random Qwen3 of shape ``RANDOM_SHAPES[name]`` in bf16, with the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    from strace_ds.assets import default_policy_dir

    hidden, layers, heads, kv_heads, head_dim, mlp = RANDOM_SHAPES[name]
    tiny = default_policy_dir()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=mlp, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = out / "models" / name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def count_params(model_dir: Path | None) -> int:
    """Parameters of the model at ``model_dir`` (None: the tiny policy), tied ones once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from strace_ds.assets import default_policy_dir

    config = AutoConfig.from_pretrained(model_dir or default_policy_dir())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def train_flags(name: str, model_dir: Path | None, out: Path, steps: int, cpu: bool) -> list[str]:
    """``scripts/train.py`` flags of one smoke run."""
    flags = [
        "--ds_config", str(REPO / "ds_configs" / "zero3.json"), "--steps", str(steps),
        "--eval_every", "-1", "--export", "false", "--image_every", "0", "--sample_every", "0",
        "--output_dir", str(out / "outputs"), "--log_dir", str(out / "runs"), "--run_name", name,
    ]  # fmt: skip
    if model_dir is not None:
        flags += ["--model", str(model_dir)]
    if cpu:
        flags += ["--prompts_per_step", "4", "--group_size", "2", "--max_new_tokens", "8",
                  "--micro_batch_size", "4", "--mini_batches", "1",
                  "--reward_workers", "1"]  # fmt: skip
    elif model_dir is not None:  # the 0.5B model: 64 answers of 256 tokens per step
        flags += ["--prompts_per_step", "16", "--group_size", "4", "--max_new_tokens", "256",
                  "--micro_batch_size", "16", "--mini_batches", "1"]  # fmt: skip
    return flags


# ------------------------------------------------------------------ one run (own process)
def train_one(flags: list[str]) -> dict:
    """Train through ``scripts/train.py``'s parser and ``strace_ds.train.loop.run``; the figures."""
    import resource

    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    import train as train_script  # scripts/train.py

    from strace_ds.train.loop import run

    config = train_script.parse_args(flags)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    metrics = run(config)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    return {"metrics": metrics, "peak_bytes": peak, "cuda": cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}  # fmt: skip


def summarise(name: str, params: int, result: dict) -> dict:
    """The reported figures of one run; raises ``RuntimeError`` on a failed or non-finite step."""
    m = result["metrics"]
    needed = ("perf/step_s", "perf/train_s", "perf/train_tokens_per_s", "policy/loss")
    missing = [k for k in needed if k not in m]
    if missing:
        raise RuntimeError(f"{name}: the last step's metrics lack {missing}")
    if not all(math.isfinite(m[k]) for k in needed):
        values = {k: m[k] for k in needed}
        raise RuntimeError(f"{name}: non-finite metrics {values}")
    train_tokens = m["perf/train_tokens_per_s"] * m["perf/train_s"]
    mfu = (model_flops_utilisation(params, train_tokens, m["perf/train_s"])
           if result["cuda"] else None)  # fmt: skip
    return {
        "model": name,
        "params": params,
        "device": result["device"],
        "step_s": m["perf/step_s"],
        "train_s": m["perf/train_s"],
        "train_tokens_per_s": m["perf/train_tokens_per_s"],
        "rollout_tokens_per_s": m.get("perf/rollout_tokens_per_s", math.nan),
        "peak_memory_gib": result["peak_bytes"] / 2**30,
        "peak_memory_kind": "GPU max_memory_allocated" if result["cuda"] else "CPU peak RSS",
        "mfu": mfu,
        "loss": m["policy/loss"],
    }


def line(s: dict) -> str:
    mfu = "n/a" if s["mfu"] is None else f"{s['mfu']:.2%}"
    return (f"{s['model']:>12} | {s['params'] / 1e6:8.1f}M params | step {s['step_s']:7.2f} s | "
            f"train {s['train_tokens_per_s']:9,.0f} tok/s | rollout "
            f"{s['rollout_tokens_per_s']:9,.0f} tok/s | peak {s['peak_memory_gib']:6.2f} GiB "
            f"({s['peak_memory_kind']}) | MFU {mfu}")  # fmt: skip


# -------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels", type=Path, help="install these wheels first (the GPU machine)")
    p.add_argument("--venv", type=Path, default=Path("/tmp/strace_ds_gpu_venv"))
    p.add_argument("--cpu", action="store_true", help="tiny sizes on CPU: checks the logic")
    p.add_argument("--steps", type=int, default=0, help="steps per model (0: 3, --cpu 2)")
    p.add_argument("--out", type=Path, default=Path("/tmp/strace_ds_gpu_smoke"))
    p.add_argument("--time_limit_s", type=float, default=480.0)
    p.add_argument("--models", default="", help="comma-separated subset of the models")
    p.add_argument("--train_one", help=argparse.SUPPRESS)  # internal: NAME=FLAGS_JSON
    args = p.parse_args(argv)
    if args.train_one:
        print("SMOKE_RESULT " + json.dumps(train_one(json.loads(args.train_one))), flush=True)
        return 0
    started = time.monotonic()
    if args.wheels is not None:
        python = install(args.wheels, args.venv)
        rest = list(argv if argv is not None else sys.argv[1:])
        i = rest.index("--wheels")
        del rest[i : i + 2]
        left = args.time_limit_s - (time.monotonic() - started)
        cmd = [str(python), str(Path(__file__).resolve()), *rest, "--time_limit_s", f"{left:.0f}"]
        return subprocess.run(cmd).returncode
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: pass --cpu for the CPU check")
    steps = args.steps or (2 if args.cpu else 3)
    names = ["tiny", "random-tiny" if args.cpu else "random-0.5b"]
    if args.models:
        names = [n for n in names if n in args.models.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # each run is its own one-rank job
    summaries, failed = [], []
    for name in names:
        model_dir = None if name == "tiny" else write_random_model(name, args.out)
        params = count_params(model_dir)
        flags = train_flags(name, model_dir, args.out, steps, args.cpu)
        left = args.time_limit_s - (time.monotonic() - started)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--train_one", json.dumps(flags)]
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                 timeout=max(left, 1), cwd=REPO)  # fmt: skip
        except subprocess.TimeoutExpired:
            failed.append(f"{name}: over the time limit ({args.time_limit_s:.0f} s in all)")
            break
        results = [ln for ln in out.stdout.splitlines() if ln.startswith("SMOKE_RESULT ")]
        if out.returncode != 0 or not results:
            failed.append(f"{name}: exit {out.returncode}\n{(out.stdout + out.stderr)[-3000:]}")
            continue
        try:
            summaries.append(summarise(name, params, json.loads(results[-1].split(" ", 1)[1])))
        except RuntimeError as err:
            failed.append(str(err))
            continue
        print(line(summaries[-1]), flush=True)
    total = time.monotonic() - started
    (args.out / "summary.json").write_text(json.dumps(
        {"runs": summaries, "failed": failed, "seconds": total}, indent=1))  # fmt: skip
    print(f"total {total:.0f} s; summary in {args.out / 'summary.json'}")
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if failed or total > args.time_limit_s else 0


if __name__ == "__main__":
    sys.exit(main())
