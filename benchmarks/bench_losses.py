"""Speed and memory of the trace losses and of the chunked log-prob/entropy kernels.

    python -m benchmarks.bench_losses [--quick]

Prints one table (every row from this run, median over repeats) and writes it to
``benchmarks/results_losses.md``:

(a) forward+backward time of every ``PRESETS`` loss, and of the trace presets in their other
    forms (``LOSSES``), at ``B x T`` tokens, as a ratio to ``grpo`` (target: every other <= 1.5x);
(b) the vectorised causal ``trace_log_ratio`` against the recursion of ``docs/ALGORITHMS.md``
    written as a Python loop over T (forward+backward), with their largest difference;
(c) peak extra memory and time of ``token_logprobs_and_entropy(_from_hidden)`` against the
    plain ``log_softmax -> gather`` computation at Qwen's vocabulary, forward+backward of the
    log-probs (targets: peak extra memory <= 1/8 of plain, time <= 1.25x of plain).

Memory in (c) is measured for torch's CPU allocations, which ``tracemalloc`` does not see:
every repeat of every variant runs in a fresh subprocess, which resets the kernel's
resident-set high-water mark (``echo 5 > /proc/self/clear_refs``) and reports
``VmHWM - VmRSS(before)`` from ``/proc/self/status``: the peak resident memory the
forward+backward added on top of its inputs. The gradients it returns count (they are part
of the cost in both variants).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from strace_ds.losses import FORMS, PRESETS, TraceConfig, policy_loss, trace_log_ratio
from strace_ds.model.logprob_kernels import (
    token_logprobs_and_entropy,
    token_logprobs_and_entropy_from_hidden,
)

RESULTS = Path(__file__).with_name("results_losses.md")
PRESET_TARGET = 1.5  # every preset's fwd+bwd time <= 1.5x grpo
# the presets, and the trace presets in their other forms (preset@form)
LOSSES: dict[str, TraceConfig] = {**PRESETS, **{
    f"{name}@{form}": replace(PRESETS[name], form=form)
    for name in ("p_trace", "s_trace") for form in FORMS if form != PRESETS[name].form}}
MEMORY_TARGET = 1 / 8  # chunked peak extra memory <= 1/8 of the plain computation
TIME_TARGET = 1.25  # chunked fwd+bwd time <= 1.25x the plain computation


@dataclass
class Sizes:
    """Problem sizes of one benchmark run."""

    loss_batch: int  # (a) B
    loss_len: int  # (a) T
    trace_rows: int  # (b) rows of the loop comparison
    trace_len: int  # (b) T
    tokens: int  # (c) N tokens
    vocab: int  # (c) V
    hidden: int  # (c) H
    chunk_sizes: tuple[int, ...]  # (c) chunk sizes tried
    repeats_loss: int
    repeats_trace: int
    repeats_tokens: int


FULL = Sizes(64, 8192, 4, 4096, 4096, 151_936, 1024, (1024, 256), 7, 3, 3)
QUICK = Sizes(8, 2048, 2, 1024, 512, 151_936, 1024, (128, 32), 3, 2, 2)


@dataclass
class Timing:
    """Median wall-clock and process CPU seconds of one case."""

    wall: float
    cpu: float


@dataclass
class Row:
    """One line of the result table."""

    part: str
    case: str
    timing: Timing
    ratio: str = ""
    memory: str = ""
    memory_ratio: str = ""
    target: str = ""
    met: str = ""
    check: str = ""


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def _median(samples: list[tuple[float, float]]) -> Timing:
    return Timing(
        wall=statistics.median(w for w, _ in samples), cpu=statistics.median(c for _, c in samples)
    )


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


# ------------------------------------------------------------------ (a) loss presets
def bench_presets(sizes: Sizes) -> list[Row]:
    B, T = sizes.loss_batch, sizes.loss_len
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)  # ragged answers
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [B, T]
    old = -3 * torch.rand(B, T, generator=gen)  # [B, T] log-probs of the sampler
    logp = (old + 0.1 * torch.randn(B, T, generator=gen)).requires_grad_()  # [B, T]
    adv = torch.randn(B, generator=gen)  # [B]
    entropy = 3 * torch.rand(B, T, generator=gen)  # [B, T]

    def run(cfg: TraceConfig) -> None:
        logp.grad = None
        ent = entropy if cfg.entropy_top_quantile is not None else None
        out = policy_loss(logp, old, adv, mask, entropy=ent, config=cfg)
        out.loss.backward()

    for cfg in LOSSES.values():  # warm-up
        run(cfg)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in LOSSES}
    for _ in range(sizes.repeats_loss):  # round robin, so CPU contention hits all alike
        for name, cfg in LOSSES.items():
            samples[name].append(_timed(lambda cfg=cfg: run(cfg)))
    medians = {name: _median(s) for name, s in samples.items()}
    rows = []
    for name, timing in medians.items():
        ratio = timing.cpu / medians["grpo"].cpu
        is_base = name == "grpo"
        rows.append(
            Row(
                part="(a) loss fwd+bwd",
                case=f"`{name}` B={B} T={T}",
                timing=timing,
                ratio=f"{ratio:.2f}x grpo",
                target="baseline" if is_base else f"<= {PRESET_TARGET}x",
                met="" if is_base else _yes(ratio <= PRESET_TARGET),
            )
        )
    return rows


# ------------------------------------------------------------------ (b) trace scan vs loop
def trace_log_ratio_loop(delta: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """The causal recursion of ``docs/ALGORITHMS.md``, one Python step per token; ``[B, T]``.

    ``z_t = lam**m_t z_{t-1} + m_t delta_t``, ``n_t = lam**m_t n_{t-1} + m_t``,
    ``ell_t = z_t / n_t`` (0 while ``n_t = 0``).
    """
    B, T = delta.shape
    m = mask.to(delta.dtype)
    # lam**m_t as a tensor of delta's dtype (torch.where on Python floats gives float32).
    decay_all = torch.where(mask, delta.new_tensor(lam), delta.new_tensor(1.0))  # [B, T]
    z = delta.new_zeros(B)
    n = delta.new_zeros(B)
    out = []
    for t in range(T):
        decay = decay_all[:, t]  # lam**m_t
        z = decay * z + m[:, t] * delta[:, t]
        n = decay * n + m[:, t]
        out.append(torch.where(n > 0, z / n.clamp_min(1e-300), 0.0))
    return torch.stack(out, dim=1)


def bench_trace(sizes: Sizes) -> list[Row]:
    B, T, lam = sizes.trace_rows, sizes.trace_len, 0.95
    gen = torch.Generator().manual_seed(1)
    delta = (0.1 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(B, T, generator=gen) < 0.3  # an S-trace-like sparse selection
    weight = torch.randn(B, T, generator=gen, dtype=torch.float64)

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            delta.grad = None
            (fn(delta, mask, lam) * weight).sum().backward()

        return run

    fast = _median([_timed(fwd_bwd(trace_log_ratio)) for _ in range(sizes.repeats_trace * 3)])
    slow = _median([_timed(fwd_bwd(trace_log_ratio_loop)) for _ in range(sizes.repeats_trace)])
    with torch.no_grad():
        diff = (trace_log_ratio(delta, mask, lam) - trace_log_ratio_loop(delta, mask, lam)).abs()
    label = f"B={B} T={T} lam={lam}, 30% selected, float64"
    return [
        Row("(b) trace fwd+bwd", f"Python loop over T, {label}", slow, "1.00x loop"),
        Row(
            "(b) trace fwd+bwd",
            f"`trace_log_ratio` causal, {label}",
            fast,
            f"{fast.cpu / slow.cpu:.4f}x loop ({slow.cpu / fast.cpu:.0f}x faster)",
            check=f"max abs diff {diff.max().item():.1e}",
        ),
    ]


# ------------------------------------------------------------------ (c) token stats
def naive_logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation: full float32 ``log_softmax``; entropy without a graph."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V] float32
    token_logp = logp.gather(-1, tokens[:, None]).squeeze(-1)  # [N]
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)  # [N]
    return token_logp, entropy


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def token_stats_worker(variant: str, chunk: int, N: int, V: int, H: int) -> dict:
    """One forward+backward of one variant, in a fresh process: time, peak, checksums."""
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (N,), generator=gen)  # [N]
    g_logp = torch.randn(N, generator=gen)  # upstream gradient of the log-probs [N]
    bf16 = torch.bfloat16
    if variant.endswith("hidden"):
        hidden = torch.randn(N, H, generator=gen).to(bf16).requires_grad_()  # [N, H]
        weight = torch.empty(V, H, dtype=bf16).normal_(0, 2 / math.sqrt(H), generator=gen)
        leaves = [hidden, weight.requires_grad_()]  # weight [V, H]
    else:
        logits = torch.empty(N, V, dtype=bf16).normal_(0, 2, generator=gen)  # [N, V]
        leaves = [logits.requires_grad_()]

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        if variant == "naive_hidden":
            return naive_logprobs_and_entropy(hidden @ weight.T, tokens)
        if variant == "chunked_hidden":
            return token_logprobs_and_entropy_from_hidden(hidden, weight, tokens, chunk_size=chunk)
        if variant == "naive_logits":
            return naive_logprobs_and_entropy(logits, tokens)
        return token_logprobs_and_entropy(logits, tokens, chunk_size=chunk)

    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0, cpu0 = time.perf_counter(), time.process_time()
    token_logp, entropy = forward()
    (token_logp * g_logp).sum().backward()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak = (_status_kb("VmHWM") - before) * 1024
    grad_sq = sum(leaf.grad.double().square().sum().item() for leaf in leaves)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_bytes": peak,
        "logp_sum": token_logp.double().sum().item(),
        "entropy_sum": entropy.double().sum().item(),
        "grad_norm": math.sqrt(grad_sq),
    }


def _run_worker(variant: str, chunk: int, sizes: Sizes) -> dict:
    args = [variant, chunk, sizes.tokens, sizes.vocab, sizes.hidden]
    cmd = [sys.executable, __file__, "--worker", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _checksum_diff(res: dict, naive: dict) -> float:
    """Largest relative difference of the checksums (log-prob sum, entropy sum, grad norm)."""
    keys = ("logp_sum", "entropy_sum", "grad_norm")
    return max(abs(res[k] - naive[k]) / max(abs(naive[k]), 1e-30) for k in keys)


def bench_token_stats(sizes: Sizes) -> list[Row]:
    N, V, H = sizes.tokens, sizes.vocab, sizes.hidden
    cases = [("naive", 0)] + [("chunked", c) for c in sizes.chunk_sizes]
    rows = []
    for source in ("hidden", "logits"):
        runs: dict[tuple[str, int], list[dict]] = {case: [] for case in cases}
        for _ in range(sizes.repeats_tokens):  # round robin: contention hits every case alike
            for kind, chunk in cases:
                runs[kind, chunk].append(_run_worker(f"{kind}_{source}", chunk, sizes))
        summary = {
            case: {
                "timing": _median([(r["seconds"], r["cpu_seconds"]) for r in results]),
                "peak_bytes": max(r["peak_bytes"] for r in results),
                **{k: results[0][k] for k in ("logp_sum", "entropy_sum", "grad_norm")},
            }
            for case, results in runs.items()
        }
        naive = summary["naive", 0]
        # The gradients handed back are [V, H] + [N, H] or [N, V] in bf16 in every variant:
        # the floor under any implementation's peak.
        grad_bytes = 2 * (V * H + N * H if source == "hidden" else N * V)
        floor = f"returned grads alone {grad_bytes / 2**20:,.0f} MiB"
        shape = f"N={N} H={H} V={V}" if source == "hidden" else f"N={N} V={V}"
        part = f"(c) logp+entropy from {source}"
        rows.append(
            Row(
                part=part,
                case=f"plain log_softmax, bf16 {shape}",
                timing=naive["timing"],
                ratio="1.00x plain",
                memory=f"{naive['peak_bytes'] / 2**20:,.0f} MiB",
                memory_ratio="1",
                target="baseline",
                check=floor,
            )
        )
        for chunk in sizes.chunk_sizes:
            res = summary["chunked", chunk]
            t_ratio = res["timing"].wall / naive["timing"].wall
            cpu_ratio = res["timing"].cpu / naive["timing"].cpu
            m_ratio = res["peak_bytes"] / naive["peak_bytes"]
            met_time, met_mem = _yes(t_ratio <= TIME_TARGET), _yes(m_ratio <= MEMORY_TARGET)
            rows.append(
                Row(
                    part=part,
                    case=f"chunked, chunk_size={chunk}",
                    timing=res["timing"],
                    ratio=f"{t_ratio:.2f}x plain (CPU {cpu_ratio:.2f}x)",
                    memory=f"{res['peak_bytes'] / 2**20:,.0f} MiB",
                    memory_ratio=f"{m_ratio:.3f} (1/{1 / m_ratio:.1f})",
                    target=f"time <= {TIME_TARGET}x, mem <= 1/{round(1 / MEMORY_TARGET)}",
                    met=f"time {met_time}, mem {met_mem}",
                    check=f"checksums vs plain {_checksum_diff(res, naive):.0e} (bf16)",
                )
            )
    return rows


# ------------------------------------------------------------------ report
def format_table(rows: list[Row], sizes: Sizes, quick: bool, wall: float) -> str:
    header = [
        f"# Loss and token-stats benchmark ({'quick' if quick else 'full'} run)",
        "",
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; "
        f"CPU, shared machine. Wall time of the run: {wall / 60:.1f} min.",
        "Times: wall clock and process CPU time (all threads). The CPUs are shared with other "
        "jobs, so wall times of multi-threaded ops swing widely; (a) and (b) therefore run on "
        "1 thread and take their ratios from CPU time (the work done), (c) runs on "
        f"{torch.get_num_threads()} threads (large matmuls) and takes its ratios from wall "
        "time, CPU-time ratio in brackets. "
        f"Median of {sizes.repeats_loss} (a), {sizes.repeats_trace} (b, loop) and "
        f"{sizes.repeats_tokens} (c) repeats (max for memory). (c): bf16 inputs, float32 softmax, "
        "forward+backward of the log-probs (entropy computed, not differentiated); peak extra "
        "memory = VmHWM - VmRSS before the call, every repeat of every variant in a fresh "
        "process (round robin), high-water mark reset through /proc/self/clear_refs; the "
        "returned gradients (d logits, or d hidden + d weight) count in both variants.",
        "",
        "| part | case | wall (median) | CPU (median) | time ratio | peak extra memory "
        "| memory vs plain | target | met | check |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    lines = [
        f"| {r.part} | {r.case} | {r.timing.wall * 1e3:,.1f} ms | {r.timing.cpu * 1e3:,.1f} ms "
        f"| {r.ratio} | {r.memory} | "
        f"{r.memory_ratio} | {r.target} | {r.met} | {r.check} |"
        for r in rows
    ]
    return "\n".join(header + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args()
    if args.worker:
        variant, *numbers = args.worker
        print(json.dumps(token_stats_worker(variant, *map(int, numbers))))
        return
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (a), (b): see the note on CPU time in format_table
    rows = bench_presets(sizes) + bench_trace(sizes)
    torch.set_num_threads(threads)  # (c) workers are fresh processes with the default count
    rows += bench_token_stats(sizes)
    table = format_table(rows, sizes, args.quick, time.perf_counter() - start)
    print(table)
    args.out.write_text(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
