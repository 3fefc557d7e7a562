"""LoRA: only the adapters train, the merged weights (under the base names) give the adapted
model's log-probs, and the saved adapter reloads with peft to the same model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from strace_ds.config import TrainConfig
from strace_ds.model.lora import inject_lora, merged_named_tensors, save_adapter


def _models(tiny_policy):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_policy))
    adapted = AutoModelForCausalLM.from_pretrained(str(tiny_policy))
    inject_lora(adapted, rank=4, alpha=8.0, targets="q_proj,k_proj,v_proj,o_proj,gate_proj,"
                "up_proj,down_proj")  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at 0 (a no-op adapter): give it a value
        for name, p in adapted.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    return base, adapted


def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.double(), -1)


def test_only_adapters_train_and_the_merge_gives_the_adapted_model(tiny_policy, tmp_path):
    base, adapted = _models(tiny_policy)
    trainable = {n: p.numel() for n, p in adapted.named_parameters() if p.requires_grad}
    # 2 layers x 7 projections, A [4, in] + B [out, 4]; hidden 128, 4 heads x 32 (q, o),
    # 2 kv heads x 32 = 64 (k, v), intermediate 384
    per_layer = sum(4 * (i + o) for i, o in [(128, 128), (128, 64), (128, 64), (128, 128),
                                              (128, 384), (128, 384), (384, 128)])  # fmt: skip
    assert sum(trainable.values()) == 2 * per_layer == 19456
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    ids = torch.randint(3, 400, (2, 12))
    before = _logprobs(base, ids)
    merged = dict(merged_named_tensors(adapted.named_parameters(), scaling=8.0 / 4))
    assert set(merged) == {n for n, _ in base.named_parameters()}
    base.load_state_dict(merged, strict=False)
    after = _logprobs(base, ids)
    assert (after - before).abs().max() > 1e-2  # the adapter moved the model ...
    torch.testing.assert_close(after, _logprobs(adapted, ids), atol=1e-4, rtol=0)  # ... as merged
    # the adapter in peft's format reloads onto the base to the same model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    optim = SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_target_modules="q_proj,k_proj,"
                            "v_proj,o_proj,gate_proj,up_proj,down_proj")  # fmt: skip
    adapter = {n: p.detach() for n, p in adapted.named_parameters() if ".lora_" in n}
    save_adapter(tmp_path / "adapter", adapter, optim, str(tiny_policy))
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_policy))
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    torch.testing.assert_close(_logprobs(reloaded, ids), after, atol=1e-4, rtol=0)


def test_lora_flags_are_checked():
    assert TrainConfig().lora_rank == 0
    with pytest.raises(ValueError, match="lora_dropout must be 0, got 0.1: dropout makes"):
        TrainConfig(lora_rank=8, lora_dropout=0.1)
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        TrainConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_target_modules names no module"):
        TrainConfig(lora_rank=8, lora_target_modules=" , ")
