"""What a run writes and reads back: atomic checkpoints, their manifests, atomic publishing.

``checkpoint`` (save, load, exact resume), ``manifest`` (size and CRC-32 of every file;
``python -m strace_ds.storage.manifest``) and ``publish`` (atomic directory and file publishing).
"""
