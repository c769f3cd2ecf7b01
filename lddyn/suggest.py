"""'Did you mean ...?' for a mistyped name: the closest valid names, so an error need not list them all."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's similarity ratio below which a name is not a plausible typo
TIE = 0.05  # names within this ratio of the closest one are offered too


def close_names(value: object, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to ``value`` (a typo, a missing or extra letter, a prefix), best first."""
    text, names = str(value), list(choices)
    prefixed = [c for c in names if len(text) >= 3 and c.startswith(text)]
    scored = sorted(
        ((difflib.SequenceMatcher(None, text, c).ratio(), c) for c in names), key=lambda rc: -rc[0]
    )
    best = scored[0][0] if scored else 0.0
    similar = [c for r, c in scored if r >= max(CUTOFF, best - TIE)]
    return list(dict.fromkeys(prefixed + similar))[:n]


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``"did you mean 'a'?"`` (or 'a' or 'b'), or ``""`` when no valid name is close."""
    close = close_names(value, choices)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def hint(value: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'a'?"`` to append to an error's allowed values, or ``""``."""
    text = did_you_mean(value, choices)
    return f"; {text}" if text else ""
