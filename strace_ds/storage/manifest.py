"""File manifests: the size and CRC-32 of every file of a checkpoint or export, checked on load.

A checkpoint (``step_000010/``) and the Hugging Face export (``final/``) carry a
``manifest.json``, written last inside the staging directory, before it is published::

    {"format": 1, "algorithm": "crc32",
     "files": {"trainer_state.json": {"size": 1234, "crc32": "89abcdef"}, ...},
     "ranks": {"world_size": 2, "files": {"0": ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                 ...], "1": [...]}}}

:func:`check_manifest` re-reads every listed file and returns what differs: a missing, empty or
truncated file, a checksum mismatch (flipped bytes), or a missing/damaged manifest. CRC-32 is
a checksum against accidental damage (disk, copy, truncation), not a signature. Files are
read in 8 MiB chunks (about 1.5 GB/s on one core), so a GB checkpoint costs seconds.

Every rank's files are required, not only the ones that happened to be there: a checkpoint's
manifest records under ``"ranks"`` the files each rank must have written (DeepSpeed's
model-states and optimizer-state shards for the world size and ZeRO stage, named by the engine
itself; :func:`strace_ds.storage.checkpoint.rank_files`). :func:`write_manifest` refuses to
write one when a required file is absent (a rank that failed, or a filesystem the ranks do not
share), and :func:`check_manifest` reports a required file missing from the manifest or the
disk, naming the rank. A checkpoint manifest without that record (written before it existed,
or by the ``write`` command) is checked by the shard names instead
(:func:`deepspeed_gaps`): model states present, and every shard kind present for every rank
``0..N-1`` that any shard names. So a checkpoint published with only ``trainer_state.json``
and ``manifest.json`` never verifies.

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
import re
import sys
import zlib
from pathlib import Path
from typing import Any

from strace_ds.storage.publish import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 8 << 20
"""Bytes read per call while hashing."""
STATE_FILE = "trainer_state.json"
"""What marks a directory as a checkpoint (``strace_ds.storage.checkpoint.STATE_FILE``)."""
_SHARD = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(optim|model)_states\.pt$")
_MODEL = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


class ManifestError(ValueError):
    """A manifest that must not be written: a file every rank must have written is absent."""


def describe(name: str) -> str:
    """``name`` with what it holds, for messages: ``X (rank 1's optimizer state)``."""
    m = _SHARD.match(name)
    if m:
        what = "optimizer state" if m.group(4) == "optim" else "model states"
        return f"{name} (rank {int(m.group(2))}'s {what})"
    if _MODEL.match(name):
        return f"{name} (the model states)"
    return name


def deepspeed_gaps(names: list[str]) -> list[str]:
    """What a DeepSpeed checkpoint holding the files ``names`` lacks, judged by their names
    alone: model states (``mp_rank_XX_model_states.pt`` or ZeRO-3's per-rank
    ``zero_pp_rank_<r>_..._model_states.pt``), and every shard kind for every rank ``0..N-1``
    that any shard names. One line per gap; empty when nothing is missing."""
    shards: dict[tuple[str, str, str], set[int]] = {}
    for n in names:
        m = _SHARD.match(n)
        if m:
            prefix, rank, mp, kind = m.group(1) or "", int(m.group(2)), m.group(3), m.group(4)
            shards.setdefault((prefix, mp, kind), set()).add(rank)
    problems = []
    if not any(_MODEL.match(n) for n in names) and not any(k[2] == "model" for k in shards):
        problems.append(
            "no DeepSpeed model states (mp_rank_00_model_states.pt, or ZeRO-3's "
            "zero_pp_rank_<r>_mp_rank_00_model_states.pt per rank): the weights "
            "were never written"
        )
    ranks = set().union(*shards.values()) if shards else set()
    world = max(ranks) + 1 if ranks else 0
    if any(k[2] == "model" for k in shards) and not any(k[2] == "optim" for k in shards):
        shards[("", "00", "optim")] = set()  # ZeRO-3 model shards imply optimizer shards
    for (prefix, mp, kind), have in sorted(shards.items()):
        for r in range(world):
            if r not in have:
                problems.append(
                    f"{describe(f'{prefix}zero_pp_rank_{r}_mp_rank_{mp}_{kind}_states.pt')} "
                    "is missing"
                )
    return problems


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


def write_manifest(root: Path, rank_files: list[str] | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` and write ``root/manifest.json`` (atomically, rank 0).

    Collective when several ranks run (see the module docstring): rank 0's listing is the one
    hashed, so call it once every rank's files are written. ``rank_files``: the files (relative
    to ``root``) this rank must have written; they are recorded per rank and required, and a
    :class:`ManifestError` naming the rank and the file is raised on every rank (nothing
    written) when one is absent from rank 0's listing. Returns the manifest.
    """
    from strace_ds import distributed as dist_utils

    root = Path(root)
    rank, world = _dist()
    names = _listing(root) if rank == 0 else None
    if world > 1:
        names = dist_utils.broadcast_object(names)
    assert names is not None
    record = None
    if rank_files is not None:
        mine = (list(rank_files), [(root / n).is_file() for n in rank_files])
        every = dist_utils.all_gather_objects(mine) if world > 1 else [mine]
        listed, absent = set(names), []
        for r, (files, seen_here) in enumerate(every):
            for name, seen in zip(files, seen_here):
                if name not in listed:
                    where = (
                        (
                            f"rank {r} wrote it, but rank 0 does not see it: checkpoints need "
                            "a directory every rank shares"
                        )
                        if seen
                        else "it was not written"
                    )
                    absent.append(f"{describe(name)} is missing from {root} ({where})")
        if absent:
            raise ManifestError(
                "not writing the manifest of an incomplete checkpoint: " + "; ".join(absent)
            )
        record = {"world_size": world, "files": {str(r): f for r, (f, _) in enumerate(every)}}
    elif (root / STATE_FILE).is_file() or STATE_FILE in names:
        gaps = deepspeed_gaps(names)
        if gaps:
            raise ManifestError(
                f"not writing a manifest for {root}: it is an incomplete "
                "checkpoint: " + "; ".join(gaps)
            )
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
    if record is not None:
        manifest["ranks"] = record
    if rank == 0:
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(root: Path) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """``(files, None)`` from ``root/manifest.json``, or ``(None, problem)`` when it is missing,
    empty, truncated or not a manifest."""
    data, problem = _read(root)
    return (None, problem) if data is None else (data["files"], None)


def _read(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The whole manifest (``files`` and, when recorded, ``ranks``) or ``(None, problem)``."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None, f"{MANIFEST} is missing"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        files = data["files"]
        if data.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        for name, entry in files.items():
            if (
                not isinstance(name, str)
                or not isinstance(entry["size"], int)
                or not isinstance(entry["crc32"], str)
            ):
                raise ValueError(f"bad entry for {name!r}")
        ranks = data.get("ranks")
        if ranks is not None and not (
            isinstance(ranks, dict)
            and isinstance(ranks.get("files"), dict)
            and all(
                isinstance(v, list) and all(isinstance(n, str) for n in v)
                for v in ranks["files"].values()
            )
        ):
            raise ValueError("bad 'ranks' record")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        size = path.stat().st_size if path.exists() else 0
        what = "empty" if size == 0 else f"damaged ({type(exc).__name__}: {str(exc)[:120]})"
        return None, f"{MANIFEST} is {what}"
    return data, None


def _required_gaps(data: dict[str, Any], root: Path) -> list[str]:
    """The files every rank must have written that the manifest does not list: per the
    ``ranks`` record, or, for a checkpoint manifest without one, by the shard names."""
    files = data["files"]
    ranks = data.get("ranks")
    if ranks is not None:
        return [
            f"{describe(name)} is missing: the manifest does not list it, so the checkpoint "
            f"was published without rank {r}'s files"
            for r, names in sorted(ranks["files"].items(), key=lambda kv: int(kv[0]))
            for name in names
            if name not in files
        ]
    if STATE_FILE in files:
        return deepspeed_gaps(list(files))
    return []


def check_manifest(root: Path) -> list[str]:
    """What in ``root`` differs from its manifest, one line per file; empty when it matches.

    Collective when several ranks run: every rank gets the same answer.
    """
    from strace_ds import distributed as dist_utils

    root = Path(root)
    rank, world = _dist()
    data, problem = _read(root)
    files = data["files"] if data is not None else None
    problems: list[str] = []
    to_hash: list[str] = []
    if problem is not None:
        problems.append(problem)
    else:
        assert files is not None and data is not None
        problems += _required_gaps(data, root)
        for name, entry in files.items():
            path = root / name
            if not path.is_file():
                problems.append(f"{describe(name)} is missing")
                continue
            size = path.stat().st_size
            if size != entry["size"]:
                what = "empty" if size == 0 else "truncated" if size < entry["size"] else "too long"
                problems.append(
                    f"{name} is {what} ({size} bytes, the manifest says {entry['size']})"
                )
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
            local.append(
                f"{name} is damaged (crc32 {crc}, the manifest says {files[name]['crc32']})"
            )  # type: ignore[index]
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
        try:
            manifest = write_manifest(root)
        except ManifestError as exc:
            print(f"{root}: {exc}", file=sys.stderr)
            return 1
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
