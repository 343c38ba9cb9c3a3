"""A latency table belongs to the device kind that measured it: a CPU table never prices a GPU run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaprune.errors import UserError
from metaprune.latency import LatencyTable, _signatures, build_latency_table, table_file_name
from search_spaces import Classifier, ConvLayer, Gene, SearchSpace


def tiny_space() -> SearchSpace:
    return SearchSpace("tiny", 3, 8, (Gene("a", 8, (4, 8)),), (ConvLayer("stem", 3, "a"),), Classifier("fc", "a", 2))


def table_on(device_type: str, description: str) -> LatencyTable:
    space = tiny_space()
    return LatencyTable(space, 1, 1, description, {key: 1.0 for key in _signatures(space)}, device_type=device_type)


def test_a_cpu_table_is_refused_for_a_gpu_and_the_other_way(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    table_on("cpu", "Some CPU, 2 cores, torch 2.13").save(path)
    assert LatencyTable.load(path, tiny_space(), 1, 1, "cpu").device_type == "cpu"
    with pytest.raises(UserError, match=r"threads 1 on cpu, not .* threads 1 on cuda; delete it"):
        LatencyTable.load(path, tiny_space(), 1, 1, "cuda")
    table_on("cuda", "NVIDIA H200, torch 2.13").save(path)
    assert LatencyTable.load(path, tiny_space(), 1, 1, "cuda:0").device_type == "cuda"  # any GPU index: the kind
    with pytest.raises(UserError, match="on cuda, not"):
        LatencyTable.load(path, tiny_space(), 1, 1, "cpu")
    assert LatencyTable.load(path, tiny_space(), 1, 1).device_type == "cuda"  # no device given: not checked


LEGACY = [("Some CPU, 16 cores, torch 2.13", "cpu"), ("NVIDIA H200, torch 2.13", "cuda")]


@pytest.mark.parametrize(("description", "kind"), LEGACY)
def test_a_table_saved_before_the_kind_was_recorded_gets_it_from_its_description(
    tmp_path: Path, description: str, kind: str
) -> None:
    path = tmp_path / "table.json"
    data = table_on(kind, description).to_dict()
    del data["device_type"]
    path.write_text(json.dumps(data))
    assert LatencyTable.load(path, tiny_space(), 1, 1, kind).device_type == kind


@pytest.mark.filterwarnings("ignore:latency table")  # too few runs for a fit: not what this checks
def test_a_measured_table_records_its_device_kind() -> None:
    table = build_latency_table(tiny_space(), batch=1, threads=1, warmup=0, runs=2, calibration=2, progress=False)
    assert table.device_type == "cpu" and table.to_dict()["device_type"] == "cpu"


def test_each_device_kind_has_its_own_file() -> None:
    assert table_file_name(1, 2, "cpu") == "latency_table-b1-t2.json"  # the name run directories already hold
    assert table_file_name(1, 2, "cuda:1") == table_file_name(1, 2, "cuda") == "latency_table-cuda-b1-t2.json"
