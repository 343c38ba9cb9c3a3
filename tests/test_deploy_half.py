"""Half precision where the hardware lacks it: reported as unsupported, never a failure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaprune import deploy


class NeverRun(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("an unsupported dtype must not reach the model")


def test_bf16_on_a_gpu_without_it_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a pre-Ampere GPU, say
    batches = [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))]
    assert not deploy.autocast_supported(torch.bfloat16, "cuda")
    assert deploy.half_top1(NeverRun(), batches, torch.bfloat16, "cuda") is None
    # fp16 needs no such test on a GPU, and a CPU emulates both
    assert deploy.autocast_supported(torch.float16, "cuda") and deploy.autocast_supported(torch.bfloat16, "cpu")
