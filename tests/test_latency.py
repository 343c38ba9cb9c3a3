"""Latency: timing helpers, the fit of a table to whole subnets, and a measured table on a traced
space with every kind of op (the graph table's coverage and files: `tests/test_graph_latency.py`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from metaprune.graph_latency import GraphLatencyTable, build_graph_latency_table
from metaprune.latency import (
    LatencyConfig,
    LatencyResult,
    kendall_tau,
    lut_accuracy,
    measure_ms,
    measure_subnets,
    onnx_latency,
    torch_latency,
)
from metaprune.latency_table import fit_overhead_and_scale
from search_spaces import Classifier, ConvLayer, Gene, MaxPool, ResidualBlock, SearchSpace
from search_spaces._build import gene_paths


def every_op_space() -> ss.GraphSpace:
    """Two genes far apart (4 or 64 channels) and every kind of op: times differ ~10x."""
    genes = (Gene("a", 64, (4, 64)), Gene("b", 64, (4, 64)))
    layers = (
        ConvLayer("stem", 3, "a"),
        MaxPool("pool", 3, 2),
        ResidualBlock("res", (ConvLayer("c1", "a", "b"), ConvLayer("c2", "b", "a", act=None)), act="relu"),
        ConvLayer("dw", "a", "a", 3, 2, depthwise=True, act="relu6"),
        ResidualBlock(
            "down",
            (ConvLayer("d1", "a", "b", 3, 2), ConvLayer("d2", "b", "b", act=None)),
            ConvLayer("d_sc", "a", "b", 1, 2, act=None),
            act="relu",
        ),
    )
    described = SearchSpace("every_op", 3, 32, genes, layers, Classifier("fc", "b", 10))
    network = ss.build_subnet(described, described.largest)
    example = torch.zeros(1, 3, 32, 32)
    space = ss.from_module(network, example, "every_op", scales=(4 / 64, 1.0), genes=gene_paths(described), only_named=True)
    assert [(g.name, g.choices) for g in space.genes] == [("a", (4, 64)), ("b", (4, 64))]
    return space


@pytest.fixture(scope="module")
def table() -> GraphLatencyTable:
    return build_graph_latency_table(every_op_space(), batch=8, threads=1, warmup=1, runs=3, calibration=4, progress=False)


def test_smallest_is_predicted_and_measured_faster(table: GraphLatencyTable) -> None:
    space = table.space
    assert table.predict(space.smallest) * 3 < table.predict(space.largest)
    smallest, largest = measure_subnets(space, [space.smallest, space.largest], 8, 1, warmup=1, runs=10)
    assert smallest * 3 < largest
    report = lut_accuracy(space, table, [space.smallest, space.largest], runs=10)
    assert report["kendall_tau"] == 1.0 and len(report["configs"]) == 2
    assert_report_adds_up(report, table)


def assert_report_adds_up(report: dict, table: GraphLatencyTable) -> None:
    """A table check's figures, recomputed here from its rows: each prediction is the table's for that
    configuration, each error is predicted against measured, MAPE and the worst error are theirs."""
    rows = report["configs"]
    assert [row["predicted_ms"] for row in rows] == [table.predict(tuple(row["config"])) for row in rows]
    errors = [100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"] for row in rows]
    assert [row["error_pct"] for row in rows] == pytest.approx(errors)
    assert report["mape_pct"] == pytest.approx(sum(abs(e) for e in errors) / len(errors))
    assert report["max_error_pct"] == pytest.approx(max(abs(e) for e in errors))


def test_measure_ms_warms_up_and_syncs() -> None:
    calls, syncs = [], []
    times = measure_ms(lambda: calls.append(1), warmup=3, runs=5, sync=lambda: syncs.append(1))
    assert len(times) == 5 and len(calls) == 8 and len(syncs) == 6
    # each timed run holds one call: a call that sleeps 20 ms is never timed shorter (a sleep lasts at least that)
    slept = measure_ms(lambda: time.sleep(0.02), warmup=1, runs=3)
    assert len(slept) == 3 and min(slept) >= 20.0, slept


def test_latency_figures_are_the_percentiles_of_the_times() -> None:
    result = LatencyResult.of([float(t) for t in range(10, 0, -1)], batch=4, threads=2, runtime="torch", device="cpu")
    # numpy's linear interpolation on 1..10, by hand: 1 + 0.1 * 9, 1 + 0.5 * 9, 1 + 0.9 * 9
    assert (result.p10_ms, result.median_ms, result.p90_ms) == pytest.approx((1.9, 5.5, 9.1))
    expected = {"median_ms": 5.5, "p10_ms": 1.9, "p90_ms": 9.1, "runs": 10, "batch": 4, "threads": 2}
    assert result.to_dict() == pytest.approx(expected | {"runtime": "torch", "device": "cpu"})


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_torch_latency_is_sane_and_restores_threads() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = torch_latency(tiny_model(), (3, 16, 16), batch=2, threads=1, warmup=2, runs=10)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms < 1000
    assert (result.runs, result.batch, result.threads, result.runtime) == (10, 2, 1, "torch")
    assert "torch" in result.device


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: no onnxscript needed
def test_onnx_latency(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    model = tiny_model().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), input_names=["image"], dynamo=False,
                      dynamic_axes={"image": {0: "batch"}})  # fmt: skip
    result = onnx_latency(path, "image", (3, 16, 16), batch=2, threads=1, warmup=2, runs=10)
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms < 1000
    assert (result.runtime, result.batch, result.threads, result.runs) == ("onnxruntime", 2, 1, 10)


def test_kendall_tau_equals_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = list(rng.integers(0, 5, 12).astype(float)), list(rng.integers(0, 5, 12).astype(float))
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


def test_the_fit_prices_every_subnet_above_zero_even_on_noise() -> None:
    summed = [4.0, 6.0, 9.0, 12.0]
    assert fit_overhead_and_scale(summed, [1.0 + 1.2 * s for s in summed]) == pytest.approx((1.0, 1.2))
    with pytest.warns(UserWarning, match="busy"):  # a scale of 3: noise; the mean residual, 1, is kept
        assert fit_overhead_and_scale([1.0, 2.0], [1.0, 4.0]) == pytest.approx((1.0, 1.0))
    # From a CI run: one timing per op (first calls) summed to ~10x the whole subnets. The mean
    # residual would price the smallest below zero; the ratio of the totals keeps the order.
    summed, measured = [21.8, 14.0, 9.5], [2.3, 2.1, 1.2]
    with pytest.warns(UserWarning, match="busy"):
        overhead, scale = fit_overhead_and_scale(summed, measured)
    assert (overhead, scale) == pytest.approx((0.0, sum(measured) / sum(summed)))


def test_latency_config_fields_have_help() -> None:
    import inspect

    lines = [line for line in inspect.getsource(LatencyConfig).splitlines() if ": int = " in line]
    assert len(lines) == 4 and all("  # " in line for line in lines)
