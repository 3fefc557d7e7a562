"""Two DeepSpeed "nodes" on one machine make the same update as two ranks on one node.

Each node is its own ``deepspeed`` launcher (``--hostfile``, ``--no_ssh``, ``--node_rank 0|1``,
``--master_addr 127.0.0.1``), one rank each, as ``scripts/slurm/train.sbatch`` starts them on a
cluster; the hostfile names the two nodes ``localhost`` and ``127.0.0.1``, which both resolve
here. ``tests/helpers/update_probe.py`` records the full reduced gradient of step 1's policy
updates; the two-node run must match the one-node two-rank run to 1e-5
(``tests/e2e/test_update_invariance.py`` compares the latter to one rank).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "helpers" / "update_probe.py"
RTOL = 1e-5
ARGS = ["--presets", "grpo", "--micro", "4", "--epoch_presets", "", "--budgets", "",
        "--prompts_per_step", "8"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def test_two_nodes_over_loopback_make_the_same_update(tmp_path: Path) -> None:
    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    one = subprocess.run(
        [launcher, "--num_gpus", "2", "--master_port", "29561", str(PROBE),
         str(tmp_path / "one"), *ARGS],
        env=_env(), capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert one.returncode == 0, (one.stdout + one.stderr)[-4000:]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    nodes = [
        subprocess.Popen(
            [launcher, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
             "--master_addr", "127.0.0.1", "--master_port", "29563", "--num_gpus", "1",
             str(PROBE), str(tmp_path / "two"), *ARGS],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outs = [n.communicate(timeout=900)[0] for n in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-4000:]}"
    for rank in (0, 1):  # one world of two: node i ran global rank i
        assert f"probe done {rank}" in outs[rank], outs[rank][-2000:]

    want = torch.load(tmp_path / "one" / "grpo-m4-w2.pt")["grads"]
    got = torch.load(tmp_path / "two" / "grpo-m4-w2.pt")["grads"]
    assert len(got) == len(want) == 2
    for update, (g, w) in enumerate(zip(got, want)):
        assert float(w.norm()) > 1e-3, "a zero gradient proves nothing"
        rel = float((g - w).norm() / w.norm())
        assert rel <= RTOL, f"update {update}: two nodes differ from two ranks by {rel}"
