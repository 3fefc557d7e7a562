"""Benchmark evaluation: avg@k and unbiased pass@k over the standard maths benchmarks.

Example::

    from strace_ds.evaluation import evaluate, format_table
    from strace_ds.rewards import RewardPool
    from strace_ds.rollout import SamplingParams, build_rollout_engine

    engine = build_rollout_engine("hf", model="path/to/model")
    with RewardPool(num_workers=4) as pool:
        report = evaluate(engine, tokenizer, ["math500", "aime24"], k=16,
                          sampling=SamplingParams(temperature=0.6, top_p=0.95,
                                                  max_new_tokens=4096, seed=0),
                          reward_pool=pool, out="results.json")
    print(format_table(report))
"""

from strace_ds.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkSpec,
    get_benchmark,
    load_benchmark,
    parse_benchmark_names,
)
from strace_ds.evaluation.metrics import default_ks, mean_pass_at_k, pass_at_k
from strace_ds.evaluation.report import format_table, write_report
from strace_ds.evaluation.runner import (
    BenchmarkResult,
    ProblemResult,
    SampleResult,
    average_summaries,
    eval_scalars,
    evaluate,
    evaluate_benchmark,
)

__all__ = [
    "BENCHMARKS",
    "BenchmarkResult",
    "BenchmarkSpec",
    "ProblemResult",
    "SampleResult",
    "average_summaries",
    "default_ks",
    "eval_scalars",
    "evaluate",
    "evaluate_benchmark",
    "format_table",
    "get_benchmark",
    "load_benchmark",
    "mean_pass_at_k",
    "parse_benchmark_names",
    "pass_at_k",
    "write_report",
]
