"""CIFAR-10 benchmark of the traced path: does `from_module` prune the user's network as well as the
registered family does, and how does a traced family fare against Torch-Pruning?

Rows (each arm fine-tuned with the same settings and seed, distilled from its trained network):
  resnet20      the shared trained ResNet-20 (../shared/models), once as the registered `resnet20`
                (base.weights = resnet20_cifar10.metaprune.pt) and once traced from
                cifar_resnet.py:resnet20 (space.model, base.weights = resnet20_cifar10.pt): a warm
                PruningNet, the evolutionary search at 50% FLOPs, the winner fine-tuned. Equal genes
                and FLOPs by construction (tests/test_graph.py); top-1 should agree within seed noise.
  torch_pruning a traced family's trained network (`--peer-family`, trained here by train-base) pruned
                by Torch-Pruning's group-L1 at 50% FLOPs, against the warm MetaPruning winner; ONNX
                Runtime latency of both. Where Torch-Pruning cannot prune the family, its error is
                the row (ShuffleNetV2's channel shuffle, for one).

    python benchmarks/bench_graph.py --data ../shared/data/cifar10 [--rows resnet20,torch_pruning]
Writes benchmarks/results/graph_cpu.json; reruns resume (the run directories keep every stage).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import bench_cifar  # noqa: E402
import peer_pruning  # noqa: E402

from metaprune.config import load_config  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.pipeline import Run  # noqa: E402

SHARED = ROOT.parent / "shared" / "models"
SETTINGS = [
    "data.kind=folder", "data.flip=true", "data.val_size=5000", "data.train_subset=15000", "progress=true",
    "pruningnet.epochs=2", "pruningnet.batch_size=128", "search.population=12", "search.parents=4",
    "search.mutations=4", "search.crossovers=4", "search.generations=2", "search.max_flops=0.5",
    "search.min_flops=0.45", "finetune.epochs=2", "finetune.batch_size=128", "finetune.lr=0.05",
    "pruningnet.init=trained",
]  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 as class-per-folder JPEGs")
    parser.add_argument("--rows", default="resnet20,torch_pruning", help="which rows to run")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the resnet20 row (each runs both paths)")
    parser.add_argument("--peer-family", default="mobilenet_v3", help="the traced family of the Torch-Pruning row")
    parser.add_argument("--base-epochs", type=int, default=6, help="train-base epochs of the peer family's network")
    parser.add_argument("--run-dir", default="runs/bench_graph", help="run directories go under it")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads while timing")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per network and round")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline setting")
    parser.add_argument("--out", default=str(HERE / "results" / "graph_cpu.json"), help="results JSON")
    return parser.parse_args(argv)


def winner_row(bench: bench_cifar.Bench, run: Run, key: str) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train the warm PruningNet, search, fine-tune the winner's generated subnet: its figures."""
    began = time.perf_counter()
    base = run.train_base()
    run.train_pruningnet()
    run.search()
    best = run.choice()
    arm = bench_cifar.Arm(run.scorer().subnet(best.config), "warm PruningNet (generated)", "", "", best.config)
    model = bench_cifar.finetune(bench, run, key, arm, run.cfg.seed)
    found = {
        "base_top1": base["top1"],
        "full_flops": run.full.flops,
        "genes": len(run.space.genes),
        "flops": best.flops,
        "flops_ratio": best.flops / run.full.flops,
        "proxy_top1": best.proxy_top1,
        "top1": run.test_top1(model.to(run.device)),
        "seconds": time.perf_counter() - began,
    }
    return found, model


def resnet20_rows(args: argparse.Namespace, root: Path, before: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> None:
    """Both paths once per seed (training and search seeded alike), the rows saved after each run;
    the seeds' spread is the noise. A row resumed from its run directory keeps the seconds `before`
    (the results file) gave it."""
    paths = {
        "registered": ["space.family=resnet20", f"base.weights={SHARED / 'resnet20_cifar10.metaprune.pt'}"],
        "traced": [f"space.model={SHARED / 'cifar_resnet.py'}:resnet20", f"base.weights={SHARED / 'resnet20_cifar10.pt'}"],
    }
    norm = ["data.mean=[0.4914, 0.4822, 0.4465]", "data.std=[0.2470, 0.2435, 0.2616]"]
    rows: dict[str, Any] = {name: {} for name in paths}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, extra in paths.items():
            seeded = [f"seed={seed}", f"search.seed={seed}"]
            cfg = load_config(None, [*SETTINGS, f"data.path={args.data}", *norm, *extra, *seeded, *args.set])
            tag = f"resnet20-{name}" + (f"-seed{seed}" if seed else "")  # seed 0 keeps the first run's directory
            run = Run(cfg, root / tag)
            try:
                row, _ = winner_row(bench_cifar.Bench({}, root, tag), run, f"resnet20/{name}")
            finally:
                run.close()
            earlier = before.get(name, {}).get(str(seed), {})
            if earlier.get("top1") == row["top1"] and earlier.get("flops") == row["flops"]:
                row["seconds"] = max(row["seconds"], earlier["seconds"])  # the first run's time, not the resume's
            rows[name][str(seed)] = row
            save(rows | seed_noise(rows))


def seed_noise(rows: dict[str, Any]) -> dict[str, Any]:
    """Mean and spread of each path's top-1 over the seeds both have run, and whether they agree: the
    difference of the means within twice its standard error (each path's seed spread)."""
    seeds = sorted(set(rows["registered"]) & set(rows["traced"]), key=int)
    tops = {name: [rows[name][s]["top1"] for s in seeds] for name in ("registered", "traced")}
    out: dict[str, Any] = {"seeds": seeds}
    for name, values in tops.items():
        out[f"{name}_top1_mean"] = statistics.fmean(values) if values else None
        out[f"{name}_top1_std"] = statistics.stdev(values) if len(values) > 1 else None
    if len(seeds) > 1:
        diff = out["traced_top1_mean"] - out["registered_top1_mean"]
        error = math.sqrt((out["registered_top1_std"] ** 2 + out["traced_top1_std"] ** 2) / len(seeds))
        out |= {"top1_difference": diff, "difference_std_error": error, "within_noise": abs(diff) <= 2 * error}
    return out


def peer_rows(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    name = args.peer_family
    overrides = [*SETTINGS, f"data.path={args.data}", f"space.family={name}", f"base.epochs={args.base_epochs}", *args.set]
    run = Run(load_config(None, overrides), root / f"{name}-warm")
    try:
        bench = bench_cifar.Bench({}, root, name)
        found: dict[str, Any] = {"family": name}
        found["metaprune"], ours = winner_row(bench, run, f"{name}/metaprune")
        example = torch.zeros(1, 3, run.space.resolution, run.space.resolution)
        full = bench_cifar.trained.model(run).cpu().eval()
        try:
            peer, _ = peer_pruning.group_l1_prune(copy.deepcopy(full), example, run.cfg.search.max_flops * run.full.flops, 0.25)
        except Exception as exc:  # the finding is the row: Torch-Pruning's one line does not prune it
            found["torch_pruning"] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}
            return found
        arm = bench_cifar.Arm(peer, "trained network (group L1)", "", "")
        tuned = bench_cifar.finetune(bench, run, f"{name}/torch_pruning", arm, run.cfg.seed)
        flops = peer_pruning.flops_of(tuned, example)
        found["torch_pruning"] = {"flops": flops, "flops_ratio": flops / run.full.flops, "top1": run.test_top1(tuned)}
        files = {key: bench_cifar.export(run, model, bench.dir / f"{key}.onnx") for key, model in
                 (("full", full), ("metaprune", ours), ("torch_pruning", tuned))}  # fmt: skip
        latency = bench_cifar.latency_ratios(files, args, (3, run.space.resolution, run.space.resolution))
        for key in ("metaprune", "torch_pruning"):
            found[key] |= {k: v for k, v in latency[key].items() if k.endswith("_ms") or k.endswith("speedup")}
        return found
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.data) / "train").is_dir():
        print(f"error: --data {args.data} has no train/ folder; pass the CIFAR-10 class-per-folder tree", file=sys.stderr)
        return 2
    root = Path(args.run_dir)
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["command"] = "python benchmarks/bench_graph.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["settings"] = SETTINGS + args.set
    rows = args.rows.split(",")
    if "resnet20" in rows:

        def save(rows: dict[str, Any]) -> None:
            results["resnet20"] = rows
            atomic_write_json(out, results)

        resnet20_rows(args, root, results.get("resnet20", {}), save)
    if "torch_pruning" in rows:
        results[f"torch_pruning_{args.peer_family}"] = peer_rows(args, root)
        atomic_write_json(out, results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
