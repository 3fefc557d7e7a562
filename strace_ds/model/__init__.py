"""The policy model's side of a step: rollouts as padded tensors and their log-probs.

``batch`` (:class:`~strace_ds.model.batch.RolloutBatch`, ``collate_rollouts``), ``logprobs``
(``answer_logprobs``: the policy forward), ``fused_head`` (the fused output head: no
``[N, R, V]`` logits) and ``logprob_kernels`` (chunked log-softmax and entropy).
"""
