"""Text-level view of the relations (``=``, ``\\le``, ``\\Rightarrow``, ...) in a boxed answer.

math-verify is lenient with relations in a prediction: against a gold that is not a relation it
compares only the right-hand side of the last one, so ``\\boxed{43 = 42}`` or
``\\boxed{1 + 1 = 42}`` would count as the answer 42. :func:`find_relations` lists every relation
operator of the boxed text (at any brace depth) with its left operand, so that the grader can
insist that the left operand is a bare name (``x = 42``) or is itself right.

This module only tokenizes strings; it imports nothing that evaluates them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Relations after which the right-hand side may be read as "the answer", provided the left side
# names it: `x = 42`, `x := 42`, `x \approx 3.14`, `x \in (1, 2)`.
EQUALITY_OPS = frozenset(
    {
        "=", "==", ":=", "=:", "≈", "≡", "≅", "≃", "∈",
        "\\coloneqq", "\\eqqcolon", "\\approx", "\\equiv", "\\doteq", "\\triangleq",
        "\\simeq", "\\cong", "\\in",
    }
)  # fmt: skip
# Relations that never state a value: against a gold that is not itself a relation, an answer
# that contains one of these is wrong (`43 \le 42`, `x \neq 42`, `43 \Rightarrow 42`).
OTHER_OPS = frozenset(
    {
        "<", ">", "<=", ">=", "!=", "≤", "≥", "≠", "≪", "≫", "∼", "∝", "∉", "∋", "⊂", "⊆",
        "⊃", "⊇", "→", "←", "↔", "⇒", "⇐", "⇔", "⟹", "⟸", "⟺", "↦", "∴", "∵", "⩽", "⩾",
        "\\lt", "\\gt", "\\le", "\\leq", "\\leqq", "\\leqslant", "\\ge", "\\geq", "\\geqq",
        "\\geqslant", "\\ne", "\\neq", "\\ll", "\\gg", "\\lesssim", "\\gtrsim", "\\nless",
        "\\ngtr", "\\nleq", "\\ngeq", "\\sim", "\\propto", "\\notin", "\\ni", "\\subset",
        "\\subseteq", "\\supset", "\\supseteq", "\\subsetneq", "\\supsetneq", "\\prec",
        "\\succ", "\\preceq", "\\succeq", "\\to", "\\gets", "\\rightarrow", "\\leftarrow",
        "\\Rightarrow", "\\Leftarrow", "\\longrightarrow", "\\longleftarrow", "\\Longrightarrow",
        "\\Longleftarrow", "\\leftrightarrow", "\\Leftrightarrow", "\\longleftrightarrow",
        "\\Longleftrightarrow", "\\implies", "\\impliedby", "\\iff", "\\mapsto", "\\longmapsto",
        "\\leadsto", "\\therefore", "\\because", "\\vdash", "\\models",
    }
)  # fmt: skip
RELATION_OPS = EQUALITY_OPS | OTHER_OPS

_OPEN = frozenset({"(", "[", "{", "\\{", "\\langle", "\\lfloor", "\\lceil", "\\lvert", "\\lVert"})
_CLOSE = frozenset({")", "]", "}", "\\}", "\\rangle", "\\rfloor", "\\rceil", "\\rvert", "\\rVert"})
# Separate the parts of an answer list, like a comma: `x = 1, y = 2`, `x = 1 \quad y = 2`.
_SEPARATORS = frozenset({",", ";", "\\\\", "\\quad", "\\qquad"})
# Carry no meaning for a left-hand side.
_IGNORABLE = frozenset(
    {
        "&", "~", "$", "\\,", "\\;", "\\:", "\\!", "\\ ", "\\displaystyle", "\\textstyle",
        "\\big", "\\Big", "\\bigg", "\\Bigg", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr",
    }
)  # fmt: skip
_GREEK = frozenset(
    "\\" + g
    for g in (
        "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
        "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "varpi", "rho", "varrho",
        "sigma", "varsigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma",
        "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega", "ell",
    )
)  # fmt: skip
_ANGLE = frozenset({"\\angle", "\\measuredangle", "\\triangle"})
# Macros whose brace argument is a name: `\text{Area}`, `\overline{AB}`, `\operatorname{Var}`.
_NAME_WRAPPERS = frozenset(
    {
        "\\text", "\\textrm", "\\textit", "\\textbf", "\\mbox", "\\mathrm", "\\mathit",
        "\\mathbf", "\\mathsf", "\\mathcal", "\\mathbb", "\\mathfrak", "\\boldsymbol",
        "\\operatorname", "\\overline", "\\bar", "\\hat", "\\widehat", "\\vec", "\\tilde",
        "\\widetilde", "\\dot", "\\ddot", "\\overrightarrow", "\\overleftrightarrow",
    }
)  # fmt: skip
_PRIMES = frozenset({"'", "\\prime"})

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|:=|=:|<=|>=|!=|==|\s+|.", re.DOTALL)
# `\text{ and }` between two answers is a list separator, like a comma.
_TEXT_CONJUNCTION = re.compile(r"\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?:and|or|,)\s*\}")


_MAX_NAME_TOKENS = 32
"""A left operand longer than this (in tokens) is not a bare name; checking stays linear."""


@dataclass(frozen=True)
class Relation:
    """One relation operator of an answer and the operand on its left."""

    op: str
    """The operator as written (``"="``, ``"\\\\le"``, ``"≠"``...)."""
    lhs_is_name: bool
    """True when the left operand is a bare name or a tuple of names: ``x``, ``y_1``,
    ``\\alpha``, ``AB``, ``f(2)``, ``(x, y)``; False for ``43``, ``1 + 1``, ``x^2``."""
    source: str = field(repr=False)
    lhs_start: int = field(repr=False)
    lhs_end: int = field(repr=False)

    @property
    def lhs(self) -> str:
        """The left operand as written, up to the previous separator, relation or enclosing
        bracket; empty when the relation opens its group."""
        return self.source[self.lhs_start : self.lhs_end].strip()

    @property
    def is_equality(self) -> bool:
        """True for ``=``-like relations (``=``, ``:=``, ``\\approx``, ``\\in``, ...)."""
        return self.op in EQUALITY_OPS


def _tokens(text: str) -> tuple[list[str], list[tuple[int, int]], str]:
    """Meaningful tokens, their ``(start, end)`` spans, and the text the spans index."""
    text = _TEXT_CONJUNCTION.sub(",", text)
    tokens, spans = [], []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if not tok.isspace() and tok not in _IGNORABLE:
            tokens.append(tok)
            spans.append(m.span())
    return tokens, spans, text


def _bracket_roles(tokens: list[str]) -> list[str | None]:
    """``"open"``/``"close"``/None per token; ``\\left``/``\\right`` make the next one a bracket
    whatever it is (``\\left<``, ``\\right.``)."""
    roles: list[str | None] = [None] * len(tokens)
    forced: str | None = None
    for i, tok in enumerate(tokens):
        if tok in ("\\left", "\\right"):
            forced = "open" if tok == "\\left" else "close"
            continue
        if forced is not None:
            roles[i], forced = forced, None
        elif tok in _OPEN:
            roles[i] = "open"
        elif tok in _CLOSE:
            roles[i] = "close"
    return roles


def find_relations(text: str) -> list[Relation]:
    """Every relation operator in ``text`` (a boxed answer's content), in order, at any depth.

    The left operand of an operator runs back to the nearest separator (``,``, ``;``, ``\\\\``,
    ``\\quad``, ``\\text{and}``), relation or opening bracket at the operator's own nesting
    level, skipping over nested groups. So ``x = 2 \\cdot 21 = 42`` has the operands ``x`` and
    ``2 \\cdot 21``, ``x = 1, y = 2`` has ``x`` and ``y``, and ``\\frac{43 = 42}{1}`` has ``43``.

    Example::

        >>> [(r.op, r.lhs, r.lhs_is_name) for r in find_relations("43 = 42")]
        [('=', '43', False)]
    """
    tokens, spans, text = _tokens(text)
    roles = _bracket_roles(tokens)
    found = []
    # One forward pass: for each open group, where its current operand starts (linear time,
    # whatever the nesting: this runs on untrusted answers).
    starts = [0]
    for i, tok in enumerate(tokens):
        if roles[i] == "open":
            starts.append(i + 1)
        elif roles[i] == "close":
            if len(starts) > 1:
                starts.pop()
            else:  # an unmatched closer ends the operand like a separator
                starts[-1] = i + 1
        elif tok in ("\\left", "\\right"):
            continue
        elif tok in _SEPARATORS:
            starts[-1] = i + 1
        elif tok in RELATION_OPS:
            start = starts[-1]
            lhs = None
            if i - start <= _MAX_NAME_TOKENS:
                lhs = [t for t in tokens[start:i] if t not in ("\\left", "\\right")]
            found.append(
                Relation(
                    op=tok,
                    lhs_is_name=lhs is not None and _is_name_or_tuple(lhs),
                    source=text,
                    lhs_start=spans[start][0] if start < i else 0,
                    lhs_end=spans[i - 1][1] if start < i else 0,
                )
            )
            starts[-1] = i + 1
    return found


# ----------------------------------------------------------------------------- bare names
def _group_end(tokens: list[str], i: int) -> int | None:
    """Index of the bracket closing the one at ``tokens[i]`` (any bracket kinds), or None."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j] in _OPEN:
            depth += 1
        elif tokens[j] in _CLOSE:
            depth -= 1
            if depth == 0:
                return j
    return None


def _split_commas(tokens: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    depth = 0
    for tok in tokens:
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth -= 1
        if tok == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(tok)
    return parts


def _is_name_or_tuple(tokens: list[str]) -> bool:
    if len(tokens) >= 2 and tokens[0] in ("(", "[") and _group_end(tokens, 0) == len(tokens) - 1:
        return all(_is_name(part) for part in _split_commas(tokens[1:-1]))
    return _is_name(tokens)


def _is_name(tokens: list[str]) -> bool:
    """One or more atoms (``AB``, ``m\\angle ABC``), each a letter, Greek letter or wrapped
    name, with optional subscript, primes and one argument list (``f(2)``, ``P(A)``)."""
    i = 0
    while i < len(tokens):
        nxt = _atom(tokens, i)
        if nxt is None:
            return False
        i = nxt
    return i > 0


def _is_letter(tok: str) -> bool:
    return len(tok) == 1 and tok.isalpha()


def _atom(tokens: list[str], i: int) -> int | None:
    tok = tokens[i]
    if _is_letter(tok) or tok in _GREEK or tok in _ANGLE:
        i += 1
    elif tok in _NAME_WRAPPERS and i + 1 < len(tokens) and tokens[i + 1] == "{":
        end = _group_end(tokens, i + 1)
        if end is None or not _is_name(tokens[i + 2 : end]):
            return None
        i = end + 1
    else:
        return None
    called = False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "_" and i + 1 < len(tokens):
            sub = tokens[i + 1]
            if sub == "{":
                end = _group_end(tokens, i + 1)
                inner = tokens[i + 2 : end] if end is not None else None
                if not inner or not all(t.isalnum() or t in _GREEK or t == "," for t in inner):
                    return None
                i = end + 1
            elif sub.isalnum() or sub in _GREEK:
                i += 2
            else:
                return None
        elif tok in _PRIMES:
            i += 1
        elif tok == "^" and i + 1 < len(tokens) and tokens[i + 1] in _PRIMES:
            i += 2
        elif tok == "^" and i + 1 < len(tokens) and tokens[i + 1] == "{":
            end = _group_end(tokens, i + 1)
            inner = tokens[i + 2 : end] if end is not None else None
            if not inner or not all(t in _PRIMES for t in inner):
                return None
            i = end + 1
        elif tok == "(" and not called:
            end = _group_end(tokens, i)
            if end is None or any(t in RELATION_OPS for t in tokens[i:end]):
                return None
            i, called = end + 1, True
        else:
            break
    return i
