"""Small helpers for the text ckksnet prints (reports, command lines)."""
from __future__ import annotations


def count(n: int, noun: str) -> str:
    """'1 bootstrap', '2 bootstraps', '0 bootstraps': ``n`` and the noun, plural unless n == 1
    (regular English plurals only: the nouns passed are ckksnet's own)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
