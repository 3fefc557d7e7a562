"""The batch geometry of a step, written once: prompts -> ranks -> mini-batches -> micro-batches.

A step samples ``prompts_per_step`` prompts (``group_size`` answers each) over ``world`` ranks
and makes ``mini_batches`` policy updates per epoch, each accumulated over micro-batches of at
most ``micro_batch_size`` rows. Config validation, the experience producer (which prompts a
rank draws), the updater (which rows go to which mini-batch) and the DeepSpeed engine (micro
size and gradient accumulation) all read the numbers here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLayout:
    """One step's sizes on each rank, from the run's rollout and optimizer settings."""

    prompts_per_step: int
    group_size: int
    mini_batches: int
    micro_batch_size: int
    world: int = 1

    @classmethod
    def of(cls, rollouts: object, optim: object, world: int = 1) -> BatchLayout:
        """From a run's ``rollouts`` and ``optim`` config sections."""
        return cls(
            prompts_per_step=rollouts.prompts_per_step,  # type: ignore[attr-defined]
            group_size=rollouts.group_size,  # type: ignore[attr-defined]
            mini_batches=optim.mini_batches,  # type: ignore[attr-defined]
            micro_batch_size=optim.micro_batch_size,  # type: ignore[attr-defined]
            world=world,
        )

    # --- sizes on each rank ----------------------------------------------------------------
    @property
    def prompts_per_rank(self) -> int:
        return self.prompts_per_step // self.world

    @property
    def rows_per_rank(self) -> int:
        """Answers a rank trains on per step (``prompts_per_rank x group_size``)."""
        return self.prompts_per_rank * self.group_size

    @property
    def rows_per_mini_batch(self) -> int:
        return self.rows_per_rank // self.mini_batches

    @property
    def micro(self) -> int:
        """Rows per micro-batch (``micro_batch_size``, at most a mini-batch)."""
        return min(self.micro_batch_size, self.rows_per_mini_batch)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer update (gradient accumulation)."""
        return self.rows_per_mini_batch // self.micro

    # --- which prompts and rows ------------------------------------------------------------
    @property
    def aligned(self) -> bool:
        """Every rank holds a slice of every global mini-batch (prompts a multiple of
        ``mini_batches x world``): then 1 and N ranks make the same updates."""
        return self.prompts_per_step % (self.mini_batches * self.world) == 0

    @property
    def share(self) -> int:
        """Prompts (groups) of one global mini-batch on each rank, when :attr:`aligned`."""
        return self.prompts_per_step // self.mini_batches // self.world

    def chunk_offset(self, rank: int) -> int | None:
        """Position of ``rank``'s slice in each global mini-batch (None when not aligned)."""
        return rank * self.share if self.aligned else None

    def prompt_positions(self, step: int, rank: int) -> list[int]:
        """Positions in the epoch-by-epoch prompt stream of ``rank``'s prompts at ``step``.

        The step's prompts are split into ``mini_batches`` consecutive chunks, one per policy
        update, and each rank takes its slice of every chunk: global mini-batch j holds the
        same prompts whatever the number of ranks, so 1 and N ranks make the same updates.
        (When not :attr:`aligned` each rank takes one contiguous slice and mini-batches depend
        on the rank count.)
        """
        first = (step - 1) * self.prompts_per_step
        if self.aligned:
            chunk = self.prompts_per_step // self.mini_batches
            return [
                first + j * chunk + rank * self.share + i
                for j in range(self.mini_batches)
                for i in range(self.share)
            ]
        start = first + rank * self.prompts_per_rank
        return list(range(start, start + self.prompts_per_rank))

    # --- validation ------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ``ValueError`` naming the size that does not divide, and the fix."""
        if self.prompts_per_step % self.world:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be divisible by the number of "
                f"ranks ({self.world})"
            )
        if self.rows_per_rank % self.mini_batches:
            raise ValueError(
                f"mini_batches ({self.mini_batches}) must divide the rows per rank per step "
                f"(prompts_per_step / ranks * group_size = {self.rows_per_rank})"
            )
        mini = self.rows_per_mini_batch
        if mini % self.micro:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide the rows per mini-batch "
                f"on each rank ({mini}); try {_divisors_hint(mini)}"
            )


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
