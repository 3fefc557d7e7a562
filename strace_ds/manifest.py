"""Moved to strace_ds.storage.manifest; this re-export stays for one release."""

from strace_ds.storage.manifest import *  # noqa: F403
from strace_ds.storage.manifest import main

if __name__ == "__main__":
    main()
