"""Train a policy with the trace loss family on DeepSpeed.

    deepspeed scripts/train.py --ds_config ds_configs/zero3.json            # embedded default
    deepspeed --num_gpus 2 scripts/train.py --ds_config ds_configs/zero3.json --loss grpo
    python scripts/train.py --config run.yaml --steps 100                   # one process

Every flag is a field of strace_ds.config.TrainConfig (``--help`` lists them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from strace_ds.config import TrainConfig


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="YAML or JSON file of TrainConfig fields; flags override it"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=0, help="set by the deepspeed launcher"
    )
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return TrainConfig.from_args(args)
    except ValueError as err:
        # One line, exit 2, like argparse's own errors but without the 35-line usage: the
        # message already names the field (or file and position) and the fix.
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from strace_ds.storage.checkpoint import CheckpointSaveError
    from strace_ds.train.loop import Trainer

    try:
        trainer = Trainer(config)
    except ValueError as err:
        # Start-up checks (data, golds, rewards, model path) name the input and the fix: one
        # line and exit 2.
        return _error(err, 2)
    try:
        trainer.train()
    except CheckpointSaveError as err:
        # A full disk, say: the message names the path, the free space and the checkpoint
        # still in place, which is all the user needs; exit 1 (the run failed, not its input).
        return _error(err, 1)
    finally:
        trainer.close()
    return 0


def _error(err: Exception, code: int) -> int:
    """Print ``err`` as one line and return ``code``; STRACE_DS_TRACEBACK=1 re-raises it to
    show where it came from."""
    if os.environ.get("STRACE_DS_TRACEBACK"):
        raise err
    print(f"{Path(sys.argv[0]).name}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
