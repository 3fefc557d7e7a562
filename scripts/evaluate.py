"""Evaluate a policy on maths benchmarks: avg@k and unbiased pass@k, a table and a JSON report.

    python scripts/evaluate.py                                   # tiny policy, synthetic split
    python scripts/evaluate.py --model Qwen/Qwen3-1.7B --benchmarks math500,aime24,aime25 \\
        --k 16 --temperature 0.6 --top-p 0.95 --max-new-tokens 8192 --out results.json
    python scripts/evaluate.py --model DIR --rollout sglang --sglang-url http://h1:30000,http://h2:30000
    python scripts/evaluate.py --model DIR --benchmarks math500 --data-dir tests/fixtures/benchmarks

Benchmarks: see ``strace_ds.evaluation.BENCHMARKS``. ``--data-dir`` reads ``<name>.jsonl`` in
the hub schema instead of the hub. ``--rollout sglang`` is a read-only client of running servers
(``--sglang-url``, comma separated for several; prompts spread round-robin): it never syncs
weights, records the servers' weight version, and refuses servers whose ``/model_info``
``model_path`` is not ``--model`` (``--skip-model-check`` to override). Heavy imports live in
:func:`main`: the reward pool's worker processes re-import this script.
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model dir or hub id (default: tiny policy)")
    p.add_argument("--benchmarks", default="synthetic", help="comma-separated benchmark names")
    p.add_argument("--k", type=int, default=16, help="samples per problem")
    p.add_argument("--ks", default=None, help="pass@j to report, e.g. 1,4,16 (default 1,2,4..k)")
    p.add_argument("--rollout", choices=("hf", "sglang"), default="hf", help="rollout engine")
    p.add_argument(
        "--sglang_url",
        "--sglang-url",
        default="http://localhost:30000",
        help="SGLang server URL(s), comma separated",
    )
    p.add_argument(
        "--skip_model_check",
        "--skip-model-check",
        action="store_true",
        help="evaluate even if the servers' /model_info model_path is not --model",
    )
    p.add_argument(
        "--data_dir", "--data-dir", default=None, help="directory with <benchmark>.jsonl files"
    )
    p.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top_p", "--top-p", type=float, default=0.95)
    p.add_argument("--top_k", "--top-k", type=int, default=-1, help="-1 = off")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (reproducible runs)")
    p.add_argument("--device", default=None, help="hf engine device (default cuda if available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--max_batch_size",
        "--max-batch-size",
        type=int,
        default=64,
        help="hf engine rows per batch",
    )
    p.add_argument(
        "--reward_workers", "--reward-workers", type=int, default=2, help="grading processes"
    )
    p.add_argument(
        "--reward_timeout", "--reward-timeout", type=float, default=10.0, help="seconds per answer"
    )
    p.add_argument("--out", default=None, help="JSON report path (per-problem samples)")
    return p.parse_args(argv)


def build_engine(args: argparse.Namespace, model: str, tokenizer):
    """The rollout engine ``args.rollout`` names, through the registry."""
    from strace_ds.rollout import build_rollout_engine

    if args.rollout == "hf":
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        return build_rollout_engine(
            "hf",
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=getattr(torch, dtype),
            max_batch_size=args.max_batch_size,
        )
    from strace_ds.rollout.sglang import SGLangError

    # A read-only client: no weights_dir (it never syncs), the servers' live weight version.
    try:
        engine = build_rollout_engine("sglang", urls=args.sglang_url, weight_version=None)
    except (SGLangError, ValueError) as exc:
        raise SystemExit(f"--sglang-url {args.sglang_url}: {exc}") from exc
    if not args.skip_model_check:
        try:
            engine.check_model(model)
        except SGLangError as exc:
            engine.close()
            raise SystemExit(
                f"{exc} --skip-model-check evaluates anyway (e.g. the same "
                "directory mounted under another path)."
            ) from exc
    return engine


def main(argv: list[str] | None = None) -> dict:
    """Build the engine, evaluate, print the table, write the report; return the report."""
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from strace_ds.assets import default_policy_dir
    from strace_ds.evaluation import evaluate, format_table, parse_benchmark_names
    from strace_ds.rewards import RewardPool
    from strace_ds.rollout import SamplingParams

    try:  # fail on a typo before loading anything
        names = parse_benchmark_names(args.benchmarks)
    except ValueError as exc:
        raise SystemExit(f"--benchmarks: {exc}") from exc
    ks = [int(j) for j in args.ks.split(",")] if args.ks else None
    model = args.model or str(default_policy_dir())
    tokenizer = AutoTokenizer.from_pretrained(model)
    engine = build_engine(args, model, tokenizer)
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )
    try:
        with RewardPool(num_workers=args.reward_workers, timeout_s=args.reward_timeout) as pool:
            report = evaluate(
                engine, tokenizer, names, args.k, sampling, pool,
                data_dir=args.data_dir, ks=ks, limit=args.limit, out=args.out,
            )  # fmt: skip
    finally:
        engine.close()
    print(format_table(report))
    if args.out:
        print(f"report: {args.out}")
    return report


if __name__ == "__main__":
    main()
