"""Which channel ranking should order a trained network? Measured as EagleEye scores candidates.

For each ranking of `metaprune.importance` (l1, l1_mean, bn), the trained full network is
importance-ordered and cropped to configurations at 50% and 25% of its FLOPs (the uniform widths
and random layer-wise ones), BN re-estimated on training images (adaptive BN), and measured on a
validation split carved from train. The ranking whose cropped networks keep the most accuracy
is the one whose prefixes hold the most useful channels: the warm PruningNet's starting point.

    python benchmarks/bench_ranking.py --data ../shared/data/cifar10 --model ../shared/models/resnet20_cifar10.metaprune.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import search_spaces as ss  # noqa: E402
from metaprune.data import Normalizer, load_dataset, split  # noqa: E402
from metaprune.graph_importance import RANKINGS, ordered_space  # noqa: E402
from metaprune.importance import crop  # noqa: E402
from metaprune.score import calibration_images, fixed_batches, recalibrate_bn, top1  # noqa: E402

CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 folder holding train/ and test/")
    parser.add_argument("--model", required=True, help="state dict of metaprune's resnet20 full network")
    parser.add_argument("--random", type=int, default=8, help="random configurations per target")
    parser.add_argument("--channel-multiple", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/ranking_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    space = ss.create_space("resnet20", 10, 3, 32, 1.0, args.channel_multiple)
    model = ss.build_subnet(space, space.largest)
    model.load_state_dict(torch.load(args.model, map_location="cpu", weights_only=True))
    splits = load_dataset("folder", args.data)
    train, val = split(splits.train, 5000, 0)
    normalizer = Normalizer(CIFAR10_MEAN, CIFAR10_STD)
    calib = [x for x, _ in fixed_batches(calibration_images(train, 1000, 0), normalizer, 100, "cpu")]
    validation = fixed_batches(val, normalizer, 500, "cpu")
    full_flops = ss.flops(space, space.largest)
    rng = np.random.default_rng(0)
    configs: dict[str, list[ss.Config]] = {}
    for target in (0.5, 0.25):
        window = (0.9 * target * full_flops, target * full_flops)
        draws = [ss.sample_within(space, rng, *window) for _ in range(args.random)]
        configs[f"{target:g}"] = [ss.uniform_within(space, target * full_flops), *draws]
    results: dict[str, dict[str, float]] = {}
    for method in RANKINGS:
        ordered = ordered_space(space, model, method)
        row = {}
        for target, group in configs.items():
            scores = []
            for config in group:
                subnet = crop(ordered, model, config)
                recalibrate_bn(subnet, calib)
                scores.append(top1(subnet, validation))
            row[f"uniform_{target}"] = scores[0]
            row[f"random_mean_{target}"] = statistics.mean(scores[1:])
        results[method] = row
        print(method, json.dumps(row), flush=True)
    out = {"command": " ".join(sys.argv), "full_val_top1": top1(model, validation), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
