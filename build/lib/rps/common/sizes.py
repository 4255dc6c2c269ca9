"""The fraction-or-count rule of split sizes and ``backbone.fine_tune_from``."""

from __future__ import annotations


def resolve_size(size: float, total: int) -> int:
    """A value below 1 is a fraction of ``total`` (rounded, at least 1), a value of 1 or more a
    count. ``rps.config.size_problem`` is its validation."""
    return max(1, round(size * total)) if size < 1 else int(size)
