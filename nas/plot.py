"""The picture of a search: proxy top-1 against FLOPs for every scored candidate, the front drawn."""

from __future__ import annotations

import io

from nas.study import Candidate


def front_png(candidates: list[Candidate], front: list[Candidate], budget: float, full_flops: int, title: str = "") -> bytes:
    """A PNG (the caller writes it where it keeps results): candidates as dots, the front as a step
    line, the budget as a rule."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    scale = 1e6
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([c.flops / scale for c in candidates], [c.proxy_top1 for c in candidates], s=10, alpha=0.45, label="scored")
    ax.step(
        [c.flops / scale for c in front], [c.proxy_top1 for c in front], where="post", color="C3", lw=1.6, marker="o", ms=4,
        label=f"front ({len(front)} points)",
    )  # fmt: skip
    if budget < full_flops:
        ax.axvline(budget / scale, color="0.3", ls="--", lw=1, label=f"budget ({budget / full_flops:.0%} of full)")
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("proxy top-1 (%, validation split)")
    ax.set_title(f"{len(candidates)} candidates  {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
