"""Does rounding widths to a multiple pay in ONNX Runtime? The measurement behind space.channel_multiple.

For each FLOPs target, the uniformly scaled ResNet-20 (CIFAR, 32x32) on the paper's grid
(multiple 1) and on grids of multiples of 4, 8 and 16, plus random layer-wise configurations in
the same window on each grid, exported to ONNX and timed in ONNX Runtime (FP32, fixed threads) at
batch 1 and 32, every network and the full one alternating round by round. Reported: each
network's speedup over the full one (median over rounds), and per grid the mean speedup at each
target. Weights are random: latency does not depend on them.

    python benchmarks/bench_channel_multiple.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_deploy import alternate, onnx_arm  # noqa: E402

import search_spaces as ss  # noqa: E402
from metaprune import deploy  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.latency import torch_threads  # noqa: E402

TARGETS = (0.25, 0.35, 0.5, 0.65)
MULTIPLES = (1, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="resnet20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--random", type=int, default=2, help="random configurations per grid and target")
    parser.add_argument("--out", default=str(HERE / "results" / "channel_multiple_cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, torch_threads(args.threads):
        files: dict[str, Path] = {}
        for multiple in MULTIPLES:
            space = ss.create_space(args.family, 10, 3, 32, 1.0, multiple)
            full = ss.flops(space, space.largest)
            rng = np.random.default_rng(multiple)
            if multiple == 1:
                files["full"] = deploy.export_onnx(ss.build_subnet(space, space.largest), (3, 32, 32), Path(tmp) / "full.onnx")
            for target in TARGETS:
                if ss.flops(space, ss.uniform(space, 0.0)) > target * full:
                    continue  # the grid's narrowest network is over this target (multiple 16 at 25%)
                configs = {"uniform": ss.uniform_within(space, target * full)}
                for i in range(args.random):
                    configs[f"random{i}"] = ss.sample_within(space, rng, 0.9 * target * full, target * full)
                for kind, config in configs.items():
                    name = f"m{multiple}-{target:g}-{kind}"
                    model = ss.build_subnet(space, config)
                    files[name] = deploy.export_onnx(model, (3, 32, 32), Path(tmp) / f"{name}.onnx")
                    rows.append({"name": name, "multiple": multiple, "target": target, "kind": kind,
                                 "flops_ratio": ss.flops(space, config) / full, "channels": space.describe(config)})  # fmt: skip
        for batch in (1, 32):
            x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)).numpy()
            times = alternate({name: onnx_arm(path, x, args.threads) for name, path in files.items()}, args.rounds, args.runs)
            full_ms = statistics.median(times["full"])
            for row in rows:
                row[f"batch_{batch}_speedup"] = full_ms / statistics.median(times[str(row["name"])])
            print(f"batch {batch}: full {full_ms:.3f} ms", flush=True)
    summary = {}
    for multiple in MULTIPLES:
        for target in TARGETS:
            group = [r for r in rows if r["multiple"] == multiple and r["target"] == target]
            if not group:
                continue
            summary[f"m{multiple}-{target:g}"] = {
                key: round(statistics.mean(float(r[key]) for r in group), 3)  # type: ignore[arg-type]
                for key in ("flops_ratio", "batch_1_speedup", "batch_32_speedup")
            }
    out = {"command": " ".join(["python", *sys.argv]), "machine": f"{platform.processor() or platform.machine()}, "
           f"{args.threads} threads", "summary": summary, "networks": rows}  # fmt: skip
    atomic_write_json(Path(args.out), out)
    for key, value in summary.items():
        print(key, value)


if __name__ == "__main__":
    main()
