"""Latency as a cost: wall-clock timing of models and a per-layer lookup table for a search space.

FLOPs are a poor proxy for speed: at batch 1 on a CPU a thin layer costs mostly fixed overhead,
and halving a width rarely halves the time. The MetaPruning paper's latency-constrained search
therefore looks every layer up in a table measured once per space, batch and thread count, so that
searchers price thousands of candidates for free.

Two modules, one import path: `metaprune.timing` measures (models, ONNX files, whole subnets) and
`metaprune.latency_table` holds what the table (`metaprune.graph_latency`) shares; this module gathers both.
"""

from metaprune.latency_table import (
    device_kind,
    kendall_tau,
    lut_accuracy,
    table_file_name,
)
from metaprune.timing import (
    LatencyConfig,
    LatencyResult,
    device_description,
    device_sync,
    measure_ms,
    measure_subnets,
    onnx_latency,
    torch_latency,
    torch_threads,
)

__all__ = [
    "LatencyConfig",
    "LatencyResult",
    "device_description",
    "device_kind",
    "device_sync",
    "kendall_tau",
    "lut_accuracy",
    "measure_ms",
    "measure_subnets",
    "onnx_latency",
    "table_file_name",
    "torch_latency",
    "torch_threads",
]
