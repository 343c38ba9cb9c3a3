"""FLOPs budgets given as an absolute count or as a fraction of the full model."""

from __future__ import annotations


def resolve_flops(value: float, full_flops: int) -> float:
    """`value` <= 1 is a fraction of `full_flops` (0.5 means half); larger values are absolute."""
    if value < 0:
        raise ValueError(f"a FLOPs budget must be >= 0, got {value}")
    return value * full_flops if value <= 1 else float(value)
