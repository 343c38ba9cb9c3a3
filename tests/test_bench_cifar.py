"""The CIFAR-10 benchmark's cpu preset, end to end on synthetic data and a tiny budget: it must not rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cifar  # noqa: E402

TINY = [
    *FAST,
    "data.flip=false",
    "score.calib_batch_size=32",
    "score.val_images=32",
    "search.population=4",
    "search.parents=2",
    "search.mutations=1",
    "search.crossovers=1",
    "search.generations=2",
]


def test_the_cpu_preset_runs_end_to_end_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "results" / "cifar_cpu.json"
    argv = ["--preset", "cpu", "--run-dir", str(tmp_path / "runs"), "--out", str(out), "--threads", "1", "--rounds", "1"]
    argv += ["--runs", "2", "--trust-configs", "4", "--trust-epochs", "1", "--seeds", "2"]
    for item in TINY:
        argv += ["--set", item]
    assert bench_cifar.main(argv) == 0

    results = json.loads(out.read_text())
    assert results["preset"] == "cpu" and results["targets"] == [0.5, 0.25]
    assert results["command"].startswith("python benchmarks/bench_cifar.py --preset cpu")
    assert results["machine"] and results["seconds"] > 0
    family = results["families"]["resnet20"]
    assert 0 <= family["full"]["top1"] <= 100 and family["full"]["batch_1_speedup"] == 1.0
    for target, rows in family["targets"].items():
        assert set(rows) == set(bench_cifar.ARMS)
        for arm, values in rows.items():
            if "skipped" in values:
                assert arm == "torch_pruning" and "torch-pruning" in values["skipped"]
                continue
            assert 0 <= values["top1"] <= 100, arm
            if arm != "evolution_kd_int8":  # each arm fine-tuned with two seeds, top-1 their mean
                assert len(values["top1_by_seed"]) == 2 and values["top1"] == pytest.approx(sum(values["top1_by_seed"]) / 2)
            # every arm within 2% under its FLOPs target, as thop counts them (Torch-Pruning: the nearest under it)
            floor = 1 - bench_cifar.PEER_TOLERANCE if arm == "torch_pruning" else bench_cifar.WINDOW
            assert floor * float(target) <= values["flops_ratio"] <= float(target), (arm, values["flops_ratio"])
            assert values["params"] > 0 and values["batch_1_speedup"] > 0 and values["batch_32_speedup"] > 0
        assert rows["evolution_kd"]["distilled"] and not rows["evolution"]["distilled"]
        int8 = rows["evolution_kd_int8"]
        assert int8["int8_top1_drop"] == rows["evolution_kd"]["top1_by_seed"][0] - int8["top1"]
        assert rows["l1_filter"]["config"] == rows["uniform"]["config"] and rows["l1_filter"]["init"] == "full network"
    trust = family["proxy_trust"]
    assert len(trust["configs"]) == len(trust["finetuned_val_top1"]) == 4
    assert trust["flops"] == sorted(trust["flops"])  # one configuration per FLOPs bin, smallest first
    assert all(-1 <= b["kendall_tau"] <= 1 and len(b["proxy_top1"]) == 4 for b in trust["budgets"])
    assert trust["recommended"]["calib_images"] in [b["calib_images"] for b in trust["budgets"]]
    assert set(family["aims"]) >= {"kendall_tau_at_least_0.5", "0.25_metaprune_minus_uniform", "0.5_uniform_aim_met"}
    assert out.with_suffix(".md").read_text().count("| 25% |") == len(bench_cifar.ARMS)
    assert out.with_suffix(".png").stat().st_size > 10_000

    # a rerun resumes every stage and arm: same figures, no training again
    again = tmp_path / "again.json"
    assert bench_cifar.main([*argv[:4], "--out", str(again), *argv[6:]]) == 0
    rerun = json.loads(again.read_text())["families"]["resnet20"]
    for target, rows in family["targets"].items():
        for arm, values in rows.items():
            assert rerun["targets"][target][arm].get("top1") == values.get("top1"), (target, arm)
    assert rerun["proxy_trust"]["finetuned_val_top1"] == trust["finetuned_val_top1"]


def test_a_missing_data_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert bench_cifar.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")]) == 2
    assert "has no train/ folder" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
