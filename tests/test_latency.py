"""Latency: timing helpers, and the per-op lookup table (coverage, prediction, files, accuracy)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import search_spaces as ss
from metaprune.errors import UserError
from metaprune.latency import (
    LatencyConfig,
    LatencyResult,
    LatencyTable,
    build_latency_table,
    kendall_tau,
    lut_accuracy,
    measure_ms,
    measure_subnets,
    onnx_latency,
    torch_latency,
)
from metaprune.latency_table import fit_overhead_and_scale
from search_spaces import Classifier, ConvLayer, Gene, MaxPool, ResidualBlock, SearchSpace
from search_spaces._registry import create_description

CASES = [(name, min(ss.get_family(name).resolutions)) for name in ss.list_spaces("described")]


def every_op_space() -> SearchSpace:
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
    return SearchSpace("every_op", 3, 32, genes, layers, Classifier("fc", "b", 10))


def random_configs(space: SearchSpace, count: int, seed: int = 0) -> list[ss.Config]:
    rng = np.random.default_rng(seed)
    return [space.largest, space.smallest] + [ss.sample(space, rng) for _ in range(count)]


def unmeasured_table(space: SearchSpace) -> LatencyTable:
    """A table with every entry 1 ms: for coverage checks that need no timing."""
    from metaprune.latency import _signatures

    return LatencyTable(space, 1, 1, "none", {key: 1.0 for key in _signatures(space)})


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return build_latency_table(every_op_space(), batch=8, threads=1, warmup=1, runs=3, calibration=4, progress=False)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_table_keys_cover_every_config(name: str, size: int) -> None:
    space = create_description(name, 10, 3, size, 1.0)
    lut = unmeasured_table(space)
    for config in random_configs(space, 30):
        keys = lut.keys(config)  # a KeyError in `predict` would mean a signature never measured
        assert lut.predict(config) == len(keys) and set(keys) <= set(lut.entries)


@pytest.mark.parametrize(("name", "size"), CASES)
def test_conv_signatures_are_what_the_subnet_runs(name: str, size: int) -> None:
    """Channels, kernel, stride, groups and input size of every conv, as hooks see them run."""
    space = create_description(name, 10, 3, size, 1.0)
    config = random_configs(space, 1)[2]
    ran: list[str] = []

    def record(conv: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        assert isinstance(conv, nn.Conv2d)
        shape = f"k{conv.kernel_size[0]} s{conv.stride[0]}{' dw' if conv.groups > 1 else ''} {inputs[0].shape[-1]}px"
        ran.append(f"conv {conv.in_channels}>{conv.out_channels} {shape}")

    subnet = ss.build_subnet(space, config).eval()
    for module in subnet.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(record)
    with torch.inference_mode():
        subnet(torch.zeros(1, 3, size, size))
    predicted = [key.rsplit(" ", 1)[0] for key in unmeasured_table(space).keys(config) if key.startswith("conv")]
    assert Counter(predicted) == Counter(ran)


@pytest.mark.filterwarnings("ignore:latency table.*busy")  # 1 run per op: the fit may well be noise
def test_resnet20_table_is_complete_and_predicts_deterministically() -> None:
    space = create_description("resnet20", 10, 3, 16, 0.25)
    lut = build_latency_table(space, batch=1, threads=1, warmup=0, runs=1, calibration=3, progress=False)
    configs = random_configs(space, 50)
    predictions = [lut.predict(c) for c in configs]
    assert all(p > 0 and np.isfinite(p) for p in predictions)
    assert predictions == [lut.predict(c) for c in configs]


def test_smallest_is_predicted_and_measured_faster(table: LatencyTable) -> None:
    space = table.space
    assert table.predict(space.smallest) * 3 < table.predict(space.largest)
    smallest, largest = measure_subnets(space, [space.smallest, space.largest], 8, 1, warmup=1, runs=10)
    assert smallest * 3 < largest
    report = lut_accuracy(space, table, [space.smallest, space.largest], runs=10)
    assert report["kendall_tau"] == 1.0 and len(report["configs"]) == 2
    assert_report_adds_up(report, table)


def assert_report_adds_up(report: dict, table: LatencyTable) -> None:
    """A table check's figures, recomputed here from its rows: each prediction is the table's for that
    configuration, each error is predicted against measured, MAPE and the worst error are theirs."""
    rows = report["configs"]
    assert [row["predicted_ms"] for row in rows] == [table.predict(tuple(row["config"])) for row in rows]
    errors = [100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"] for row in rows]
    assert [row["error_pct"] for row in rows] == pytest.approx(errors)
    assert report["mape_pct"] == pytest.approx(sum(abs(e) for e in errors) / len(errors))
    assert report["max_error_pct"] == pytest.approx(max(abs(e) for e in errors))


def test_save_load_round_trip(table: LatencyTable, tmp_path: Path) -> None:
    path = tmp_path / "latency.json"
    table.save(path)
    loaded = LatencyTable.load(path, table.space, batch=8, threads=1)
    assert loaded.entries == table.entries and loaded.to_dict() == table.to_dict()
    assert all(loaded.predict(c) == table.predict(c) for c in random_configs(table.space, 5))


@pytest.mark.parametrize(
    "other", [{"space": create_description("resnet20", 10, 3, 16, 0.25)}, {"batch": 1}, {"threads": 2}]
)  # fmt: skip
def test_table_for_other_settings_is_refused(table: LatencyTable, tmp_path: Path, other: dict) -> None:
    path = tmp_path / "latency.json"
    table.save(path)
    wanted = {"space": table.space, "batch": 8, "threads": 1} | other
    with pytest.raises(UserError, match=f"latency table {path} was measured for space every_op"):
        LatencyTable.load(path, **wanted)


def drop_an_entry(data: dict) -> None:
    data["entries"].popitem()


def change_the_space(data: dict) -> None:
    data["space"]["genes"][0]["base"] = 96


@pytest.mark.parametrize("damage", [drop_an_entry, change_the_space, "truncate", "missing"])
def test_damaged_table_is_a_user_error(table: LatencyTable, tmp_path: Path, damage: object) -> None:
    path = tmp_path / "latency.json"
    table.save(path)
    if damage == "truncate":
        path.write_text(path.read_text()[:100])
    elif damage == "missing":
        path.unlink()
    else:
        data = json.loads(path.read_text())
        damage(data)  # type: ignore[operator]
        path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=f"latency table {path} is damaged"):
        LatencyTable.load(path)


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
