"""A latency table belongs to the device kind that measured it: a CPU table never prices a GPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import search_spaces as ss
from metaprune.errors import UserError
from metaprune.graph_latency import GraphLatencyTable, build_graph_latency_table
from metaprune.latency import table_file_name


def tiny_space() -> ss.GraphSpace:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
    )
    return ss.from_module(model, torch.zeros(1, 3, 8, 8), name="tiny", scales=(0.5, 1.0))


def table_on(device_type: str, description: str) -> GraphLatencyTable:
    table = GraphLatencyTable(tiny_space(), 1, 1, description, {}, device_type=device_type)
    table.entries = {op.key(p): 1.0 for op in table.ops for p in op.points()}
    return table


def test_a_cpu_table_is_refused_for_a_gpu_and_the_other_way(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    table_on("cpu", "Some CPU, 2 cores, torch 2.13").save(path)
    assert GraphLatencyTable.load(path, tiny_space(), 1, 1, "cpu").device_type == "cpu"
    with pytest.raises(UserError, match=r"threads 1 on cpu, not .* threads 1 on cuda; delete it"):
        GraphLatencyTable.load(path, tiny_space(), 1, 1, "cuda")
    table_on("cuda", "NVIDIA H200, torch 2.13").save(path)
    assert GraphLatencyTable.load(path, tiny_space(), 1, 1, "cuda:0").device_type == "cuda"  # any GPU index: the kind
    with pytest.raises(UserError, match="on cuda, not"):
        GraphLatencyTable.load(path, tiny_space(), 1, 1, "cpu")
    assert GraphLatencyTable.load(path, tiny_space(), 1, 1).device_type == "cuda"  # no device given: not checked


@pytest.mark.filterwarnings("ignore:latency table")  # too few runs for a fit: not what this checks
def test_a_measured_table_records_its_device_kind(tmp_path: Path) -> None:
    table = build_graph_latency_table(tiny_space(), batch=1, threads=1, warmup=0, runs=2, calibration=2, progress=False)
    table.save(tmp_path / "table.json")
    assert table.device_type == "cpu" and json.loads((tmp_path / "table.json").read_text())["device_type"] == "cpu"


def test_each_device_kind_has_its_own_file() -> None:
    assert table_file_name(1, 2, "cpu") == "latency_table-b1-t2.json"  # the name run directories already hold
    assert table_file_name(1, 2, "cuda:1") == table_file_name(1, 2, "cuda") == "latency_table-cuda-b1-t2.json"
