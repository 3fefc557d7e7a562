"""Peak memory and speed of one policy-gradient step: full logits, fused, token budget, packed.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_memory [--quick] [--threads 1]

A randomly initialised Qwen3-shaped model with the real vocabulary (``V = 151,936``, tied
embeddings as in Qwen3-0.6B; hidden 256, 2 layers, 4 heads of 64, 2 KV heads, MLP 768;
39.8M parameters, 39M of them the embedding), bf16, scores and differentiates one batch of 8
rows (prompts of 64-256 tokens, answers of mixed lengths) with a PPO-style loss on
:func:`strace_ds.model.logprobs.answer_logprobs`, micro-batch by micro-batch, one backward each
(as the trainer does):

(i)   ``unfused``: today's path: micro-batches of 4 rows, each padded to the whole batch's
      prompt and answer widths (``RolloutBatch.rows``), full logits ``[4, R+1, V]``;
(ii)  ``fused``: the same micro-batches through the fused head (:mod:`strace_ds.model.fused_head`);
(iii) ``fused+budget``: fused, micro-batches from
      :func:`strace_ds.train.micro_batches.token_budget_micro_batches` (``--max_tokens``), each
      trimmed to its own longest row (``RolloutBatch.trimmed``);
(iv)  ``fused+budget+packed``: fused, micro-batches under the same budget counted as packed
      slots (``packed=True``), each run padding-free (:mod:`strace_ds.model.packing`: rows end
      to end in bins as wide as the micro-batch's longest row, positions restarting per row).

Every run of every variant is a fresh subprocess (``--repeats`` runs each, round robin;
the fastest wall and CPU times and the highest peak are reported): after the model and
batch are built and a small warm-up step has run, the resident-set high-water mark is
reset (``echo 5 > /proc/self/clear_refs``) and the step's peak memory is
``VmHWM - VmRSS(before)`` from ``/proc/self/status`` (parameter gradients included, in
every variant). Tokens/s counts the
real (non-padding) prompt+answer tokens of the batch over the step's wall time; CPU time
(all threads) is reported too, since the machine's cores are shared. The variants' parameter
gradients are compared with (i)'s (relative L2 difference: bf16 rounding only).
Targets: peak memory of (iii) <= 1/4 of (i), tokens/s of (iii) >= 1.5x (i); (iv) against
(iii) is the packing's own gain.
Results go to ``benchmarks/results_memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("results_memory.md")
VARIANTS = ("unfused", "fused", "fused+budget", "fused+budget+packed")
MIXES = {
    # 8 answers from 1k to 2k tokens.
    "1k-2k": [1024, 1170, 1317, 1463, 1609, 1755, 1902, 2048],
    # A long tail: two near the limit, most short (typical of RL on reasoning tasks).
    "128-2k": [2048, 1536, 768, 512, 384, 256, 192, 128],
}
QUICK_MIX = [96, 80, 64, 48, 40, 32, 24, 16]
MEMORY_TARGET, SPEED_TARGET = 1 / 4, 1.5
MICRO_ROWS = 4


def _model(vocab: int, hidden: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=hidden // 4, max_position_embeddings=4096, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen3ForCausalLM(config).to(torch.bfloat16).train()


def _batch(answer_lens: list[int], vocab: int):
    from strace_ds.model.batch import collate_rollouts
    from strace_ds.rollout.base import Generation

    gen = torch.Generator().manual_seed(1)
    rows = len(answer_lens)
    prompt_lens = torch.randint(64, 257, (rows,), generator=gen).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    answers = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in answer_lens]
    generation = Generation(
        list(range(rows)), answers, [[0.0] * n for n in answer_lens], ["length"] * rows
    )
    return collate_rollouts(prompts, generation, pad_token_id=0), prompt_lens


def _micro_batches(variant: str, lengths: list[int], max_tokens: int) -> list[list[int]]:
    from strace_ds.train.micro_batches import token_budget_micro_batches

    if variant.startswith("fused+budget"):
        return token_budget_micro_batches(lengths, max_tokens, packed=variant.endswith("packed"))
    n = len(lengths)
    return [list(range(lo, min(n, lo + MICRO_ROWS))) for lo in range(0, n, MICRO_ROWS)]


def _step(model, batch, micro_batches, fused: bool, trim: bool, packed: bool = False) -> None:
    """One PPO-style update's forward+backward: ``-mean(ratio * A)`` over the answer tokens."""
    from strace_ds.model.logprobs import answer_logprobs

    total = batch.response_mask.sum()  # normaliser of the whole batch
    adv = torch.linspace(-1.0, 1.0, len(batch))[:, None]  # [N, 1]
    for rows in micro_batches:
        index = torch.tensor(rows)
        part = batch.rows(index)
        part = part.trimmed() if trim else part
        logp, _ = answer_logprobs(model, part, fused=fused, packed=packed)  # [n, R]
        ratio = torch.exp(logp - logp.detach())  # on-policy: 1, gradient d logp
        loss = -(ratio * adv[index] * part.response_mask).sum() / total
        loss.backward()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(variant: str, mix: list[int], vocab: int, hidden: int, max_tokens: int,
           grad_path: Path) -> dict:  # fmt: skip
    """One variant's step in this (fresh) process: time, peak memory; saves the gradient."""
    model = _model(vocab, hidden)
    batch, prompt_lens = _batch(mix, vocab)
    lengths = [p + a for p, a in zip(prompt_lens, mix)]
    micro = _micro_batches(variant, lengths, max_tokens)
    fused, trim = variant != "unfused", variant.startswith("fused+budget")
    packed = variant.endswith("packed")
    warm, _ = _batch([4, 3], vocab)  # first-call costs (kernels, allocator) out of the timing
    _step(model, warm, [[0, 1]], fused, trim, packed)
    model.zero_grad(set_to_none=True)
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    t0, cpu0 = time.perf_counter(), time.process_time()
    _step(model, batch, micro, fused, trim, packed)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = (_status_kb("VmHWM") - before) * 1024
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    torch.save(grad, grad_path)
    from strace_ds.model.packing import packed_slots
    from strace_ds.train.micro_batches import pad_fraction

    slots = batch.input_ids.shape[1]
    if packed:  # bins x each micro-batch's longest row, its rows in batch order
        packed_total = sum(packed_slots([lengths[i] for i in sorted(b)]) for b in micro)
    return {
        "variant": variant,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_bytes": peak,
        "tokens": sum(lengths),
        "micro_batches": [len(b) for b in micro],
        # Today's layout pads every row to max prompt + max answer, not to the longest row.
        "pad_frac": (1 - sum(lengths) / packed_total if packed
                     else pad_fraction(lengths, micro) if trim
                     else 1 - sum(lengths) / (len(mix) * slots)),
    }  # fmt: skip


def _run_worker(args, variant: str, mix_name: str, grad_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--mix", mix_name,
           "--threads", str(args.threads), "--max_tokens", str(args.max_tokens),
           "--grad_path", str(grad_path)] + (["--quick"] if args.quick else [])  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {mix_name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(runs: list[dict]) -> dict:
    """Fastest wall and CPU time and highest peak over repeats (contention only adds time)."""
    best = dict(runs[0])
    best["seconds"] = min(r["seconds"] for r in runs)
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in runs)
    best["peak_bytes"] = max(r["peak_bytes"] for r in runs)
    best["repeats"] = len(runs)
    return best


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small vocabulary and lengths (checks)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="runs per variant, round robin")
    p.add_argument("--max_tokens", type=int, default=0,
                   help="(iii)'s padded tokens per micro-batch (0: 4 x 2048)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help=f"default {RESULTS.name} (full run)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--mix", help=argparse.SUPPRESS)
    p.add_argument("--grad_path", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    vocab, hidden = (2048, 64) if args.quick else (151_936, 256)
    args.max_tokens = args.max_tokens or (4 * 128 if args.quick else 4 * 2048)
    torch.set_num_threads(args.threads)
    if args.worker:
        mix = QUICK_MIX if args.quick else MIXES[args.mix]
        res = worker(args.worker, mix, vocab, hidden, args.max_tokens, args.grad_path)
        print(json.dumps(res))
        return

    started = time.perf_counter()
    mixes = {"quick": QUICK_MIX} if args.quick else MIXES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in mixes:
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            grads = {}
            for rep in range(args.repeats):  # round robin: slow spells hit every variant
                for variant in VARIANTS:
                    path = Path(tmp) / f"{name}-{variant.replace('+', '_')}.pt"
                    r = _run_worker(args, variant, name, path)
                    runs[variant].append(r)
                    if rep == 0:
                        grads[variant] = torch.load(path)
                    path.unlink()
                    print(f"{name} {variant} #{rep}: {r['seconds']:.1f} s (CPU "
                          f"{r['cpu_seconds']:.1f} s), {_mib(r['peak_bytes'])}",
                          file=sys.stderr, flush=True)  # fmt: skip
            results = {v: _best(rs) for v, rs in runs.items()}
            base = results["unfused"]
            for variant in VARIANTS:
                r = results[variant]
                diff = (grads[variant] - grads["unfused"]).norm() / grads["unfused"].norm()
                rows.append((name, r, base, float(diff)))
    wall = time.perf_counter() - started
    text = _report(rows, args, vocab, hidden, wall)
    print(text)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(text)


def _report(rows, args, vocab: int, hidden: int, wall: float) -> str:
    head = [
        "# Memory and speed of one policy-gradient step (full logits, fused, token budget, packed)",
        "",
        f"`python -m benchmarks.bench_memory{' --quick' if args.quick else ''} --threads "
        f"{args.threads} --repeats {args.repeats}` (OMP_NUM_THREADS={args.threads}). "
        f"torch {torch.__version__}, {platform.machine()}, Python "
        f"{platform.python_version()}; CPU, shared 2-core machine (other jobs running). "
        f"Wall time of the run: {wall / 60:.1f} min.",
        "",
        f"Model: random Qwen3, V = {vocab:,}, hidden {hidden}, 2 layers, tied embeddings, bf16."
        f" Batch: 8 rows, prompts 64-256 tokens, answers as listed. One forward+backward per "
        f"micro-batch of a PPO-style loss on `answer_logprobs`; (i)/(ii) micro-batches of "
        f"{MICRO_ROWS} rows padded to the whole batch, (iii) token budget {args.max_tokens:,} "
        f"padded tokens per micro-batch, each trimmed to its longest row, (iv) the same budget "
        f"counted in packed slots, each micro-batch padding-free. Peak = VmHWM - VmRSS "
        f"before the step, every run of every variant in a fresh process, {args.repeats} runs "
        f"per variant in round robin: fastest wall and CPU time, highest peak; tokens/s = real "
        f"prompt+answer tokens / fastest wall time. grad diff = relative L2 difference of all "
        f"parameter gradients from (i) (bf16).",
        "",
        "| answers | variant | micro-batches (rows) | padding | wall | CPU | tokens/s "
        "| speed vs (i) | peak memory | memory vs (i) | grad diff |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = []
    for name, r, base, diff in rows:
        tps, base_tps = r["tokens"] / r["seconds"], base["tokens"] / base["seconds"]
        lines.append(
            f"| {name} | {r['variant']} | {r['micro_batches']} | {r['pad_frac']:.0%} "
            f"| {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | {tps:,.0f} "
            f"| {tps / base_tps:.2f}x (CPU {base['cpu_seconds'] / r['cpu_seconds']:.2f}x) "
            f"| {_mib(r['peak_bytes'])} | {r['peak_bytes'] / base['peak_bytes']:.3f} "
            f"| {diff:.1e} |"
        )
    verdicts = []
    for name, r, base, _ in rows:
        if r["variant"] != "fused+budget":
            continue
        mem = r["peak_bytes"] / base["peak_bytes"]
        speed = base["seconds"] / r["seconds"]
        verdicts.append(
            f"- {name}: memory {mem:.3f} of (i) (target <= {MEMORY_TARGET:.2f}: "
            f"{'met' if mem <= MEMORY_TARGET else '**not met**'}); tokens/s {speed:.2f}x (i) "
            f"(target >= {SPEED_TARGET}x: {'met' if speed >= SPEED_TARGET else '**not met**'})."
        )
    by = {(name, r["variant"]): r for name, r, _, _ in rows}
    packing = []
    for name, r, _, _ in rows:
        if r["variant"] != "fused+budget+packed":
            continue
        b = by[(name, "fused+budget")]
        packing.append(
            f"- {name}: padding {b['pad_frac']:.0%} -> {r['pad_frac']:.0%}, wall "
            f"{b['seconds'] / r['seconds']:.2f}x (CPU {b['cpu_seconds'] / r['cpu_seconds']:.2f}x)"
            f" the speed of (iii), peak memory {r['peak_bytes'] / b['peak_bytes']:.2f}x."
        )
    return "\n".join(head + lines + ["", "Targets, (iii) against (i):", *verdicts, "",
                                      "Packing, (iv) against (iii):", *packing, ""])  # fmt: skip


if __name__ == "__main__":
    main()
