"""Pull the final answer out of a model response: the content of its last ``\\boxed{...}``."""

from __future__ import annotations

import re

# `\boxed{` or `\fbox{`, optional spaces before the brace (`\boxed {5}` is valid LaTeX). The
# `(?![A-Za-z])` guard keeps macros such as `\boxedtext` from matching.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")


def _balanced_content(text: str, start: int) -> str | None:
    """Return ``text[start:j]`` where ``text[j]`` is the brace closing the one at ``start - 1``.

    Escaped braces (``\\{``, ``\\}``, as in the set ``\\{1, 2\\}``) are not counted: a backslash
    always consumes the character after it, which also handles ``\\\\`` (a LaTeX line break).
    Returns None when the braces never balance (a response truncated mid-answer).
    """
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def extract_boxed_answer(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, stripped.

    Nested braces are handled (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). For nested boxes
    the innermost-last one wins (``\\boxed{\\boxed{5}}`` -> ``5``). Returns None when there is no
    box, when the last box is never closed (we deliberately do not fall back to an earlier box:
    a truncated response has not given its final answer), or when the box is empty
    (``\\boxed{}`` is the instruction echoed back, not an answer). ``\\boxed 5`` without braces
    is not recognised.

    Example::

        >>> extract_boxed_answer(r"so $x = \\boxed{\\frac{1}{2}}$.")
        '\\\\frac{1}{2}'
    """
    if not isinstance(text, str):
        raise ValueError(f"extract_boxed_answer: text must be a str, got {type(text).__name__}")
    matches = list(_BOX_OPEN.finditer(text))
    if not matches:
        return None
    content = _balanced_content(text, matches[-1].end())
    if content is None:
        return None
    content = content.strip()
    return content or None
