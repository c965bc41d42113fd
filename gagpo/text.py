"""Word tokens of an observation text, shared by the text policy (:mod:`gagpo.policies`) and anchor
similarity (:mod:`gagpo.anchors`). Plain Python: importing it loads neither numpy nor torch."""
from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z]+|[0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into runs of letters and runs of digits.

    ``"The key is 2 steps north."`` -> ``["the", "key", "is", "2", "steps", "north"]``; numbers stay
    tokens of their own, punctuation and other characters separate tokens and are dropped.
    """
    return _TOKEN.findall(text.lower())


__all__ = ["tokenize"]
