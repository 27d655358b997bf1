"""Play positions as results show them: "mm:ss", as music players do.

Used by the results' JSON (``best_start``) and every command's text output, so it lives in
the core, not with the command-line plumbing.
"""
from __future__ import annotations


def mmss(seconds: float) -> str:
    """Seconds -> 'mm:ss' (minutes keep counting past 59, as music players show them)."""
    total = max(0, int(round(seconds)))
    return f"{total // 60:02d}:{total % 60:02d}"


__all__ = ["mmss"]
