"""What makes a run the same run: the fields a resume must not change silently.

A checkpoint records its run's identity (:func:`run_identity`); resuming with a different
loss, seed, batch geometry, dataset or world size would continue another experiment from
this one's weights and data position (and a different world size cannot even load a ZeRO
checkpoint), so :func:`check_identity` refuses it, naming every field that differs. Fields
where continuing is meaningful (a new loss or learning setup from these weights, say) can be
let through explicitly with ``--resume_override FIELD[,FIELD...]``; the world size cannot.
Everything else (steps, learning rate, logging, evaluation, checkpoints) may change freely.
"""

from __future__ import annotations

from typing import Any

IDENTITY_FIELDS: tuple[str, ...] = (
    # the objective
    "loss", "advantage", "filter_zero_variance", "overlong", "kl_coef", "kl_in",
    # the data and its order
    "model", "dataset", "dataset_split", "dataset_subset", "prompt_column", "answer_column",
    "dataset_size", "instruction", "drop_long_prompts", "seed",
    # the batch geometry
    "prompts_per_step", "group_size", "mini_batches", "epochs", "max_new_tokens",
    # what trains
    "lora_rank", "lora_alpha", "lora_target_modules",
)  # fmt: skip
"""Config fields recorded in a checkpoint and compared on resume (plus the loss's
``TraceConfig``, as ``trace.<field>``, and ``world_size``)."""

NOT_OVERRIDABLE = ("world_size",)


def run_identity(cfg: Any, world_size: int) -> dict[str, Any]:
    """The identity of the run ``cfg`` on ``world_size`` ranks (JSON-able)."""
    out: dict[str, Any] = {name: getattr(cfg, name) for name in IDENTITY_FIELDS}
    out.update({f"trace.{k}": v for k, v in cfg.trace_config().to_dict().items()})
    out["world_size"] = world_size
    return out


def identity_overridable() -> tuple[str, ...]:
    """Names ``--resume_override`` accepts (``trace.*`` fields are covered by ``loss`` and
    their own names)."""
    return tuple(n for n in IDENTITY_FIELDS if n not in NOT_OVERRIDABLE)


def check_identity(
    saved: dict[str, Any] | None, current: dict[str, Any], overrides: tuple[str, ...] = (),
    where: str = "the checkpoint",
) -> list[str]:  # fmt: skip
    """Raise ``ValueError`` naming each field that differs from ``saved`` and is not in
    ``overrides``; returns the overridden differences (for a notice). ``saved=None`` (a
    checkpoint written before identities were recorded) checks nothing."""
    if saved is None:
        return []
    differ = [k for k in current if k in saved and saved[k] != current[k]]

    def allowed(name: str) -> bool:
        base = name.split(".", 1)[1] if name.startswith("trace.") else name
        return name not in NOT_OVERRIDABLE and (base in overrides or (
            name.startswith("trace.") and "loss" in overrides))  # fmt: skip

    refused = [k for k in differ if not allowed(k)]
    if refused:
        changes = "; ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in refused)
        # ``loss`` lets its preset's trace fields through with it
        shown = {k for k in refused if not (k.startswith("trace.") and "loss" in refused)}
        names = ",".join(sorted(k.removeprefix("trace.") for k in shown))
        hint = (
            "world_size must match (a ZeRO checkpoint is sharded per rank): relaunch on "
            f"{saved['world_size']} ranks, or start a new --run_name"
            if "world_size" in refused
            else "resume with the run's own settings, start a new --run_name, or let these "
            f"through with --resume_override {names}"
        )
        raise ValueError(f"resume: this run differs from {where} in {changes}; {hint}")
    return [f"{k}: {saved[k]!r} -> {current[k]!r}" for k in differ]
