"""Host memory reuse: after the call, repeated forward/backward passes stop paying page faults
for their activations (the blocks stay in the heap); without it they fault in every time."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from strace_ds.train.host_memory import reuse_freed_host_memory

PROBE = """
import json, resource, sys, torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from strace_ds.train.host_memory import reuse_freed_host_memory
said = reuse_freed_host_memory() if sys.argv[1] == "reuse" else "system"
torch.manual_seed(0)
torch.set_num_threads(1)
config = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
model = Qwen3ForCausalLM(config)
ids = torch.randint(0, 64, (32, 512))
faults = []
for _ in range(7):  # micro-batches: the same activations allocated and freed each time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(input_ids=ids).logits.logsumexp(-1).mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
grads = torch.cat([p.grad.flatten() for p in model.parameters()])
print(json.dumps({"said": said, "faults": faults, "grads": grads.tolist()}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
    reason="glibc's mallopt",
)
def test_freed_blocks_are_reused_without_page_faults() -> None:
    system, reuse = probe("system"), probe("reuse")
    assert "kept for reuse" in reuse["said"]
    faults = {"system": system["faults"], "reuse": reuse["faults"]}
    # Default glibc: activation-sized blocks go back to the kernel and fault in again.
    assert sum(system["faults"][-3:]) > 5000, faults
    # Reused: after the first micro-batches the heap holds them; almost no faults.
    assert sum(reuse["faults"][-3:]) < sum(system["faults"][-3:]) / 10, faults
    assert reuse["grads"] == system["grads"]  # where the bytes live changes no number


def test_a_libc_without_mallopt_is_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libnothing-here.so.0")
    assert reuse_freed_host_memory() == (
        "host memory: left to the system allocator (no mallopt in libnothing-here.so.0)"
    )
