"""The policies shipped with the package, by task shape: where each lives and its pinned sha256.

A table, read by the data room (the policy ``--model`` defaults to for a generated task,
:mod:`strace_ds.data.tasks`) and by the recipes that regenerate the builds
(:mod:`strace_ds.assets.recipes`: ``arithmetic`` for ``tiny-qwen3``, ``chain`` for the chain
builds). Nothing here imports a recipe. The folders next to this file are package data
(``pyproject.toml``); float reductions differ between machines, so the weights ship rather than
being rebuilt, and a test checks each against its pin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
BUILD_INFO = "BUILD_INFO.json"
"""The file a build writes last: its config, sizes and measured accuracies."""

SHIPPED_DIR = ASSETS / "tiny-qwen3"
"""The default build (seed 0), shipped with the package."""
SHIPPED_SHA256 = "c1554d6992455fd27a5787f737644b5fbd08628fcbbe80a332d9d495b53cb18c"
"""sha256 of the shipped ``model.safetensors``: the pinned weights every machine uses."""

CHAIN_DIR = ASSETS / "tiny-qwen3-chain"
"""The default chain-task build (seed 0, ``--dataset chain``), shipped with the package."""
CHAIN_SHA256 = "f04b3d377c04cbe84202c67424726aa57e93b1fecf041b99edcb7a42bc5dec66"
"""sha256 of the shipped chain build's ``model.safetensors``."""
CHAIN_MAX_NEW_TOKENS = 160
"""Answer cap of a chain build's accuracy measurement (the recipe's default)."""
LONG_CHAIN_SPEC = "chain:decisive=5,filler=2"
"""The second task shape of the credit study: five decisive results, answers of ~185 tokens."""
LONG_CHAIN_DIR = ASSETS / "tiny-qwen3-chain-d5"
"""The build for :data:`LONG_CHAIN_SPEC`, shipped with the package."""
LONG_CHAIN_SHA256 = "b70a67903d288908773d0d2af85fa66d5243fb663eeaafcc4e5ff71d95aff13a"
"""sha256 of the long-chain build's ``model.safetensors``."""
LONG_CHAIN_MAX_NEW_TOKENS = 224
"""Answer cap of the long build's accuracy measurement (its answers run to ~195 tokens)."""


def is_build(path: Path) -> bool:
    """Whether ``path`` holds a finished build (its ``BUILD_INFO.json`` and ``config.json``)."""
    return (path / BUILD_INFO).is_file() and (path / "config.json").is_file()


def default_policy_dir() -> Path:
    """The embedded default policy: the shipped build of the arithmetic recipe's default config.

    The same weights on every machine (pinned by :data:`SHIPPED_SHA256`), and no build on a
    newcomer's first run. Raises with the regeneration command if the copy is incomplete.
    """
    if not (is_build(SHIPPED_DIR) and (SHIPPED_DIR / "model.safetensors").is_file()):
        raise FileNotFoundError(
            f"the shipped tiny policy at {SHIPPED_DIR} is missing or incomplete (an install "
            "without package data?); reinstall strace_ds, or regenerate it with "
            f"`python -m strace_ds.assets.recipes.arithmetic --out {SHIPPED_DIR} --force`"
        )
    return SHIPPED_DIR


@dataclass(frozen=True)
class ShippedChainBuild:
    """A chain-task build shipped with the package: the recipe's config, where, and its pin."""

    spec: str
    """The ``--dataset`` spec whose problems it was warm-started on."""
    path: Path
    sha256: str
    """sha256 of its ``model.safetensors``."""
    max_new_tokens: int = CHAIN_MAX_NEW_TOKENS


def shipped_chain_builds() -> list[ShippedChainBuild]:
    """The shipped builds, the default one first (read at call time: tests move the paths)."""
    return [ShippedChainBuild("chain", CHAIN_DIR, CHAIN_SHA256),
            ShippedChainBuild(LONG_CHAIN_SPEC, LONG_CHAIN_DIR, LONG_CHAIN_SHA256,
                              LONG_CHAIN_MAX_NEW_TOKENS)]  # fmt: skip


def regenerate_command(build: ShippedChainBuild) -> str:
    """The command that rebuilds ``build`` in place (then update its pinned sha256)."""
    extra = "" if build.spec == "chain" else f" --task {build.spec}"
    if build.max_new_tokens != CHAIN_MAX_NEW_TOKENS:
        extra += f" --max-new-tokens {build.max_new_tokens}"
    return f"python -m strace_ds.assets.recipes.chain --out {build.path}{extra} --force"


def _problem_shape(spec: str):
    """The fields of ``spec`` that decide the problems (the teacher's slip rate only shapes a
    warm start)."""
    from strace_ds.data.chain import ChainConfig, parse_chain_spec

    return replace(parse_chain_spec(spec), slip_rate=ChainConfig.slip_rate)


def shipped_chain_build(spec: str = "chain") -> ShippedChainBuild:
    """The shipped build whose problems ``spec`` draws, else the default build."""
    want = _problem_shape(spec)
    builds = shipped_chain_builds()
    return next((b for b in builds if _problem_shape(b.spec) == want), builds[0])


def chain_policy_dir(spec: str = "chain") -> Path:
    """The shipped policy for the chain task ``spec`` (:func:`shipped_chain_build`); raises
    with the regeneration command if it is missing."""
    build = shipped_chain_build(spec)
    if not (is_build(build.path) and (build.path / "model.safetensors").is_file()):
        raise FileNotFoundError(
            f"the shipped chain-task policy at {build.path} is missing or incomplete; reinstall "
            f"strace_ds or regenerate it with `{regenerate_command(build)}`"
        )
    return build.path
