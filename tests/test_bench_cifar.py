"""The CIFAR-10 benchmark end to end on synthetic data (its `smoke` preset), from a "user's" trained
network written here with a plain PyTorch loop: the schema of its results, and that a rerun resumes."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import search_spaces as ss
from metaprune.data import Normalizer, synthetic
from tests.conftest import ROOT, counted_top1

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cifar  # noqa: E402

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # what --base shared passes as data.mean/std


def users_weights(path: Path) -> Path:
    """The smoke preset's full network (half-width ResNet-20, 16x16 synthetic images, 4 classes), a few SGD steps."""
    torch.manual_seed(0)
    space = ss.create_space("resnet20", 4, 3, 16, 0.5, 8)
    model = ss.build_subnet(space, space.largest)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data, normalize = synthetic().train, Normalizer(MEAN, STD)
    for step in range(20):
        batch = torch.randint(0, len(data), (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(normalize(data.images[batch])), data.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.timeout(900)  # every arm fine-tuned at two seeds and two targets, then the whole benchmark again
def test_the_benchmark_runs_end_to_end_and_a_rerun_gives_the_same_figures(tmp_path: Path) -> None:
    out = tmp_path / "results" / "cifar_smoke.json"
    weights = users_weights(tmp_path / "users_resnet20.pt")
    argv = ["--preset", "smoke", "--run-dir", str(tmp_path / "runs"), "--out", str(out), "--base-weights", str(weights)]
    argv += ["--threads", "1", "--rounds", "2", "--runs", "1", "--seeds", "2"]
    assert bench_cifar.main(argv) == 0

    results = json.loads(out.read_text())
    assert results["preset"] == "smoke" and results["targets"] == [0.5, 0.25] and results["seeds"] == 2
    assert results["command"].startswith("python benchmarks/bench_cifar.py --preset smoke")
    assert results["machine"] and results["seconds"] > 0 and results["base"] == "shared"
    family = results["families"]["resnet20"]
    full = family["full"]
    assert full["batch_1_speedup"] == 1.0 and full["weights"] == str(weights.resolve())
    space = ss.create_space("resnet20", 4, 3, 16, 0.5, 8)
    users = ss.build_subnet(space, space.largest)
    users.load_state_dict(torch.load(weights, weights_only=True))
    assert full["top1"] == counted_top1(users, MEAN, STD)  # the user's network, counted here on the test split
    test_images = len(synthetic().test)
    searches = [json.loads(path.read_text()) for path in sorted((tmp_path / "runs").rglob("searches/*.json"))]
    assert searches, "no search's candidates were kept"
    assert len(full["full_finetuned"]["top1_by_seed"]) == 2 and "top1_std" in full["full_finetuned"]
    assert full["int8"]["batch_32_ms"] > 0
    for target, rows in family["targets"].items():
        assert list(rows) == list(bench_cifar.ARMS)
        floor, top = family["windows"][target]
        assert bench_cifar.FLOORS[-1] <= floor <= bench_cifar.WINDOW and top == 1.0
        for arm, values in rows.items():
            if "skipped" in values:
                assert arm == "torch_pruning" and "torch-pruning" in values["skipped"]
                continue
            seeds = values["top1_by_seed"]
            assert len(seeds) == 2, arm
            if arm != "random":  # each seed's figure counts test images; the row's are their mean and spread
                assert all((top1 * test_images / 100) == pytest.approx(round(top1 * test_images / 100)) for top1 in seeds), arm
                assert values["top1"] == pytest.approx(statistics.mean(seeds)), arm
                assert values["top1_std"] == pytest.approx(statistics.pstdev(seeds)), arm
            assert values["distilled"], arm  # every fine-tune distilled from the trained network
            # FLOPs, as thop counts them, in the target's recorded window (Torch-Pruning: the nearest under it)
            low = 1 - bench_cifar.PEER_TOLERANCE if arm == "torch_pruning" else floor
            assert low * float(target) <= values["flops_ratio"] <= float(target), (arm, values["flops_ratio"])
            assert values["params"] > 0 and values["batch_1_speedup"] > 0 and values["batch_32_speedup"] > 0
            assert len(values["batch_32_round_ms"]) == 2 and len(values["batch_32_iqr_ms"]) == 2
        high = float(target) * full["flops"]
        for arm in ("warm_evolution", "eagleeye", "cold_evolution") + (() if rows["warm_nsga2"]["repaired"] else ("warm_nsga2",)):
            # the arm's proxy top-1 and configuration: the best candidate of one kept search in the target's window
            best = [best_in_window(found, floor * high, high) for found in searches]
            assert (rows[arm]["config"], rows[arm]["proxy_top1"]) in best, arm
        assert rows["warm_nsga2"]["repaired"] in (True, False)
        if rows["warm_nsga2"]["repaired"]:
            assert "proxy_top1_before_repair" in rows["warm_nsga2"]
        draws = rows["random"]["draws"]
        assert len(draws) == bench_cifar.RANDOM_DRAWS == 3
        for draw in draws:
            assert floor * float(target) <= draw["flops_ratio"] <= float(target) and len(draw["top1_by_seed"]) == 2
        assert rows["random"]["top1"] == pytest.approx(sum(d["top1"] for d in draws) / 3)
        assert rows["random"]["top1_std"] == pytest.approx(statistics.pstdev([d["top1"] for d in draws]))  # between draws
        assert rows["random"]["top1"] == pytest.approx(statistics.mean(rows["random"]["top1_by_seed"]))
        assert rows["random"]["top1_min"] <= rows["random"]["top1"] <= rows["random"]["top1_max"]
        int8 = rows["warm_evolution_int8"]
        assert int8["int8_top1_drop"] == pytest.approx(rows["warm_evolution"]["top1"] - int8["top1"])
        assert rows["l1_filter"]["init"].startswith("trained network")
    latency = family["latency_target"]
    assert latency["reference"] in ("torch_pruning", "l1_filter") and len(latency["top1_by_seed"]) == 2
    assert latency["selection"]["measured"] and latency["batch_32_ms"] > 0
    for kind in ("warm", "cold"):
        trust = family["proxy_trust"][kind]
        assert len(trust["configs"]) == len(trust["finetuned_top1"]) == 4
        assert trust["flops"] == sorted(trust["flops"])  # one configuration per FLOPs bin, smallest first
        # (nan where every figure ties: a toy fine-tune can leave every network at chance)
        assert all(math.isnan(b["kendall_tau"]) or -1 <= b["kendall_tau"] <= 1 for b in trust["budgets"])
        assert all(len(b["proxy_top1"]) == 4 for b in trust["budgets"])
        assert sum(b["searched"] for b in trust["budgets"]) == 1
        assert trust["recommended"]["val_images"] in [b["val_images"] for b in trust["budgets"]]
    aims = family["aims"]
    assert {"0.25_warm_evolution_minus_l1_filter", "0.5_fp32_speedup_batch_32", "warm_proxy_kendall_tau"} <= set(aims)
    assert all(a["met"] in (True, False, None) and "aim" in a for a in aims.values())
    md = out.with_suffix(".md").read_text()
    assert md.count("| 25% |") == len(bench_cifar.ARMS) and "Aims:" in md and "Latency target" in md
    assert out.with_suffix(".png").stat().st_size > 10_000

    # a rerun resumes every stage and arm: same figures, no training again
    again = tmp_path / "again.json"
    assert bench_cifar.main([*argv[:4], "--out", str(again), *argv[6:]]) == 0
    rerun = json.loads(again.read_text())["families"]["resnet20"]
    for target, rows in family["targets"].items():
        for arm, values in rows.items():
            assert rerun["targets"][target][arm].get("top1_by_seed") == values.get("top1_by_seed"), (target, arm)
            assert rerun["targets"][target][arm].get("config") == values.get("config"), (target, arm)
    assert rerun["full"]["full_finetuned"]["top1_by_seed"] == full["full_finetuned"]["top1_by_seed"]
    assert rerun["latency_target"]["top1_by_seed"] == latency["top1_by_seed"]
    for kind in ("warm", "cold"):
        assert rerun["proxy_trust"][kind]["finetuned_top1"] == family["proxy_trust"][kind]["finetuned_top1"]


def best_in_window(candidates: list[dict], low: float, high: float) -> tuple[list[int], float] | None:
    """(configuration, proxy top-1) of the best-scored candidate with FLOPs in [low, high] (fewer FLOPs break ties)."""
    inside = [c for c in candidates if low <= c["flops"] <= high]
    best = max(inside, key=lambda c: (c["proxy_top1"], -c["flops"]), default=None)
    return None if best is None else (best["config"], best["proxy_top1"])


def test_a_missing_data_folder_or_weights_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert bench_cifar.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")]) == 2
    assert "has no train/ folder" in capsys.readouterr().err
    missing = ["--preset", "smoke", "--base-weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "r.json")]
    assert bench_cifar.main(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
