"""Moved to strace_ds.assets.recipes.arithmetic; this re-export stays for one release."""

from strace_ds.assets import is_build as _is_build  # noqa: F401
from strace_ds.assets.recipes.arithmetic import *  # noqa: F403
from strace_ds.assets.recipes.arithmetic import _build_into, _publish, _tokenizer_corpus, main  # noqa: F401

if __name__ == "__main__":
    main()
