"""The recipes that build the shipped tiny policies (``python -m strace_ds.assets.recipes.X``).

``arithmetic`` builds ``tiny-qwen3`` (the default policy, the synthetic arithmetic task),
``chain`` warm-starts it further into the chain builds. Where the builds live and their pinned
sha256 are in :mod:`strace_ds.assets`; nothing below the recipes imports them.
"""
