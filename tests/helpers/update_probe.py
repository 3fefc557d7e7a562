"""Record the gradient of every policy update of one training step, through DeepSpeed.

Run by ``tests/e2e/test_update_invariance.py`` as ``python tests/helpers/update_probe.py OUT ...``
(one rank) or under the ``deepspeed`` launcher (two CPU ranks). For each preset and micro-batch
size it builds a real :class:`strace_ds.train.loop.Trainer` (ZeRO-3), runs step 1 and saves, at
each optimizer boundary (after ``engine.backward`` of the last micro-batch, before
``engine.step``), the full gradient that DeepSpeed reduced over ranks, gathered with
``deepspeed.utils.safe_get_full_grad``.

Rollouts are made independent of the rank split: each prompt's group is sampled alone with a
seed derived from its token ids, so 1 and 2 ranks train on the same answers and any gradient
difference comes from the update itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def split_independent(generate):
    """Wrap ``RolloutEngine.generate`` so each prompt is sampled alone, seeded by its ids."""
    from strace_ds.rollout.base import Generation

    def run(prompt_ids, n, sampling):
        parts = []
        for ids in prompt_ids:
            seed = int.from_bytes(hashlib.sha256(str(ids).encode()).digest()[:4], "little")
            parts.append(generate([ids], n, dataclasses.replace(sampling, seed=seed)))
        return Generation(
            prompt_index=[i for i, g in enumerate(parts) for _ in g.prompt_index],
            token_ids=[t for g in parts for t in g.token_ids],
            logprobs=[lp for g in parts for lp in g.logprobs],
            finish_reasons=[f for g in parts for f in g.finish_reasons],
            weight_version=parts[0].weight_version,
        )

    return run


def capture_update_gradients(engine) -> list[torch.Tensor]:
    """Make ``engine.step`` record the full reduced gradient at each optimizer boundary."""
    from deepspeed.utils import safe_get_full_grad

    grads: list[torch.Tensor] = []
    step = engine.step

    def recording_step(*args, **kwargs):
        # The trainer calls step() once per optimizer update: it owns the boundary.
        flat = [safe_get_full_grad(p).detach().double().flatten()
                for p in engine.module.parameters()]
        grads.append(torch.cat(flat).cpu())
        return step(*args, **kwargs)

    engine.step = recording_step
    return grads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--presets", default="grpo,gspo,highent_grpo,p_trace,s_trace")
    p.add_argument("--micro", default="4,16,64", help="micro-batch sizes (rows per rank)")
    p.add_argument("--mini_batches", type=int, default=2)
    p.add_argument("--prompts_per_step", type=int, default=32)
    p.add_argument("--epoch_presets", default="grpo,s_trace",
                   help="presets also probed with --epochs 2 (re-shuffled second pass)")
    p.add_argument("--budgets", default="0,160",
                   help="--max_tokens_per_micro_batch values also probed (epoch presets)")
    p.add_argument("--epoch_micro", default="64",
                   help="micro-batch sizes of the --epochs 2 and budget probes")
    p.add_argument("--ds_config", default=str(REPO / "ds_configs" / "zero3.json"))
    p.add_argument("--tag", default="", help="appended to every output file's name")
    p.add_argument("--pack", action="store_true", help="--pack_micro_batches true in every run")
    p.add_argument("--old_logprobs", default="auto", help="--old_logprobs of every run")
    args, _ = p.parse_known_args()  # the launcher appends --local_rank

    from strace_ds.config import TrainConfig
    from strace_ds.train.loop import Trainer

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    extra = [p for p in args.epoch_presets.split(",") if p]  # "" probes no epochs
    runs = [(preset, int(m), 1, None) for preset in args.presets.split(",")
            for m in args.micro.split(",")]
    runs += [(preset, int(m), 2, None) for preset in extra for m in args.epoch_micro.split(",")]
    runs += [(preset, int(m), 1, int(b)) for preset in extra for m in args.epoch_micro.split(",")
             for b in args.budgets.split(",") if b]
    for preset, micro, epochs, budget in runs:
        suffix = (f"-e{epochs}" if epochs > 1 else "") + (f"-t{budget}" if budget is not None
                                                         else "")
        name, bonus, _ = preset.partition("+entropy")  # preset+entropy: --entropy_coef 0.05
        loss, _, form = name.partition("@")  # preset@form: another trace form
        cfg = TrainConfig(
            loss=loss, form=form or None, entropy_coef=0.05 if bonus else 0.0,
            micro_batch_size=micro, mini_batches=args.mini_batches,
            epochs=epochs, max_tokens_per_micro_batch=budget, pack_micro_batches=args.pack,
            old_logprobs=args.old_logprobs,
            prompts_per_step=args.prompts_per_step, group_size=4, max_new_tokens=24, steps=1,
            eval_every=-1,
            export=False, image_every=0, sample_every=0, reward_workers=1,
            ds_config=args.ds_config,
            output_dir=str(args.out / "outputs"), log_dir=str(args.out / "runs"),
            run_name=f"{preset}-m{micro}{suffix}{args.tag}",
        )  # fmt: skip
        trainer = Trainer(cfg)
        try:
            trainer.rollout.generate = split_independent(trainer.rollout.generate)
            grads = capture_update_gradients(trainer.engine)
            metrics = trainer.train_step(1)
        finally:
            trainer.close()
        if trainer.is_main:
            torch.save(
                {"grads": grads, "select_frac": metrics.get("select/frac"),
                 "reward": metrics["reward/mean"], "pad_frac": metrics["perf/pad_frac"],
                 "old_logprobs": trainer.updater.objective.old_logprobs,
                 # which linear the process ran (DeepSpeed's ZeRO-3 one replaces torch's)
                 "linear": torch.nn.functional.linear.__module__},
                args.out / f"{preset}-m{micro}-w{trainer.world}{suffix}{args.tag}.pt",
            )  # fmt: skip
        del trainer
    print("probe done", os.environ.get("RANK", "0"), file=sys.stderr)


if __name__ == "__main__":
    main()
