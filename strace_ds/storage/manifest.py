"""File manifests: the size and CRC-32 of every file of a checkpoint or export, checked on load.

A checkpoint (``step_000010/``) and the Hugging Face export (``final/``) carry a
``manifest.json``, written last inside the staging directory, before it is published::

    {"format": 1, "algorithm": "crc32",
     "files": {"trainer_state.json": {"size": 1234, "crc32": "89abcdef"}, ...}}

:func:`check_manifest` re-reads every listed file and returns what differs: a missing, empty or
truncated file, a checksum mismatch (flipped bytes), or a missing/damaged manifest. CRC-32 is
a checksum against accidental damage (disk, copy, truncation), not a signature. Files are
read in 8 MiB chunks (about 1.5 GB/s on one core), so a GB checkpoint costs seconds.

Collective use: when ``torch.distributed`` is initialised with several ranks, both functions
must be called by every rank; the files are shared out by size and each rank hashes its share
(rank 0 writes the manifest). Files are assumed visible to every rank (a shared filesystem), as
the checkpoint publish already assumes.

Command line, for a checkpoint saved before manifests existed (or a copy you trust)::

    python -m strace_ds.storage.manifest write outputs/<run>/checkpoints/step_000010
    python -m strace_ds.storage.manifest check outputs/<run>/final
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path
from typing import Any

from strace_ds.storage.publish import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 8 << 20
"""Bytes read per call while hashing."""


def file_checksum(path: Path) -> tuple[int, str]:
    """``(size in bytes, CRC-32 as 8 hex digits)`` of the file at ``path``, read in chunks."""
    crc, size = 0, 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            size += n
    return size, f"{crc:08x}"


def _listing(root: Path) -> list[str]:
    """Relative paths (posix) of the regular files under ``root``, sorted; not the manifest."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST and p.is_file():
                out.append(rel)
    return sorted(out)


def _dist() -> tuple[int, int]:
    from strace_ds import distributed as dist_utils

    return dist_utils.rank(), dist_utils.world_size()


def _shares(sizes: list[int], world: int) -> list[list[int]]:
    """Indices of the files each rank hashes: largest first onto the least-loaded rank."""
    loads, shares = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += sizes[i]
    return shares


def write_manifest(root: Path) -> dict[str, Any]:
    """Hash every file under ``root`` and write ``root/manifest.json`` (atomically, rank 0).

    Collective when several ranks run (see the module docstring): rank 0's listing is the one
    hashed, so call it once every rank's files are written. Returns the manifest.
    """
    from strace_ds import distributed as dist_utils

    root = Path(root)
    rank, world = _dist()
    names = _listing(root) if rank == 0 else None
    if world > 1:
        names = dist_utils.broadcast_object(names)
    assert names is not None
    sizes = [(root / n).stat().st_size for n in names]
    mine = _shares(sizes, world)[rank]
    local = {names[i]: file_checksum(root / names[i]) for i in mine}
    if world > 1:
        merged: dict[str, tuple[int, str]] = {}
        for part in dist_utils.all_gather_objects(local):
            merged.update(part)
        local = merged
    manifest = {
        "format": FORMAT,
        "algorithm": "crc32",
        "files": {n: {"size": local[n][0], "crc32": local[n][1]} for n in names},
    }
    if rank == 0:
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(root: Path) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """``(files, None)`` from ``root/manifest.json``, or ``(None, problem)`` when it is missing,
    empty, truncated or not a manifest."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None, f"{MANIFEST} is missing"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        files = data["files"]
        if data.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        for name, entry in files.items():
            if not isinstance(name, str) or not isinstance(entry["size"], int) or not isinstance(
                entry["crc32"], str
            ):
                raise ValueError(f"bad entry for {name!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        size = path.stat().st_size if path.exists() else 0
        what = "empty" if size == 0 else f"damaged ({type(exc).__name__}: {str(exc)[:120]})"
        return None, f"{MANIFEST} is {what}"
    return files, None


def check_manifest(root: Path) -> list[str]:
    """What in ``root`` differs from its manifest, one line per file; empty when it matches.

    Collective when several ranks run: every rank gets the same answer.
    """
    from strace_ds import distributed as dist_utils

    root = Path(root)
    rank, world = _dist()
    files, problem = read_manifest(root)
    problems: list[str] = []
    to_hash: list[str] = []
    if problem is not None:
        problems.append(problem)
    else:
        assert files is not None
        for name, entry in files.items():
            path = root / name
            if not path.is_file():
                problems.append(f"{name} is missing")
                continue
            size = path.stat().st_size
            if size != entry["size"]:
                what = "empty" if size == 0 else "truncated" if size < entry["size"] else "too long"
                problems.append(f"{name} is {what} ({size} bytes, the manifest says "
                                f"{entry['size']})")
            else:
                to_hash.append(name)
    # Every rank hashes its share of the files whose sizes match (one collective, always).
    share = _shares([files[n]["size"] for n in to_hash], world)[rank] if files else []
    local = []
    for i in share:
        name = to_hash[i]
        try:
            _, crc = file_checksum(root / name)
        except OSError as exc:
            local.append(f"{name} cannot be read ({type(exc).__name__}: {exc})")
            continue
        if crc != files[name]["crc32"]:  # type: ignore[index]
            local.append(f"{name} is damaged (crc32 {crc}, the manifest says "
                         f"{files[name]['crc32']})")  # type: ignore[index]
    if world > 1:
        local = [p for part in dist_utils.all_gather_objects(local) for p in part]
    order = {n: i for i, n in enumerate(to_hash)}
    problems += sorted(local, key=lambda p: order.get(p.split(" ", 1)[0], 0))
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("write", "check"):
        print("usage: python -m strace_ds.storage.manifest write|check DIR", file=sys.stderr)
        return 2
    root = Path(args[1])
    if not root.is_dir():
        print(f"{root}: not a directory", file=sys.stderr)
        return 2
    if args[0] == "write":
        manifest = write_manifest(root)
        print(f"{root / MANIFEST}: {len(manifest['files'])} files")
        return 0
    problems = check_manifest(root)
    for p in problems:
        print(f"{root}: {p}")
    if not problems:
        print(f"{root}: every file matches {MANIFEST}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
