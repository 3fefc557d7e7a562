"""Moved to strace_ds.assets.recipes.chain; this re-export stays for one release."""

from strace_ds.assets.recipes.chain import *  # noqa: F403
from strace_ds.assets.recipes.chain import main

if __name__ == "__main__":
    main()
