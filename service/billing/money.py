"""Money as people read it: integer nano-USD shown as exact US dollars, never through a float."""

from __future__ import annotations


def format_usd(nano_usd: int) -> str:
    """Exact dollars from nano-USD, trailing zeros trimmed to two decimals: 1_500_000 -> "0.0015"."""
    sign = "-" if nano_usd < 0 else ""
    whole, frac = divmod(abs(nano_usd), 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"
