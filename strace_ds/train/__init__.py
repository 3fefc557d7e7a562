"""The training room: the loop and what it composes each step.

``loop`` (the :class:`~strace_ds.train.loop.Trainer`), ``setup`` (builds every component from a
:class:`~strace_ds.config.TrainConfig`), ``experience`` (prompts -> rollouts -> rewards -> group
advantages), ``updater`` (the policy update), ``micro_batches``, ``metrics`` and ``step_log``
(the step's metrics and their logging), ``monitor``, ``lr_schedule``, ``dropout``.
"""
