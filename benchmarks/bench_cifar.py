"""CIFAR-10 benchmark: does MetaPruning find better networks than the simple ways to shrink one?

Arms at each FLOPs target (50% and 25% of the full network), every one fine-tuned with the same
schedule, augmentation and seed (GUIDE section 4), FLOPs within 2% under the target:
  evolution          MetaPruning + the paper's evolutionary search, window [98%, 100%] of the target
  nsga2              MetaPruning + NSGA-II (accuracy/FLOPs) over [0, the largest target]: its best
                     candidate in the target's window; one search serves every target and scores as
                     many candidates as the evolution searches together
  uniform            uniform width scaling to the target (the paper's baseline)
  l1_filter          the trained full network pruned to the uniform widths, filters ranked by L1 norm
                     (ours: metaprune.filter_prune)
  torch_pruning      Torch-Pruning's group-L1 pruning of the same full network, one ratio for every layer
                     (a peer library, optional: `pip install -e '.[bench]'`; skipped with a message if
                     absent); its steps are too coarse for the 2% window: the nearest point under the target
  random             a random configuration in the target's window
  evolution_kd       the evolution winner fine-tuned with distillation from the full network
  evolution_kd_int8  that, ONNX Runtime static INT8
Searched, uniform and random arms start from the PruningNet's generated weights (BN re-estimated),
the pruned arms from the trained full network's. The test split is used only for this table.
Latency: ONNX Runtime FP32 (INT8 for the last arm) at batch 1 and 32, fixed threads, every arm and
the full network alternating round by round; reported as the full network's time over the arm's.
Also `proxy_trust.py`: Kendall's tau of the proxy at several scoring budgets.

Run from the repository root; reruns resume (every stage keeps its checkpoint in the run dir):
    python benchmarks/bench_cifar.py --data ../shared/data/cifar10             # cpu preset, ~2 hours on 2 cores
    python benchmarks/bench_cifar.py --data ../shared/data/cifar10 --preset gpu
It writes benchmarks/results/cifar_<preset>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import peer_pruning  # noqa: E402
import proxy_trust  # noqa: E402
from bench_deploy import alternate, onnx_arm  # noqa: E402

import search_spaces as ss  # noqa: E402
from metaprune import deploy, filter_prune, teachers  # noqa: E402
from metaprune.config import RunConfig, load_config  # noqa: E402
from metaprune.io import atomic_write_json, atomic_write_text  # noqa: E402
from metaprune.latency import device_description, torch_threads  # noqa: E402
from metaprune.pipeline import Run  # noqa: E402
from metaprune.train import train  # noqa: E402
from nas.budget import resolve_flops  # noqa: E402

TARGETS = (0.5, 0.25)
WINDOW = 0.98  # every arm's FLOPs lie in [WINDOW * target, target] ...
# ... but Torch-Pruning's: one ratio for every layer moves all widths at once, in FLOPs steps of up to
# 4% of the network (ResNet-20), so it gets the nearest point under the target (48.6% and 22.1% there)
PEER_TOLERANCE = 0.25
ARMS = ("evolution", "nsga2", "uniform", "l1_filter", "torch_pruning", "random", "evolution_kd", "evolution_kd_int8")
PRESETS: dict[str, dict[str, Any]] = {
    # 130 min on a 2-core machine (shared with a test suite for half of it): ResNet-20, the cheapest
    # CIFAR network of the paper's kind (94 s per epoch of 50k images here; a MobileNetV2 even at half
    # width costs 2.7x as much); 20k training images, 8 epochs for the full network and the PruningNet,
    # 5 for every arm's fine-tune; 96 candidates per evolution search, scored on 256 + 768 images;
    # 12 configurations in the proxy study
    "cpu": {
        "families": ["resnet20"],
        "trust_configs": 12,
        "trust_epochs": 1,
        "settings": [
            "data.train_subset=25000", "base.epochs=8", "base.batch_size=128", "base.lr=0.1",
            "pruningnet.epochs=8", "pruningnet.batch_size=128", "score.calib_images=256", "score.calib_batch_size=128",
            "score.val_images=768", "search.population=16", "search.parents=4", "search.mutations=6", "search.crossovers=6",
            "search.generations=6", "finetune.epochs=5", "finetune.batch_size=128", "finetune.lr=0.05",
        ],
    },
    # paper-like schedules for a GPU: the whole training split, the paper's search (50 x 20)
    "gpu": {
        "families": ["mobilenet_v2", "resnet56"],
        "trust_configs": 24,
        "trust_epochs": 5,
        "settings": [
            "base.epochs=200", "base.batch_size=128", "base.lr=0.1", "pruningnet.epochs=120", "pruningnet.batch_size=128",
            "score.calib_images=1000", "score.calib_batch_size=100", "search.population=50", "search.parents=10",
            "search.mutations=25", "search.crossovers=25", "search.generations=20", "finetune.epochs=100",
            "finetune.batch_size=128", "finetune.lr=0.05",
        ],
    },
}  # fmt: skip
COMMON = ["data.kind=folder", "data.flip=true", "data.val_size=5000", "progress=true"]
BATCHES = (1, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 as class-per-folder JPEGs (train/, test/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="families and training budget")
    parser.add_argument("--families", default="", help="comma-separated families instead of the preset's")
    parser.add_argument("--run-dir", default=None, help="runs go to RUN_DIR/<family> (default runs/bench_cifar_<preset>)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads while timing")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; each times every arm once, in turn")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per arm and round (after a warm-up)")
    parser.add_argument("--trust-configs", type=int, default=0, help="configurations of the proxy study (0: the preset's)")
    parser.add_argument("--trust-epochs", type=int, default=0, help="their fine-tune epochs (0: the preset's)")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tune every arm with this many seeds; top-1 is their mean")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline setting")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/cifar_<preset>.json)")
    return parser.parse_args(argv)


# -- runs of one family ---------------------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    """One family's shared pieces: its settings, run directory and the timings kept across resumes."""

    cfg: RunConfig
    dir: Path

    @contextlib.contextmanager
    def run(self, **search: Any) -> Iterator[Run]:
        """A Run on the family's directory with these search settings; the directory lock is released after."""
        cfg = copy.deepcopy(self.cfg)
        cfg.search = dataclasses.replace(cfg.search, **search)
        run = Run(cfg, self.dir)
        try:
            yield run
        finally:
            run.close()

    def timed(self, key: str, action: Callable[[], Any]) -> Any:
        """Run `action`, adding its wall seconds to `key` in timings.json (a resumed stage adds only what it did)."""
        began = time.perf_counter()
        result = action()
        path = self.dir / "bench" / "timings.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - began
        atomic_write_json(path, timings)
        return result

    def seconds(self, key: str) -> float:
        path = self.dir / "bench" / "timings.json"
        return float(json.loads(path.read_text()).get(key, 0.0)) if path.exists() else 0.0


@dataclasses.dataclass
class Arm:
    model: torch.nn.Module | None  # before fine-tuning; None: skipped
    init: str  # generated (PruningNet) | full network
    prep_key: str  # the timings entry of what found it (search, pruning)
    config: ss.Config | None = None
    distill: bool = False
    note: str = ""


def finetune(bench: Bench, run: Run, key: str, arm: Arm, seed: int) -> torch.nn.Module:
    """The arm's fine-tune (`key`: target/arm), from a copy of its network: the run's settings for
    every arm, seeded with `seed`; distillation only where asked."""
    assert arm.model is not None
    model = copy.deepcopy(arm.model).to(run.device)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    meta = {
        "arm": key.split("/")[-1],
        "shapes": shapes,
        "config": list(arm.config or ()),
        "finetune": run.meta("finetune").get("finetune"),
    }
    meta["distill"] = teachers.identity(run) if arm.distill else None
    meta["init"] = arm.init
    if seed != run.cfg.seed:
        meta["seed"] = seed
    digest = hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    loss_fn = teachers.loss_for(run, teachers.direct_teachers(run)) if arm.distill else None
    data = run.prepared
    bench.timed(
        f"finetune/{key}" + (f"/seed{seed}" if seed != run.cfg.seed else ""),
        lambda: train(
            model, lambda x, step: model(x), data.train, data.normalizer, run.cfg.finetune, seed=seed,
            checkpoint=bench.dir / "bench" / "arms" / f"{key.replace('/', '-')}-{digest}.pt", flip=run.cfg.data.flip,
            device=run.device, desc=key, progress=run.cfg.progress, meta=meta, loss_fn=loss_fn,
        ),
    )  # fmt: skip
    return model.cpu().eval()


def searched(bench: Bench, searcher: str, low: float, high: float) -> list[Any]:
    """The candidates of one search in [low, high] FLOPs (fractions of the full network); resumes."""
    generations = bench.cfg.search.generations * (len(TARGETS) if searcher == "nsga2" else 1)
    with bench.run(searcher=searcher, min_flops=low, max_flops=high, generations=generations) as run:
        bench.timed(f"search/{searcher}-{high:g}", run.search)
        return run.candidates()[1]


def best_under(candidates: list[Any], high: float) -> Any:
    """The best proxy at most `high` FLOPs: the search's front point under the target."""
    return max((c for c in candidates if c.flops <= high), key=lambda c: (c.proxy_top1, -c.flops))


def arms_at(bench: Bench, run: Run, target: float, nsga: list[Any]) -> dict[str, Arm]:
    """Every arm's network at one FLOPs target, before fine-tuning."""
    space, full_flops = run.space, run.full.flops
    high = resolve_flops(target, full_flops)
    low = WINDOW * high
    scorer = run.scorer()
    full = teachers.base_model(run)
    evolution = best_under(searched(bench, "evolution", WINDOW * target, target), high).config
    # NSGA-II's front is spread over its whole window: where its point under the target lies below
    # the 2% window, random genes grow one step at a time into it (ss.repair), for equal FLOPs
    nsga2 = best_under(nsga, high).config
    nsga2 = ss.repair(space, nsga2, np.random.default_rng(run.cfg.seed), low, high)
    uniform = ss.uniform_within(space, high)
    random = ss.sample_within(space, np.random.default_rng(run.cfg.seed), low, high)
    found = {
        "evolution": Arm(scorer.subnet(evolution), "generated", f"search/evolution-{target:g}", evolution),
        "nsga2": Arm(scorer.subnet(nsga2), "generated", f"search/nsga2-{max(TARGETS):g}", nsga2),
        "uniform": Arm(scorer.subnet(uniform), "generated", "", uniform),
        "l1_filter": Arm(
            bench.timed(f"prune/l1_filter-{target:g}", lambda: filter_prune.prune(space, full, uniform)),
            "full network", f"prune/l1_filter-{target:g}", uniform,
        ),
        "random": Arm(scorer.subnet(random), "generated", "", random),
        "evolution_kd": Arm(scorer.subnet(evolution), "generated", f"search/evolution-{target:g}", evolution, distill=True),
    }  # fmt: skip
    missing = peer_pruning.available()
    example = torch.zeros(1, space.in_channels, space.resolution, space.resolution, device=run.device)
    key = f"prune/torch_pruning-{target:g}"
    found["torch_pruning"] = (
        Arm(None, "full network", "", note=missing)
        if missing
        else Arm(
            bench.timed(key, lambda: peer_pruning.group_l1_prune(full, example, high, PEER_TOLERANCE)[0]), "full network", key
        )
    )
    return found


# -- measuring ------------------------------------------------------------------------------------
def row(bench: Bench, run: Run, key: str, arm: Arm, models: list[torch.nn.Module]) -> dict[str, Any]:
    """One arm's figures; top-1 is the mean over its fine-tunes with different seeds."""
    example = torch.zeros(1, run.space.in_channels, run.space.resolution, run.space.resolution)
    flops = peer_pruning.flops_of(models[0], example)
    top1 = [run.test_top1(model.to(run.device)) for model in models]
    return {
        "top1": statistics.mean(top1),
        "top1_by_seed": top1,
        "flops": flops,
        "flops_ratio": flops / run.full.flops,
        "params": sum(p.numel() for p in models[0].parameters()),
        "init": arm.init,
        "distilled": arm.distill,
        "config": list(arm.config) if arm.config else None,
        "seconds": bench.seconds(arm.prep_key) + bench.seconds(f"finetune/{key}"),  # finding it and one fine-tune
    }


def latency_ratios(files: dict[str, Path], args: argparse.Namespace, shape: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Per arm: median ONNX Runtime ms at each batch size and the full network's time over it."""
    found: dict[str, dict[str, float]] = {name: {} for name in files}
    with torch_threads(args.threads):
        for batch in BATCHES:
            x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch)).numpy()
            times = alternate({name: onnx_arm(path, x, args.threads) for name, path in files.items()}, args.rounds, args.runs)
            medians = {name: statistics.median(t) for name, t in times.items()}
            for name, ms in medians.items():
                found[name] |= {f"batch_{batch}_ms": ms, f"batch_{batch}_speedup": medians["full"] / ms}
    return found


def family(args: argparse.Namespace, name: str, preset: dict[str, Any], root: Path) -> dict[str, Any]:
    """Every arm at every target, the proxy study, and the latency of each, for one family."""
    overrides = [
        *COMMON,
        f"data.path={args.data}",
        f"name=bench_cifar_{name}",
        f"space.family={name}",
        *preset["settings"],
        *args.set,
    ]
    bench = Bench(load_config(None, overrides), root / name)
    with bench.run() as run:
        base = bench.timed("train/base", run.train_base)
        bench.timed("train/pruningnet", run.train_pruningnet)
        trust = proxy_trust.proxy_trust(
            run, args.trust_configs or preset["trust_configs"], args.trust_epochs or preset["trust_epochs"], 1
        )
    nsga = searched(bench, "nsga2", 0.0, max(TARGETS))
    shape = (run.space.in_channels, run.space.resolution, run.space.resolution)
    onnx_dir = bench.dir / "bench" / "onnx"
    targets: dict[str, Any] = {}
    with bench.run() as run:
        full = teachers.base_model(run).cpu().eval()
        files = {"full": deploy.export_onnx(deploy.Deployable(full, run.prepared.normalizer), shape, onnx_dir / "full.onnx")}
        for target in TARGETS:
            rows: dict[str, Any] = {}
            for arm_name, arm in arms_at(bench, run, target, nsga).items():
                if arm.model is None:
                    rows[arm_name] = {"skipped": arm.note}
                    continue
                key = f"{target:g}/{arm_name}"
                models = [finetune(bench, run, key, arm, run.cfg.seed + s) for s in range(args.seeds)]
                model = models[0]
                rows[arm_name] = row(bench, run, key, arm, models)
                files[key] = deploy.export_onnx(
                    deploy.Deployable(model, run.prepared.normalizer), shape, onnx_dir / f"{key.replace('/', '-')}.onnx"
                )
            int8 = deploy.quantize_int8(
                files[f"{target:g}/evolution_kd"], onnx_dir / f"{target:g}-int8.onnx", run.prepared.train.images[:512]
            )
            files[f"{target:g}/evolution_kd_int8"] = int8
            kd = rows["evolution_kd"]
            int8_top1 = deploy.onnx_top1(int8, run.prepared.test.images, run.prepared.test.labels, 256, 0)
            rows["evolution_kd_int8"] = {  # the first seed's model, quantized
                **kd,
                "top1": int8_top1,
                "top1_by_seed": None,
                "int8_top1_drop": kd["top1_by_seed"][0] - int8_top1,
            }
            targets[f"{target:g}"] = rows
        latency = latency_ratios(files, args, shape)
    for target, rows in targets.items():
        for arm_name, values in rows.items():
            values |= latency.get(f"{target}/{arm_name}", {})
    return {
        "full": {"top1": base["top1"], "flops": run.full.flops, "params": run.full.params, **latency["full"]},
        "shared_seconds": {"base": bench.seconds("train/base"), "pruningnet": bench.seconds("train/pruningnet")},
        "targets": targets,
        "proxy_trust": trust,
        "aims": aims(targets, trust),
    }


def aims(targets: dict[str, Any], trust: dict[str, Any]) -> dict[str, Any]:
    """The issue's aims: MetaPruning (best of evolution, nsga2, evolution_kd) against uniform and Torch-Pruning."""
    found: dict[str, Any] = {"kendall_tau_at_least_0.5": trust["recommended"]["kendall_tau"] >= 0.5}
    for target, rows in targets.items():
        best = max(rows[a]["top1"] for a in ("evolution", "nsga2", "evolution_kd"))
        gain = best - rows["uniform"]["top1"]
        found[f"{target}_metaprune_minus_uniform"] = gain
        found[f"{target}_uniform_aim_met"] = gain >= (1.0 if float(target) <= 0.25 else 0.0)
        if "top1" in rows["torch_pruning"]:
            found[f"{target}_metaprune_minus_torch_pruning"] = best - rows["torch_pruning"]["top1"]
    return found


# -- reporting ------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# CIFAR-10 benchmark ({results['preset']} preset)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; latency in ONNX Runtime with {results['threads']} threads  ",
        f"Total wall time: {results['seconds'] / 60:.1f} min",
    ]
    for name, fam in results["families"].items():
        full = fam["full"]
        lines += [
            "",
            f"## {name}: full network {full['top1']:.2f}% test top-1, "
            f"{full['flops'] / 1e6:.1f} MFLOPs, {full['params'] / 1e3:.0f}k params",
            "",
            "| target | arm | top-1 (%) | MFLOPs (of full) | params (k) | latency b1 / b32 vs full | wall (min) |",
            "|---|---|---|---|---|---|---|",
        ]
        for target, rows in fam["targets"].items():
            for arm in ARMS:
                values = rows[arm]
                if "skipped" in values:
                    lines.append(f"| {float(target):.0%} | {arm} | skipped: {values['skipped']} | | | | |")
                    continue
                speed = f"{values.get('batch_1_speedup', 0):.2f}x / {values.get('batch_32_speedup', 0):.2f}x"
                lines.append(
                    f"| {float(target):.0%} | {arm} | {values['top1']:.2f} | {values['flops'] / 1e6:.2f} "
                    f"({values['flops_ratio']:.1%}) | {values['params'] / 1e3:.0f} | {speed} | {values['seconds'] / 60:.1f} |"
                )
        trust, shared = fam["proxy_trust"], fam["shared_seconds"]
        lines += [
            "",
            f"Shared costs: full network {shared['base'] / 60:.1f} min, PruningNet {shared['pruningnet'] / 60:.1f} min.",
            "",
            f"Proxy trust: {len(trust['configs'])} random configurations over the FLOPs range, {trust['finetune_epochs']} "
            f"fine-tune epoch(s) each; Kendall tau of FLOPs alone {trust['kendall_tau_flops']:.3f}.",
            "",
            "| BN images | validation images | Kendall tau | s per candidate | 1,000 candidates (min) |",
            "|---|---|---|---|---|",
        ]
        for b in trust["budgets"]:
            lines.append(
                f"| {b['calib_images']} | {b['val_images']} | {b['kendall_tau']:.3f} | {b['seconds_per_candidate']:.2f} "
                f"| {b['seconds_per_candidate'] * 1000 / 60:.1f} |"
            )
        rec = trust["recommended"]
        lines += ["", f"Recommended ({trust['rule']}): {rec['calib_images']} + {rec['val_images']} images.", ""]
        lines += [
            "Aims: " + ", ".join(f"{k} = {v:.2f}" if isinstance(v, float) else f"{k} = {v}" for k, v in fam["aims"].items())
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Test top-1 against FLOPs for every arm (and the full network), one panel per family; the proxy study beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = results["families"]
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 4.5 * len(families)), dpi=100, squeeze=False)
    markers = dict(zip(ARMS, "o^sDvxP*"))
    for (left, right), (name, fam) in zip(axes, families.items()):
        for i, arm in enumerate(ARMS):
            points = [(r[arm]["flops"] / 1e6, r[arm]["top1"]) for r in fam["targets"].values() if "top1" in r[arm]]
            if points:
                left.scatter(*zip(*points), marker=markers[arm], color=f"C{i}", s=45, label=arm)
        left.scatter([fam["full"]["flops"] / 1e6], [fam["full"]["top1"]], marker="o", color="k", s=60, label="full network")
        left.set(
            xlabel="MFLOPs", ylabel="test top-1 (%)", title=f"{name}: arms at {', '.join(f'{t:.0%}' for t in TARGETS)} FLOPs"
        )
        left.grid(alpha=0.3)
        left.legend(fontsize=7)
        trust = fam["proxy_trust"]
        for i, b in enumerate(trust["budgets"]):
            right.scatter(b["proxy_top1"], trust["finetuned_val_top1"], s=18, color=f"C{i}",
                          label=f"{b['calib_images']}+{b['val_images']} images: tau {b['kendall_tau']:.2f}")  # fmt: skip
        right.set(xlabel="proxy top-1 (%)", ylabel=f"top-1 after {trust['finetune_epochs']} fine-tune epoch(s) (%)",
                  title=f"proxy vs fine-tuned ({len(trust['configs'])} configurations)")  # fmt: skip
        right.grid(alpha=0.3)
        right.legend(fontsize=7)
    fig.suptitle(f"{results['command']}\n{results['machine']}", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    folder = not any(item.startswith("data.kind=") and item != "data.kind=folder" for item in args.set)
    if folder and not (Path(args.data) / "train").is_dir():
        print(f"error: --data {args.data} has no train/ folder; pass the CIFAR-10 folder", file=sys.stderr)
        return 2
    missing = peer_pruning.available()
    if missing:
        print(f"note: the torch_pruning arm is skipped: {missing}", file=sys.stderr)
    root = Path(args.run_dir or ROOT / "runs" / f"bench_cifar_{args.preset}")
    families = [f for f in args.families.split(",") if f] or preset["families"]
    began = time.perf_counter()
    found = {name: family(args, name, preset, root) for name in families}
    results = {
        "benchmark": "cifar10",
        "preset": args.preset,
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": device_description("cpu"),
        "platform": platform.platform(),
        "threads": args.threads,
        "settings": [*COMMON, *preset["settings"], *args.set],
        "targets": list(TARGETS),
        "window": WINDOW,
        "families": found,
        "seeds": args.seeds,
        "seconds": time.perf_counter() - began,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"cifar_{args.preset}.json")
    atomic_write_json(out, results)
    atomic_write_text(out.with_suffix(".md"), markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
