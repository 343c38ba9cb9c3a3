"""Wall-clock latency of models: timing helpers, whole torch or ONNX Runtime models, whole subnets.

Everything that measures lives here; `metaprune.latency_table` builds the per-layer lookup table
on top of it, and `metaprune.latency` gathers both under their old import path.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

import search_spaces as ss
from metaprune.deploy import onnx_session
from search_spaces import Config, GraphSpace


@dataclass
class LatencyConfig:
    """How latency is measured: on the machine, batch and threads the model will be deployed with."""

    batch: int = 1  # images per forward pass (1: one request at a time)
    threads: int = 1  # torch intra-op threads while measuring: those the deployed model will get
    warmup: int = 3  # untimed calls before each sweep over a table entry (whole subnets: 3x as many)
    runs: int = 10  # timed calls per table entry over 2 sweeps, the fastest counts (whole subnets: 5x as many)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    batch: int
    threads: int
    runtime: str  # torch | onnxruntime
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def of(times: list[float], batch: int, threads: int, runtime: str, device: str) -> LatencyResult:
        p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
        return LatencyResult(median, p10, p90, len(times), batch, threads, runtime, device)


def measure_ms(fn: Callable[[], object], warmup: int, runs: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Wall times of `fn()` in ms after `warmup` untimed calls; `sync` waits for queued GPU work."""
    wait = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    wait()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        wait()
        times.append((time.perf_counter() - began) * 1e3)
    return times


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def device_sync(device: str) -> Callable[[], None] | None:
    """What waits for `device`'s queued work before a clock is read: a GPU runs asynchronously."""
    return torch.cuda.synchronize if device.startswith("cuda") else None


def torch_latency(
    model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int, threads: int,
    warmup: int = 10, runs: int = 50, device: str = "cpu",
) -> LatencyResult:  # fmt: skip
    """Latency of `model` in eval mode under `torch.inference_mode` on a random batch."""
    model = model.eval().to(device)
    x = torch.randn(batch, *input_shape, device=device)
    with torch_threads(threads), torch.inference_mode():
        times = measure_ms(lambda: model(x), warmup, runs, device_sync(device))
    return LatencyResult.of(times, batch, threads, "torch", device_description(device))


def onnx_latency(
    path: str | Path, input_name: str, input_shape: tuple[int, int, int], batch: int, threads: int,
    warmup: int = 10, runs: int = 50,
) -> LatencyResult:  # fmt: skip
    """Latency of an ONNX model under onnxruntime's CPU provider with `threads` intra-op threads,
    in the session the model is scored and shipped with (`deploy.onnx_session`: no thread spinning)."""
    session = onnx_session(path, threads)
    feed = {input_name: np.random.default_rng(0).standard_normal((batch, *input_shape), dtype=np.float32)}
    times = measure_ms(lambda: session.run(None, feed), warmup, runs)
    return LatencyResult.of(times, batch, threads, "onnxruntime", device_description("cpu"))


def device_description(device: str) -> str:
    """What ran the timings: CPU model and usable cores (or the GPU's name), and torch's version."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    model = names[0] if names else platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, torch {torch.__version__}"


def measure_subnets(
    space: GraphSpace, configs: list[Config], batch: int, threads: int, warmup: int = 10, runs: int = 30,
    device: str = "cpu", rounds: int = 5,
) -> list[float]:  # fmt: skip
    """The fastest run of each config's subnet in ms, timed in interleaved rounds: load changes hit all alike.

    The fastest run, not the median, is what the code costs: on a shared machine times are bimodal
    (a core to itself or half of one) and the median flips between the modes; on a quiet machine
    the two agree within a few percent. Table entries are fastest runs too.
    """
    x = torch.randn(batch, space.in_channels, space.resolution, space.resolution, device=device)
    nets = [ss.build_subnet(space, c).eval().to(device) for c in configs]
    times: list[list[float]] = [[] for _ in configs]
    with torch_threads(threads), torch.inference_mode():
        for r in range(rounds):
            for net, net_times in zip(nets, times):
                net_times += measure_ms(partial(net, x), warmup if r == 0 else 2, -(-runs // rounds), device_sync(device))
    return [min(t) for t in times]
