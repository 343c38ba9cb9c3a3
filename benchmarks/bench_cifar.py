"""CIFAR-10 benchmark: does a PruningNet warm-started from the trained network find better networks
than the simple ways to shrink that network?

The trained full network (`--base shared`, the default: the user's ResNet-20,
../shared/models/resnet20_cifar10.metaprune.pt, passed as `base.weights` with its input normalisation
as data.mean/std; `--base train`: trained here by train-base, as the gpu preset's families need) is
the start of every arm. Arms at each FLOPs target (50% and 25% of the full network), FLOPs in the
target's window ([98%, 100%] of the target; widened, e.g. to 90%, where the channel grid
(space.channel_multiple=8) cannot reach it: the window used is recorded, the same for every arm of
a target):
  warm_evolution       PruningNet warm-started from the trained network (pruningnet.init=trained) +
                       the paper's evolutionary search; the winner fine-tuned from its generated weights
  warm_nsga2           the same PruningNet, NSGA-II (accuracy/FLOPs) over [0, the largest target]: its best
                       point in the target's window; a point repaired into the window after the search is
                       scored by the proxy again, and that score is reported
  eagleeye             pruningnet.init=trained with pruningnet.epochs=0 (EagleEye: L1-inherited weights
                       scored with adaptive BN) + evolution
  cold_evolution       PruningNet from scratch (pruningnet.init=scratch: the paper's MetaPruning) + evolution
  l1_filter            the trained network L1-pruned to the uniform widths (metaprune.filter_prune.prune)
  torch_pruning        Torch-Pruning's group-L1 pruning of the trained network, one ratio for every layer
                       (a peer library, optional: `pip install -e '.[bench]'`; skipped with a message if
                       absent); its steps are too coarse for the window: the nearest point under the target
  random               3 random configurations in the window, each fine-tuned from the warm PruningNet's
                       generated weights: their mean and spread
  warm_evolution_int8  warm_evolution fine-tuned, then ONNX Runtime static INT8 (one per seed)
The full network's row also has `full_finetuned`: the trained network given the same fine-tune, so
that "pruned beats full" cannot be an artefact of the extra schedule. A latency-target row: the
warm NSGA-II front's best-scoring network whose ORT latency at batch 32 is at most Torch-Pruning's
50% network's (l1_filter's where Torch-Pruning is absent), fine-tuned the same way, against it.

Fairness: every fine-tune (every arm, full_finetuned, the latency row, the proxy study's) has the
same epochs, schedule and seeds (`--seeds`, default 3: the mean and population stdev are reported)
and is distilled from the trained full network. Warm, cold and EagleEye PruningNets are separate
run directories (RUN_DIR/<family>-warm, -cold, -eagleeye) with otherwise equal settings; the
searches score at the preset's score.calib_images / score.val_images (the table states them).
Latency: ONNX Runtime FP32 and INT8 at batch 1 and 32, fixed threads, every network alternating
round by round: the median, the IQR and the range of the round medians, and the full network's
FP32 time over it. The test split is never used to choose anything: it gives the table's top-1 and
the proxy study's truth. Note that the shared network was trained on all 50k training images, so
the validation images the proxy scores on (carved from them) were seen by the network it starts from.
Also `proxy_trust.py`: Kendall's tau of the warm and the cold proxy at several scoring budgets
against top-1 after the benchmark's full fine-tune of each of >= 12 configurations.
An aims block reports each aim met or not, with its numbers.

Run from the repository root; reruns resume (every stage keeps its checkpoint in the run dirs):
    python benchmarks/bench_cifar.py --data ../shared/data/cifar10                 # cpu preset, ~2.5 hours on 2 cores
    python benchmarks/bench_cifar.py --data ../shared/data/cifar10 --preset gpu    # ResNet-56, MobileNetV2; --base train
    python benchmarks/bench_cifar.py --base train                                  # train the full network here instead
It writes benchmarks/results/cifar_<preset>.{json,md,png}. The `smoke` preset (synthetic data, tiny
budgets) only checks that the benchmark runs: tests/test_bench_cifar.py.
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
import tempfile
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
from metaprune import deploy, filter_prune, teachers, trained  # noqa: E402
from metaprune.config import RunConfig, load_config  # noqa: E402
from metaprune.errors import UserError  # noqa: E402
from metaprune.identity import distill_identity  # noqa: E402
from metaprune.io import atomic_torch_save, atomic_write_json, atomic_write_text  # noqa: E402
from metaprune.latency import device_description, torch_threads  # noqa: E402
from metaprune.pipeline import PRUNINGNET, RECORD, Run  # noqa: E402
from metaprune.score import Scorer  # noqa: E402
from metaprune.train import Loss, load_trained_weights, train  # noqa: E402
from nas.budget import resolve_flops  # noqa: E402
from nas.study import Candidate, pareto_front  # noqa: E402
from search_spaces.user import load_model  # noqa: E402

TARGETS = (0.5, 0.25)
WINDOW = 0.98  # every arm's FLOPs lie in [WINDOW * target, target] ...
FLOORS = (WINDOW, 0.95, 0.9, 0.85, 0.8)  # ... or the first of these the channel grid reaches
# ... but Torch-Pruning's: one ratio for every layer moves all widths at once, in FLOPs steps of up to
# 4% of the network (ResNet-20), so it gets the nearest point under the target (48.6% and 22.1% there)
PEER_TOLERANCE = 0.25
RANDOM_DRAWS = 3
ARMS = (
    "warm_evolution", "warm_nsga2", "eagleeye", "cold_evolution", "l1_filter", "torch_pruning", "random",
    "warm_evolution_int8",
)  # fmt: skip
# the PruningNets: separate run directories, equal settings but these
KINDS: dict[str, list[str]] = {
    "warm": ["pruningnet.init=trained"],
    "cold": ["pruningnet.init=scratch"],
    "eagleeye": ["pruningnet.init=trained", "pruningnet.epochs=0"],
}
SHARED_WEIGHTS = ROOT.parent / "shared" / "models" / "resnet20_cifar10.metaprune.pt"
SHARED_NORM = ["data.mean=[0.4914, 0.4822, 0.4465]", "data.std=[0.2470, 0.2435, 0.2616]"]  # what it was trained with
PRESETS: dict[str, dict[str, Any]] = {
    # about 2.5 hours on a 2-core machine shared with a test suite (estimated from the previous cpu
    # run's per-epoch and per-candidate times; not yet measured end to end). ResNet-20 only, the
    # shared trained network (so no full-network training). Cut from the paper's budget: 10k training
    # images (data.train_subset=15000 less the 5k validation carve-out), 4 PruningNet epochs (paper
    # 120 at 50k), 3 fine-tune epochs (paper 100), 48 candidates per evolution search (paper 1,000),
    # 96 for NSGA-II; 12 configurations in the proxy study. Searches score at the product's defaults
    # (1,000 BN images + 3,072 validation images). 3 seeds x (9 fine-tunes per target + full + the
    # latency row) + 24 proxy-study fine-tunes = 84 fine-tunes of 3 epochs: most of the time.
    "cpu": {
        "families": ["resnet20"],
        "base": "shared",
        "trust_configs": 12,
        "settings": [
            "data.train_subset=15000", "base.epochs=8", "base.batch_size=128", "base.lr=0.1",
            "pruningnet.epochs=4", "pruningnet.batch_size=128", "search.population=12", "search.parents=4",
            "search.mutations=4", "search.crossovers=4", "search.generations=4", "finetune.epochs=3",
            "finetune.batch_size=128", "finetune.lr=0.05",
        ],
    },
    # paper-like schedules for a GPU: the whole training split, the paper's search (50 x 20); no shared
    # trained network exists for these families, so the full network is trained here (200 epochs)
    "gpu": {
        "families": ["mobilenet_v2", "resnet56"],
        "base": "train",
        "trust_configs": 24,
        "settings": [
            "base.epochs=200", "base.batch_size=128", "base.lr=0.1", "pruningnet.epochs=120", "pruningnet.batch_size=128",
            "search.population=50", "search.parents=10", "search.mutations=25", "search.crossovers=25",
            "search.generations=20", "finetune.epochs=100", "finetune.batch_size=128", "finetune.lr=0.05",
        ],
    },
    # synthetic 16x16 images and minimal budgets: does the benchmark run at all (tests/test_bench_cifar.py);
    # a half-width ResNet-20 on a grid of 4 channels (8 cannot reach 25% at half width)
    "smoke": {
        "families": ["resnet20"],
        "base": "shared",
        "trust_configs": 4,
        "settings": [
            "data.kind=synthetic", "data.val_size=64", "data.train_subset=192", "data.flip=false", "space.width_mult=0.5",
            "space.channel_multiple=4", "threads=1", "progress=false", "base.epochs=1", "base.batch_size=32",
            "pruningnet.epochs=1", "pruningnet.batch_size=32", "score.calib_images=64", "score.calib_batch_size=32",
            "score.val_images=32", "search.population=4", "search.parents=2", "search.mutations=1",
            "search.crossovers=1", "search.generations=1", "finetune.epochs=1", "finetune.batch_size=32",
            "finetune.lr=0.01",
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
    parser.add_argument(
        "--base", choices=("shared", "train"), default=None,
        help="the trained full network: the shared file (base.weights) or train-base here (default: the preset's)",
    )  # fmt: skip
    parser.add_argument("--base-weights", default=str(SHARED_WEIGHTS), help="the state dict --base shared uses")
    parser.add_argument("--run-dir", default=None, help="runs go to RUN_DIR/<family>-<kind> (default runs/bench_cifar_<preset>)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads while timing")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; each times every network once, in turn")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per network and round (after a warm-up)")
    parser.add_argument("--trust-configs", type=int, default=0, help="configurations of the proxy study (0: the preset's)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tune every arm with this many seeds; top-1 is their mean")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline setting")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/cifar_<preset>.json)")
    return parser.parse_args(argv)


# -- runs of one family ---------------------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    """One family's shared pieces: the settings of each PruningNet's run, the benchmark's own
    directory (RUN_DIR/<family>: timings, fine-tunes, ONNX files) and the timings kept across resumes."""

    cfgs: dict[str, RunConfig]  # per kind (warm, cold, eagleeye)
    root: Path
    name: str
    _loss: Loss | None = None

    @property
    def dir(self) -> Path:
        return self.root / self.name

    def run_dir(self, kind: str) -> Path:
        return self.root / f"{self.name}-{kind}"

    @contextlib.contextmanager
    def run(self, kind: str = "warm", **search: Any) -> Iterator[Run]:
        """A Run on the kind's directory with these search settings; the directory lock is released after."""
        cfg = copy.deepcopy(self.cfgs[kind])
        cfg.search = dataclasses.replace(cfg.search, **search)
        run = Run(cfg, self.run_dir(kind))
        try:
            yield run
        finally:
            run.close()

    def timed(self, key: str, action: Callable[[], Any]) -> Any:
        """Run `action`, adding its wall seconds to `key` in timings.json (a resumed stage adds only what it did)."""
        began = time.perf_counter()
        result = action()
        path = self.dir / "timings.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - began
        atomic_write_json(path, timings)
        return result

    def seconds(self, key: str) -> float:
        path = self.dir / "timings.json"
        return float(json.loads(path.read_text()).get(key, 0.0)) if path.exists() else 0.0

    def teacher_loss(self, run: Run) -> Loss | None:
        """The distillation loss from the trained full network (None with distillation off), built once."""
        if self._loss is None and run.cfg.distill.enabled:
            self._loss = teachers.loss_for(run, teachers.direct_teachers(run))
        return self._loss


@dataclasses.dataclass
class Arm:
    model: torch.nn.Module | None  # before fine-tuning; None: skipped
    init: str  # where its weights come from, in words
    source: str  # identity of that source (a PruningNet's settings, the trained network's digest)
    prep_key: str  # the timings entry of what found it (search, pruning)
    config: ss.Config | None = None
    proxy: dict[str, Any] | None = None  # its proxy score(s), where a PruningNet scored it
    note: str = ""


def digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def finetune(bench: Bench, run: Run, key: str, arm: Arm, seed: int) -> torch.nn.Module:
    """The arm's fine-tune (`key`: target/arm), from a copy of its network: the run's settings and the
    distillation from the trained network for every arm, seeded with `seed`; resumable."""
    assert arm.model is not None
    model = copy.deepcopy(arm.model).to(run.device)
    model.requires_grad_(True)
    meta = {
        "arm": key,
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "config": list(arm.config or ()),
        "finetune": run.meta("finetune").get("finetune"),
        "distill": distill_identity(run),
        "init": arm.init,
        "source": arm.source,
        "seed": seed,
    }
    data = run.prepared
    bench.timed(
        f"finetune/{key}/seed{seed}",
        lambda: train(
            model, lambda x, step: model(x), data.train, data.normalizer, run.cfg.finetune, seed=seed,
            checkpoint=bench.dir / "arms" / f"{key.replace('/', '-')}-{digest(meta)}.pt", flip=run.cfg.data.flip,
            device=run.device, desc=key, progress=run.cfg.progress, meta=meta, loss_fn=bench.teacher_loss(run),
        ),
    )  # fmt: skip
    return model.cpu().eval()


def seeds(run: Run, count: int) -> list[int]:
    return [run.cfg.seed + s for s in range(count)]


def searched(bench: Bench, kind: str, searcher: str, low: float, high: float) -> list[Candidate]:
    """The candidates of one search of `kind`'s PruningNet in [low, high] FLOPs (fractions); resumes."""
    generations = bench.cfgs[kind].search.generations * (len(TARGETS) if searcher == "nsga2" else 1)
    with bench.run(kind, searcher=searcher, min_flops=low, max_flops=high, generations=generations) as run:
        # a finished search's candidates are kept in the bench dir, under what they depend on: a
        # rerun reads them back instead of reopening the study
        path = bench.dir / "searches" / f"{digest({'search': run.search_settings(), 'score': run.meta(RECORD)})}.json"
        if path.exists():
            return [Candidate(**{**c, "config": tuple(c["config"])}) for c in json.loads(path.read_text())]
        bench.timed(f"search/{kind}-{searcher}-{high:g}", run.search)
        found = run.candidates()[1]
        atomic_write_json(path, [c.to_json() for c in found])
        return found


def best_in(candidates: list[Candidate], low: float, high: float) -> Candidate | None:
    """The best proxy with FLOPs in [low, high] (fewer FLOPs break ties), None if there is none."""
    inside = [c for c in candidates if low <= c.flops <= high]
    return max(inside, key=lambda c: (c.proxy_top1, -c.flops)) if inside else None


def draw_within(space: ss.SearchSpace, rng: np.random.Generator, low: float, high: float) -> ss.Config:
    """A random configuration with FLOPs in [low, high] (ss.sample_within can end just below a narrow window)."""
    for _ in range(200):
        config = ss.sample_within(space, rng, low, high)
        if low <= ss.flops(space, config) <= high:
            return config
    raise UserError(f"no random configuration of {space.name!r} reached the FLOPs window [{low:,.0f}, {high:,.0f}]")


def into_window(space: ss.SearchSpace, config: ss.Config, rng: np.random.Generator, low: float, high: float) -> ss.Config:
    """`config` repaired into [low, high] FLOPs: genes stepped one at a time (ss.repair), tried again
    with other random steps where a repair ends just below the window."""
    for _ in range(50):
        repaired = ss.repair(space, config, rng, low, high)
        if low <= ss.flops(space, repaired) <= high:
            return repaired
    raise UserError(f"cannot repair {list(config)} into the FLOPs window [{low:,.0f}, {high:,.0f}]")


def window_floor(space: ss.SearchSpace, target: float, seed: int) -> float:
    """The narrowest window [floor * target, target] of FLOORS that the channel grid reaches: the
    uniform widths land in it, and most random draws into it do."""
    full = ss.flops(space, space.largest)
    high = target * full
    for floor in FLOORS:
        low = floor * high
        try:
            uniform = ss.flops(space, ss.uniform_within(space, high))
        except ValueError:
            break
        rng = np.random.default_rng(seed)
        hits = sum(low <= ss.flops(space, ss.sample_within(space, rng, low, high)) <= high for _ in range(32))
        if uniform >= low and hits >= 24:
            return floor
    raise UserError(
        f"the channel grid of {space.name!r} reaches no FLOPs window down to {FLOORS[-1]:.0%} of the {target:.0%} target; "
        "lower space.channel_multiple"
    )


@dataclasses.dataclass
class Family:
    """What every target's arms are made from."""

    bench: Bench
    run: Run  # the warm run: data, device, settings of every fine-tune
    scorers: dict[str, Scorer]
    sources: dict[str, str]  # identity of each PruningNet
    candidates: dict[str, list[Candidate]]  # search key -> candidates
    full: torch.nn.Module  # the trained network, frozen
    floors: dict[str, float]  # per target


def generated(fam: Family, kind: str, config: ss.Config, prep_key: str, proxy: dict[str, Any] | None) -> Arm:
    words = {"warm": "warm PruningNet (generated)", "cold": "cold PruningNet (generated)", "eagleeye": "EagleEye (L1 crop)"}
    return Arm(fam.scorers[kind].subnet(config), words[kind], fam.sources[kind], prep_key, config, proxy)


def peer_pruned(
    bench: Bench, identity: str, key: str, full: torch.nn.Module, example: torch.Tensor, high: float
) -> torch.nn.Module:
    """Torch-Pruning's network under `high` FLOPs, kept (pickled) in the bench dir: its bisection is slow."""
    path = bench.dir / "peer" / f"{digest([identity, high, PEER_TOLERANCE, list(example.shape)])}.pt"
    if path.exists():
        model: torch.nn.Module = torch.load(path, weights_only=False)  # written by this benchmark
        return model.to(example.device).eval()
    model = bench.timed(key, lambda: peer_pruning.group_l1_prune(full, example, high, PEER_TOLERANCE)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(path, model)
    return model


def users_module(run: Run, full: torch.nn.Module) -> torch.nn.Module:
    """The trained network as the plain module a user has (the family's own builder, not the traced
    graph: Torch-Pruning is given what its users give it, and a pruned fx graph does not pickle)."""
    recipe = run.space.recipe
    model = load_model(recipe["model"], recipe["num_classes"], recipe.get("kwargs"))
    model.load_state_dict(full.state_dict())
    return model.to(next(full.parameters()).device).eval()


def arms_at(fam: Family, target: float) -> dict[str, Arm | list[Arm]]:
    """Every arm's network at one FLOPs target, before fine-tuning (random: one per draw)."""
    run, bench = fam.run, fam.bench
    space, full_flops = run.space, run.full.flops
    high = resolve_flops(target, full_flops)
    low = fam.floors[f"{target:g}"] * high
    found: dict[str, Arm | list[Arm]] = {}
    for arm, kind in (("warm_evolution", "warm"), ("eagleeye", "eagleeye"), ("cold_evolution", "cold")):
        best = best_in(fam.candidates[f"{kind}-evolution-{target:g}"], low, high)
        assert best is not None, f"{kind} evolution found nothing in [{low:,.0f}, {high:,.0f}]"
        found[arm] = generated(fam, kind, best.config, f"search/{kind}-evolution-{target:g}", {"proxy_top1": best.proxy_top1})
    # NSGA-II's front is spread over its whole window: its best point in the target's window, or
    # (none there) its best point under the target, grown a gene at a time into the window
    # (ss.repair) and scored by the proxy again: the search never scored that configuration
    nsga = fam.candidates[f"warm-nsga2-{max(TARGETS):g}"]
    best = best_in(nsga, low, high)
    if best is not None:
        proxy: dict[str, Any] = {"proxy_top1": best.proxy_top1, "repaired": False}
        config = best.config
    else:
        under = best_in(nsga, 0, high)
        assert under is not None
        config = into_window(space, under.config, np.random.default_rng(run.cfg.seed), low, high)
        rescored = fam.scorers["warm"](config)
        proxy = {"proxy_top1": rescored, "repaired": True, "proxy_top1_before_repair": under.proxy_top1,
                 "config_before_repair": list(under.config)}  # fmt: skip
    found["warm_nsga2"] = generated(fam, "warm", config, f"search/warm-nsga2-{max(TARGETS):g}", proxy)
    uniform = ss.uniform_within(space, high)
    identity = trained.identity(run)
    found["l1_filter"] = Arm(
        bench.timed(f"prune/l1_filter-{target:g}", lambda: filter_prune.prune(space, fam.full, uniform)),
        "trained network (L1)", identity, f"prune/l1_filter-{target:g}", uniform,
    )  # fmt: skip
    missing = peer_pruning.available()
    example = torch.zeros(1, space.in_channels, space.resolution, space.resolution, device=run.device)
    key = f"prune/torch_pruning-{target:g}"
    found["torch_pruning"] = (
        Arm(None, "trained network (group L1)", identity, "", note=missing)
        if missing
        else Arm(
            peer_pruned(bench, identity, key, users_module(run, fam.full), example, high),
            "trained network (group L1)",
            identity,
            key,
        )
    )
    rng = np.random.default_rng(run.cfg.seed)
    draws = [draw_within(space, rng, low, high) for _ in range(RANDOM_DRAWS)]
    found["random"] = [generated(fam, "warm", c, "", {"proxy_top1": fam.scorers["warm"](c)}) for c in draws]
    return found


# -- measuring ------------------------------------------------------------------------------------
def spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def row(bench: Bench, run: Run, key: str, arm: Arm, models: list[torch.nn.Module]) -> dict[str, Any]:
    """One arm's figures; top-1 is the mean over its fine-tunes with different seeds."""
    example = torch.zeros(1, run.space.in_channels, run.space.resolution, run.space.resolution)
    flops = peer_pruning.flops_of(models[0], example)
    top1 = [run.test_top1(model.to(run.device)) for model in models]
    found = {
        "top1": statistics.mean(top1),
        "top1_std": spread(top1),
        "top1_by_seed": top1,
        "flops": flops,
        "flops_ratio": flops / run.full.flops,
        "params": sum(p.numel() for p in models[0].parameters()),
        "init": arm.init,
        "distilled": run.cfg.distill.enabled,
        "config": list(arm.config) if arm.config else None,
        # finding it and one fine-tune
        "seconds": bench.seconds(arm.prep_key) + bench.seconds(f"finetune/{key}/seed{run.cfg.seed}"),
    }
    return found | (arm.proxy or {})


def tuned(bench: Bench, run: Run, key: str, arm: Arm, count: int) -> tuple[dict[str, Any], list[torch.nn.Module]]:
    models = [finetune(bench, run, key, arm, seed) for seed in seeds(run, count)]
    return row(bench, run, key, arm, models), models


def random_row(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """The random arm: the mean over draws (each the mean over seeds), and the spread between draws."""
    means = [d["top1"] for d in draws]
    return {
        "top1": statistics.mean(means),
        "top1_std": spread(means),  # between draws
        "top1_min": min(means),
        "top1_max": max(means),
        "seed_std": statistics.mean(d["top1_std"] for d in draws),  # within a draw, over seeds
        "top1_by_seed": [statistics.mean(d["top1_by_seed"][i] for d in draws) for i in range(len(draws[0]["top1_by_seed"]))],
        "flops": round(statistics.mean(d["flops"] for d in draws)),
        "flops_ratio": statistics.mean(d["flops_ratio"] for d in draws),
        "params": round(statistics.mean(d["params"] for d in draws)),
        "init": draws[0]["init"],
        "distilled": draws[0]["distilled"],
        "config": None,
        "seconds": statistics.mean(d["seconds"] for d in draws),
        "draws": draws,
    }


def quantized(run: Run, fp32: Path) -> Path:
    """ONNX Runtime static INT8 of an FP32 file, calibrated on 512 training images (kept beside it)."""
    out = fp32.with_name(f"{fp32.stem}-int8.onnx")
    return out if out.exists() else deploy.quantize_int8(fp32, out, run.prepared.train.images[:512])


def int8_row(run: Run, fp32: dict[str, Any], files: list[Path]) -> tuple[dict[str, Any], Path]:
    """INT8 (ONNX Runtime static QDQ) of each seed's fine-tuned network: top-1 per seed and the drop."""
    data, top1 = run.prepared, []
    first = None
    for path in files:
        int8 = quantized(run, path)
        first = first or int8
        top1.append(deploy.onnx_top1(int8, data.test.images, data.test.labels, 256, 0))
    assert first is not None
    drop = [a - b for a, b in zip(fp32["top1_by_seed"], top1)]
    found = {**fp32, "top1": statistics.mean(top1), "top1_std": spread(top1), "top1_by_seed": top1}
    return found | {"int8_top1_drop": statistics.mean(drop), "int8_top1_drop_by_seed": drop}, first


def export(run: Run, model: torch.nn.Module, path: Path) -> Path:
    """`model` with the run's normalisation as ONNX at `path`, named by a digest of its weights (a
    rerun finds the file it wrote)."""
    norm = run.prepared.normalizer
    state = hashlib.sha1(f"{norm.mean} {norm.std}".encode())
    for name, value in model.state_dict().items():
        state.update(name.encode() + value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    path = path.with_name(f"{path.stem}-{state.hexdigest()[:12]}.onnx")
    if path.exists():
        return path
    shape = (run.space.in_channels, run.space.resolution, run.space.resolution)
    cpu_copy = copy.deepcopy(model).cpu().eval()  # the arm's model stays on its device
    return deploy.export_onnx(deploy.Deployable(cpu_copy, run.prepared.normalizer), shape, path)


def timings(times: list[float], rounds: int) -> dict[str, Any]:
    """Median ms of all timed calls, their IQR, and the range of the round medians."""
    per = max(1, len(times) // rounds)
    medians = [statistics.median(times[i : i + per]) for i in range(0, len(times), per)]
    q1, q3 = np.percentile(times, [25, 75])
    return {"ms": statistics.median(times), "iqr_ms": [float(q1), float(q3)], "round_ms": [min(medians), max(medians)]}


def latency_ratios(files: dict[str, Path], args: argparse.Namespace, shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per network: ONNX Runtime ms at each batch size (median, IQR, round range), alternating round by
    round, and the full network's FP32 time over it."""
    found: dict[str, dict[str, Any]] = {name: {} for name in files}
    with torch_threads(args.threads):
        for batch in BATCHES:
            x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch)).numpy()
            times = alternate({name: onnx_arm(path, x, args.threads) for name, path in files.items()}, args.rounds, args.runs)
            stats = {name: timings(t, args.rounds) for name, t in times.items()}
            for name, s in stats.items():
                found[name] |= {
                    f"batch_{batch}_ms": s["ms"],
                    f"batch_{batch}_iqr_ms": s["iqr_ms"],
                    f"batch_{batch}_round_ms": s["round_ms"],
                    f"batch_{batch}_speedup": stats["full"]["ms"] / s["ms"],
                }
    return found


def latency_pick(bench: Bench, run: Run, reference: torch.nn.Module, front: list[Candidate], args: argparse.Namespace) -> dict:
    """The best-scoring point of `front` whose ORT FP32 latency at batch 32 is at most `reference`'s,
    measured alternating with it (the fastest measured where none is); kept in the bench dir, so that
    a rerun fine-tunes the same network."""
    ordered = sorted(front, key=lambda c: (-c.proxy_top1, c.flops))[:12]
    identity = {
        "reference": {k: list(v.shape) for k, v in reference.state_dict().items()},
        "front": [list(c.config) for c in ordered],
    }
    path = bench.dir / f"latency_pick-{digest(identity)}.json"
    if path.exists():
        return json.loads(path.read_text())
    shape = (run.space.in_channels, run.space.resolution, run.space.resolution)
    x = torch.rand(32, *shape, generator=torch.Generator().manual_seed(32)).numpy()
    measured: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, torch_threads(args.threads):
        ref = onnx_arm(export(run, copy.deepcopy(reference), Path(tmp) / "reference.onnx"), x, args.threads)
        for i, candidate in enumerate(ordered):
            net = export(run, ss.build_subnet(run.space, candidate.config), Path(tmp) / f"{i}.onnx")
            times = alternate({"reference": ref, "candidate": onnx_arm(net, x, args.threads)}, args.rounds, args.runs)
            ms = {name: statistics.median(t) for name, t in times.items()}
            measured.append({"config": list(candidate.config), "proxy_top1": candidate.proxy_top1, "flops": candidate.flops,
                             "ms": ms["candidate"], "reference_ms": ms["reference"]})  # fmt: skip
            if ms["candidate"] <= ms["reference"]:
                break
    chosen = next((m for m in measured if m["ms"] <= m["reference_ms"]), min(measured, key=lambda m: m["ms"] / m["reference_ms"]))
    found = {"chosen": chosen, "met": chosen["ms"] <= chosen["reference_ms"], "measured": measured}
    atomic_write_json(path, found)
    return found


def prepare(args: argparse.Namespace, name: str, preset: dict[str, Any], root: Path) -> Bench:
    """The family's settings for each kind of PruningNet: the trained network is the shared file, or
    one trained here (RUN_DIR/<family>-base) and passed on as base.weights."""
    overrides = [*COMMON, f"data.path={args.data}", f"name=bench_cifar_{name}", f"space.family={name}", *preset["settings"]]
    if (args.base or preset["base"]) == "shared":
        base = [f"base.weights={Path(args.base_weights).resolve()}", *SHARED_NORM]
    else:
        cfg = load_config(None, [*overrides, *args.set, "pruningnet.init=scratch", "base.weights=''"])
        run = Run(cfg, root / f"{name}-base")
        try:
            Bench({}, root, name).timed("train/base", run.train_base)
        finally:
            run.close()
        weights = root / f"{name}-base" / "weights.pt"  # the finished train-base's state dict
        if not weights.exists():
            atomic_torch_save(weights, load_trained_weights(root / f"{name}-base" / "base.pt"))
        base = [f"base.weights={weights.resolve()}"]
    cfgs = {kind: load_config(None, [*overrides, *base, *args.set, *extra]) for kind, extra in KINDS.items()}
    return Bench(cfgs, root, name)


def family(args: argparse.Namespace, name: str, preset: dict[str, Any], root: Path) -> dict[str, Any]:
    """Every arm at every target, the full network's rows, the latency row, the proxy study, and the
    latency of each, for one family."""
    bench = prepare(args, name, preset, root)
    scorers, sources = {}, {}
    for kind in KINDS:
        with bench.run(kind) as run:
            if kind == "warm":
                base = run.train_base()  # with base.weights: measures the trained network
            bench.timed(f"train/pruningnet-{kind}", run.train_pruningnet)
            scorers[kind], sources[kind] = run.scorer(), digest(run.meta(PRUNINGNET))
    space = run.space
    floors = {f"{t:g}": window_floor(space, t, run.cfg.seed) for t in TARGETS}
    candidates = {f"warm-nsga2-{max(TARGETS):g}": searched(bench, "warm", "nsga2", 0.0, max(TARGETS))}
    for kind in KINDS:
        for goal in TARGETS:
            candidates[f"{kind}-evolution-{goal:g}"] = searched(bench, kind, "evolution", floors[f"{goal:g}"] * goal, goal)
    shape = (space.in_channels, space.resolution, space.resolution)
    onnx_dir = bench.dir / "onnx"
    targets: dict[str, Any] = {}
    with bench.run("warm") as run:
        fam = Family(bench, run, scorers, sources, candidates, teachers.base_model(run), floors)
        files = {"full": export(run, trained.model(run), onnx_dir / "full.onnx")}
        full_int8 = quantized(run, files["full"])
        files["full_int8"] = full_int8
        full_arm = Arm(trained.model(run), "trained network", trained.identity(run), "")
        full_finetuned, _ = tuned(bench, run, "full/full_finetuned", full_arm, args.seeds)
        pruned: dict[str, torch.nn.Module] = {}  # before fine-tuning, for the latency row's reference
        for target in TARGETS:
            t = f"{target:g}"
            rows: dict[str, Any] = {}
            seed_files: dict[str, list[Path]] = {}
            for arm_name, arm in arms_at(fam, target).items():
                if isinstance(arm, list):  # random: every draw fine-tuned like an arm
                    draws = []
                    for i, draw in enumerate(arm):
                        found, models = tuned(bench, run, f"{t}/{arm_name}/draw{i}", draw, args.seeds)
                        draws.append(found)
                        if i == 0:
                            files[f"{t}/{arm_name}"] = export(run, models[0], onnx_dir / f"{t}-{arm_name}.onnx")
                    rows[arm_name] = random_row(draws)
                    continue
                if arm.model is None:
                    rows[arm_name] = {"skipped": arm.note}
                    continue
                pruned[f"{t}/{arm_name}"] = arm.model
                rows[arm_name], models = tuned(bench, run, f"{t}/{arm_name}", arm, args.seeds)
                seed_files[arm_name] = [
                    export(run, m, onnx_dir / f"{t}-{arm_name}-{i}.onnx") for i, m in enumerate(models)
                ]  # fmt: skip
                files[f"{t}/{arm_name}"] = seed_files[arm_name][0]
            rows["warm_evolution_int8"], files[f"{t}/warm_evolution_int8"] = int8_row(
                run, rows["warm_evolution"], seed_files["warm_evolution"]
            )
            targets[t] = {arm: rows[arm] for arm in ARMS}
        # the latency row: against Torch-Pruning's 50% network (l1_filter's where Torch-Pruning is absent)
        reference = "torch_pruning" if "0.5/torch_pruning" in pruned else "l1_filter"
        pick = latency_pick(bench, run, pruned[f"0.5/{reference}"], pareto_front(candidates["warm-nsga2-0.5"]), args)
        chosen = tuple(pick["chosen"]["config"])
        arm = generated(fam, "warm", chosen, "search/warm-nsga2-0.5", {"proxy_top1": pick["chosen"]["proxy_top1"]})
        latency_row, models = tuned(bench, run, "latency/warm_nsga2", arm, args.seeds)
        files["latency_target"] = export(run, models[0], onnx_dir / "latency-target.onnx")
        full_int8_top1 = deploy.onnx_top1(full_int8, run.prepared.test.images, run.prepared.test.labels, 256, 0)
        trust = trust_study(bench, fam, args.trust_configs or preset["trust_configs"])
        latency = latency_ratios(files, args, shape)
    for t, rows in targets.items():
        for arm_name, values in rows.items():
            values |= latency.get(f"{t}/{arm_name}", {})
    ref_row = targets["0.5"][reference]
    latency_row |= latency["latency_target"] | {
        "reference": reference,
        "reference_top1": ref_row["top1"],
        "reference_batch_32_ms": ref_row["batch_32_ms"],
        "top1_minus_reference": latency_row["top1"] - ref_row["top1"],
        "latency_met": latency["latency_target"]["batch_32_ms"] <= ref_row["batch_32_ms"],
        "selection": pick,
    }
    full = {
        "top1": base["top1"],
        "flops": run.full.flops,
        "params": run.full.params,
        "weights": str(trained.weights_file(run)),
        **latency["full"],
        "full_finetuned": full_finetuned,
        "int8": {"top1": full_int8_top1, **latency["full_int8"]},
    }
    windows = {t: [floors[t], 1.0] for t in floors}
    budget = {"calib_images": run.cfg.score.calib_images, "val_images": proxy_trust.search_budget(run)[1]}
    results = {
        "full": full,
        "windows": windows,
        "search_budget": budget,
        "shared_seconds": {
            "base": bench.seconds("train/base"),
            **{f"pruningnet_{kind}": bench.seconds(f"train/pruningnet-{kind}") for kind in KINDS},
        },
        "targets": targets,
        "latency_target": latency_row,
        "proxy_trust": trust,
    }
    results["aims"] = aims(results)
    return results


def trust_study(bench: Bench, fam: Family, count: int) -> dict[str, Any]:
    """The proxy study of the warm and the cold PruningNet on the same configurations, each fine-tuned
    from that PruningNet's generated weights with the benchmark's fine-tune (its first seed)."""
    run = fam.run
    configs = proxy_trust.spread_configs(run.space, count, run.cfg.seed + 1)
    found: dict[str, Any] = {}
    for kind in ("warm", "cold"):
        truth = []
        for i, config in enumerate(configs):
            arm = generated(fam, kind, config, "", None)
            truth.append(run.test_top1(finetune(bench, run, f"trust-{kind}/{i}", arm, run.cfg.seed).to(run.device)))
        with bench.run(kind) as kind_run:
            began = time.perf_counter()
            found[kind] = proxy_trust.proxy_trust(kind_run, configs, truth, "test top-1 after the benchmark's fine-tune")
            found[kind]["seconds"] = time.perf_counter() - began
    found["finetune_epochs"] = run.cfg.finetune.epochs
    return found


AIM_TOP1 = 0.5  # points: warm_evolution's margin at 25%, and how far under the full network at 50% it may be


def aims(fam: dict[str, Any]) -> dict[str, Any]:
    """The issue's aims, each met or not with its numbers (None: not measured, e.g. Torch-Pruning absent)."""
    found: dict[str, Any] = {}

    def aim(name: str, value: float | None, threshold: float, text: str) -> None:
        value = None if value is None or not np.isfinite(value) else value  # nan: e.g. a tau of constant figures
        found[name] = {"value": value, "threshold": threshold, "met": None if value is None else value >= threshold, "aim": text}

    for target, rows in fam["targets"].items():
        warm = rows["warm_evolution"]["top1"]
        margin = AIM_TOP1 if float(target) <= 0.25 else 0.0
        for peer in ("torch_pruning", "l1_filter"):
            value = warm - rows[peer]["top1"] if "top1" in rows[peer] else None
            aim(f"{target}_warm_evolution_minus_{peer}", value, margin, f"warm_evolution mean top-1 >= {peer}'s + {margin:g}")
    rows, full = fam["targets"]["0.5"], fam["full"]
    best_full = max(full["top1"], full["full_finetuned"]["top1"])  # the stronger of the two
    aim("0.5_warm_evolution_minus_full", rows["warm_evolution"]["top1"] - best_full, -AIM_TOP1,
        "warm_evolution within 0.5 of the full network (the better of trained and full_finetuned)")  # fmt: skip
    aim("0.5_fp32_speedup_batch_32", rows["warm_evolution"].get("batch_32_speedup"), 1.4,
        "warm_evolution FP32 >= 1.4x faster than the full network at batch 32 (ORT)")  # fmt: skip
    int8 = rows["warm_evolution_int8"]
    aim("0.5_int8_speedup_vs_full_fp32_batch_32", int8.get("batch_32_speedup"), 3.0,
        "warm_evolution INT8 >= 3x faster than the full network's FP32 at batch 32")  # fmt: skip
    aim("0.5_int8_minus_fp32_top1", -int8["int8_top1_drop"], -1.0, "INT8 at most 1 point below FP32")
    warm = fam["proxy_trust"]["warm"]["search_budget"]["kendall_tau"]
    aim("warm_proxy_kendall_tau", warm, 0.8, "warm proxy tau >= 0.8 at the searches' scoring budget")
    return found


# -- reporting ------------------------------------------------------------------------------------
def _speed(values: dict[str, Any]) -> str:
    if "batch_1_ms" not in values:
        return ""
    return " / ".join(f"{values[f'batch_{b}_ms']:.2f} ({values[f'batch_{b}_speedup']:.2f}x)" for b in BATCHES)


def _top1(values: dict[str, Any]) -> str:
    return f"{values['top1']:.2f} ± {values.get('top1_std', 0):.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# CIFAR-10 benchmark ({results['preset']} preset)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; latency in ONNX Runtime with {results['threads']} threads, "
        f"{results['rounds']} alternating rounds  ",
        f"Seeds: {results['seeds']} per fine-tune (top-1 mean ± population stdev; random: ± between draws)  ",
        f"Total wall time: {results['seconds'] / 60:.1f} min",
    ]
    for name, fam in results["families"].items():
        full, ft, budget = fam["full"], fam["full"]["full_finetuned"], fam["search_budget"]
        windows = ", ".join(f"{float(t):.0%}: [{w[0]:.0%}, 100%] of the target" for t, w in fam["windows"].items())
        lines += [
            "",
            f"## {name}: full network {full['top1']:.2f}% test top-1, {full['flops'] / 1e6:.1f} MFLOPs, "
            f"{full['params'] / 1e3:.0f}k params",
            "",
            f"Full network fine-tuned like the arms (`full_finetuned`): {_top1(ft)}; INT8 {full['int8']['top1']:.2f}.  ",
            f"FLOPs windows: {windows}.  ",
            f"Searches score with {budget['calib_images']} BN images + {budget['val_images']} validation images.",
            "",
            "| target | arm | top-1 (%) | proxy | MFLOPs (of full) | params (k) | ms b1 / b32 (vs full FP32) | wall (min) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines.append(f"| 100% | full | {full['top1']:.2f} | | {full['flops'] / 1e6:.2f} | {full['params'] / 1e3:.0f} "
                     f"| {_speed(full)} | |")  # fmt: skip
        lines.append(f"| 100% | full INT8 | {full['int8']['top1']:.2f} | | | | {_speed(full['int8'])} | |")
        for target, rows in fam["targets"].items():
            for arm in ARMS:
                values = rows[arm]
                if "skipped" in values:
                    lines.append(f"| {float(target):.0%} | {arm} | skipped: {values['skipped']} | | | | | |")
                    continue
                proxy = (
                    f"{values['proxy_top1']:.1f}" + (" (repaired)" if values.get("repaired") else "")
                    if "proxy_top1" in values
                    else ""
                )
                lines.append(
                    f"| {float(target):.0%} | {arm} | {_top1(values)} | {proxy} | {values['flops'] / 1e6:.2f} "
                    f"({values['flops_ratio']:.1%}) | {values['params'] / 1e3:.0f} | {_speed(values)} "
                    f"| {values['seconds'] / 60:.1f} |"
                )
        lat = fam["latency_target"]
        lines += [
            "",
            f"Latency target: the warm NSGA-II front's best network at most as slow as {lat['reference']}'s 50% network "
            f"at batch 32: {_top1(lat)} ({lat['top1_minus_reference']:+.2f} vs {lat['reference_top1']:.2f}), "
            f"{lat['flops_ratio']:.1%} FLOPs, {lat['batch_32_ms']:.2f} ms vs {lat['reference_batch_32_ms']:.2f} ms "
            f"({'met' if lat['latency_met'] else 'not met'} in the final timing).",
        ]
        trust = fam["proxy_trust"]
        for kind in ("warm", "cold"):
            study = trust[kind]
            rec = study["recommended"]
            lines += [
                "",
                f"Proxy trust ({kind} PruningNet): {len(study['configs'])} configurations over the FLOPs range, each "
                f"fine-tuned {trust['finetune_epochs']} epoch(s) like the arms; Kendall tau of FLOPs alone "
                f"{study['kendall_tau_flops']:.3f}.",
                "",
                "| BN images | validation images | Kendall tau | s per candidate | 1,000 candidates (min) |",
                "|---|---|---|---|---|",
            ]
            for b in study["budgets"]:
                mark = " (searches)" if b["searched"] else ""
                lines.append(
                    f"| {b['calib_images']} | {b['val_images']}{mark} | {b['kendall_tau']:.3f} | "
                    f"{b['seconds_per_candidate']:.2f} | {b['seconds_per_candidate'] * 1000 / 60:.1f} |"
                )
            lines += ["", f"Cheapest budget within 0.05 of the best tau: {rec['calib_images']} + {rec['val_images']} images "
                          f"(tau {rec['kendall_tau']:.3f})."]  # fmt: skip
        lines += ["", "Aims:", ""]
        for key, a in fam["aims"].items():
            state = "not measured" if a["met"] is None else ("met" if a["met"] else "not met")
            value = "n/a" if a["value"] is None else f"{a['value']:+.3f}" if a["threshold"] <= 0 else f"{a['value']:.3f}"
            lines.append(f"- {a['aim']}: **{state}** ({key} = {value}, needs >= {a['threshold']:g})")
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
            points = [
                (r[arm]["flops"] / 1e6, r[arm]["top1"], r[arm]["top1_std"]) for r in fam["targets"].values() if "top1" in r[arm]
            ]
            if points:
                x, y, err = zip(*points)
                left.errorbar(x, y, yerr=err, fmt=markers[arm], color=f"C{i}", ms=6, capsize=3, label=arm)
        lat = fam["latency_target"]
        left.errorbar([lat["flops"] / 1e6], [lat["top1"]], yerr=[lat["top1_std"]], fmt="h", color="C9", ms=7, capsize=3,
                      label=f"latency target (vs {lat['reference']})")  # fmt: skip
        full = fam["full"]
        left.scatter([full["flops"] / 1e6], [full["top1"]], marker="o", color="k", s=60, label="full network")
        left.scatter([full["flops"] / 1e6], [full["full_finetuned"]["top1"]], marker="o", facecolors="none", edgecolors="k",
                     s=60, label="full, fine-tuned")  # fmt: skip
        left.set(
            xlabel="MFLOPs", ylabel="test top-1 (%)", title=f"{name}: arms at {', '.join(f'{t:.0%}' for t in TARGETS)} FLOPs"
        )
        left.grid(alpha=0.3)
        left.legend(fontsize=7)
        trust = fam["proxy_trust"]
        for i, kind in enumerate(("warm", "cold")):
            study = trust[kind]
            b = next(b for b in study["budgets"] if b["searched"])
            right.scatter(b["proxy_top1"], study["finetuned_top1"], s=20, color=f"C{i}", marker="o^"[i],
                          label=f"{kind}: tau {b['kendall_tau']:.2f} ({b['calib_images']}+{b['val_images']} images)")  # fmt: skip
        right.set(xlabel="proxy top-1 (%)", ylabel=f"test top-1 after {trust['finetune_epochs']} fine-tune epoch(s) (%)",
                  title=f"proxy vs fine-tuned ({len(trust['warm']['configs'])} configurations)")  # fmt: skip
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
    settings = [*COMMON, *preset["settings"], *args.set]
    kinds = [item.split("=", 1)[1] for item in settings if item.startswith("data.kind=")]
    if kinds[-1] == "folder" and not (Path(args.data) / "train").is_dir():
        print(f"error: --data {args.data} has no train/ folder; pass the CIFAR-10 folder", file=sys.stderr)
        return 2
    if (args.base or preset["base"]) == "shared" and not Path(args.base_weights).is_file():
        print(f"error: --base-weights {args.base_weights} does not exist; pass the trained network or use --base train",
              file=sys.stderr)  # fmt: skip
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
        "rounds": args.rounds,
        "base": args.base or preset["base"],
        "settings": settings,
        "kinds": KINDS,
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
