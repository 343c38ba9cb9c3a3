"""The settings of a run, section by section: dataclasses with defaults, one `# comment` each (the
docs `--help` prints). Which settings count for which artifact is said on the field
(`metaprune.settings`). Loading and overrides: `metaprune.config`; checks: `metaprune.config_checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from metaprune.compress import CompressConfig
from metaprune.deploy import QuantizeConfig
from metaprune.distill import DistillConfig
from metaprune.latency import LatencyConfig
from metaprune.score import ScoreConfig
from metaprune.settings import choice, file, runtime
from metaprune.train import OptimConfig

PRUNINGNET_INITS = ("auto", "trained", "scratch")
FINETUNE_INITS = ("inherit", "filter", "scratch")


@dataclass
class DataConfig:
    kind: str = "digits"  # digits (bundled, no download) | folder (path/train, path/test) | synthetic
    path: str | None = None  # for kind=folder: the folder holding train/<class>/ and test/<class>/
    val_size: int = 300  # images carved from train (seeded) to score candidates; test is never searched
    split_seed: int = 0  # seed of that carve-out: keep it fixed across runs you compare
    flip: bool = False  # random horizontal flips in training (true for natural images, false for digits)
    train_subset: int = 0  # use a seeded random subset of this many training images (0 = all)
    mean: list[float] | None = None  # per-channel input mean the model expects (null: fitted on the training images)
    std: list[float] | None = None  # per-channel input std, with data.mean (ImageNet's for a trained torchvision model)


@dataclass
class SpaceConfig:
    family: str = "resnet20"  # resnet20/56/50, mobilenet_v1/v2, nin, vgg11/16, inception, squeezenet, shufflenet_v2, mobilenet_v3
    model: str = ""  # your own network instead: path/to/file.py:build_fn or package.module:build_fn (returns an nn.Module)
    width_mult: float = 1.0  # scales every base width (the largest network of the space)
    channel_multiple: int = 8  # every gene's widths are multiples of this (1: the paper's grid); 8 runs faster, see README


@dataclass
class BaseSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weights: str = file("")  # your trained full network's state dict (as build_subnet(space, space.largest)); replaces train-base


@dataclass
class PruningNetSection(OptimConfig):
    epochs: int = 20  # with init=trained, 0 is EagleEye: the pruned trained weights scored with adaptive BN
    batch_size: int = 64
    lr: float = 0.0  # 0 = auto: 0.1 from scratch, finetune.lr / 5 when warm (higher washes the trained weights out)
    init: str = "auto"  # trained: from the trained network (base.weights, train-base) | scratch | auto: trained if one exists
    ranking: str = "l1"  # channel importance that orders the trained network: l1 | l1_mean | bn (benchmarks/bench_ranking.py)
    hidden: int = 32  # width of each weight generator's hidden layer
    bn_affine: bool = False  # learnable scale/shift in the per-width BatchNorms (always on when warm: the trained BN's)
    min_flops: float = 0.0  # lower end of the FLOPs window training configurations are drawn from (<= 1: fraction)
    max_flops: float = 1.0  # upper end of that window (the paper trains on every width: 0 and 1)


@dataclass
class EvolutionSection:
    """search.evolution: the paper's evolutionary search (searcher=evolution only)."""

    parents: int = 10  # best candidates that mutations and crossovers start from
    mutations: int = 25  # mutants of the parents per generation
    crossovers: int = 25  # uniform crossovers of two parents per generation
    mutation_prob: float = 0.1  # chance that a mutation resamples each gene
    include_uniform: bool = True  # the first generation holds the uniformly scaled network under the budget


@dataclass
class RoundsSection:
    """search.rounds: searchers that ask a fixed number of trials per round (searcher=tpe, random)."""

    batch: int = 10  # trials per round; fixed for reproducibility (evolution and nsga2 ask population per round)


@dataclass
class SearchSection:
    max_flops: float = 0.5  # the budget: <= 1 is a fraction of the full model, larger is absolute FLOPs
    min_flops: float = 0.0  # optional lower bound, same units
    searcher: str = "evolution"  # evolution (the paper) | tpe | nsga2 (accuracy/FLOPs front) | random
    population: int = 50  # candidates per generation (evolution, nsga2); every searcher scores population x generations
    generations: int = 20  # with population, the number of candidates scored
    seed: int = 0  # seeds the search's own random choices
    evolution: EvolutionSection = field(default_factory=EvolutionSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    executor: str = runtime("inprocess")  # inprocess | ray (a pool of Ray actors, one per GPU or sharing the CPUs)
    workers: int = runtime(2)  # Ray actors scoring candidates (executor=ray)
    ray_address: str = runtime("")  # join this Ray cluster (executor=ray); empty: RAY_ADDRESS if set, else start Ray locally
    storage: str = runtime("")  # Optuna storage URL for the studies (e.g. postgresql://...); empty: RUN_DIR/study.journal
    max_latency_ms: float = 0.0  # > 0: also a latency budget, predicted by a per-layer table measured here (section latency)


@dataclass
class FinetuneSection(OptimConfig):
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    label_smoothing: float = 0.0
    init: str = "inherit"  # inherit: generated weights | filter: the trained network pruned to the widths | scratch (the paper)
    top_k: int = choice(1)  # > 1: fine-tune the k best candidates as Ray Tune trials under ASHA; the survivor wins
    grace_epochs: int = choice(1)  # top_k > 1: epochs every candidate trains before ASHA may stop it
    reduction_factor: int = choice(2)  # top_k > 1: ASHA keeps the best 1/reduction_factor at each rung


@dataclass
class RunConfig:
    name: str = "quickstart"  # the default run directory is runs/<name>/ (space.model: runs/<file>-<function>/)
    seed: int = 0  # seeds training; runs with equal configs and seeds give equal results
    device: str = runtime("auto")  # auto (cuda when present) | cpu | cuda
    threads: int = runtime(0)  # torch CPU threads (0 = torch's default)
    amp: bool = True  # mixed precision (bf16 autocast) when training on a CUDA GPU; no effect on a CPU
    progress: bool = runtime(True)  # progress bars on stderr
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    base: BaseSection = field(default_factory=BaseSection)
    pruningnet: PruningNetSection = field(default_factory=PruningNetSection)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    search: SearchSection = field(default_factory=SearchSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
