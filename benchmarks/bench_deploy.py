"""Deployment benchmark: is the compressed model smaller, as accurate, and faster where it runs?

Arms, all on the same CIFAR-10 test images, each runtime reported on its own (a runtime change is
not a compression gain):
  full FP32     the original ResNet-20, trained by the pipeline's train-base stage;
  pruned FP32   the MetaPruning winner at 50% FLOPs, fine-tuned with distillation from the full one;
  pruned INT8   that winner through the quantize stage: ONNX Runtime static INT8 (QDQ); in PyTorch,
                torchao's PT2E + inductor when torchao is installed (not a dependency: --torchao);
  sparse 50%    the full network, global magnitude pruning to 50% of its conv/linear weights, then
                fine-tuned with the masks held (the classic unstructured comparison arm).
Latency: median ms per call at batch 1 and 32 with fixed threads, arms alternating round by round
after a warm-up (GUIDE section 4). Ratios are computed within one runtime and one run.
Aims (issue 4): pruned >= 1.7x faster than full (2x is the limit at 50% FLOPs); pruned INT8 >= 3x
faster than full FP32 in the same runtime, at most 1 point below pruned FP32 in top-1.

Run from the repository root (the cpu preset takes about 30 minutes on 2 cores):
    python benchmarks/bench_deploy.py --data ../shared/data/cifar10
It writes benchmarks/results/deploy_<preset>.json and .md (table, command, machine).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaprune import compress, deploy, teachers  # noqa: E402
from metaprune.config import load_config  # noqa: E402
from metaprune.io import atomic_write_json, atomic_write_text  # noqa: E402
from metaprune.latency import device_description, measure_ms, torch_threads  # noqa: E402
from metaprune.pipeline import Run  # noqa: E402
from metaprune.train import train  # noqa: E402

PRESETS: dict[str, list[str]] = {
    # about 30 minutes on 2 cores: short training, enough to compare arms trained alike
    "cpu": [
        "data.train_subset=20000", "base.epochs=6", "base.batch_size=128", "base.lr=0.1",
        "pruningnet.epochs=6", "pruningnet.batch_size=128", "score.calib_images=500", "score.calib_batch_size=100",
        "search.population=20", "search.parents=5", "search.mutations=8", "search.crossovers=8", "search.generations=5",
        "finetune.epochs=6", "finetune.batch_size=128", "finetune.lr=0.05",
    ],
    # a few minutes: checks that the benchmark runs end to end, its figures mean nothing
    "smoke": [
        "data.train_subset=2000", "data.val_size=500", "base.epochs=1", "base.batch_size=64", "pruningnet.epochs=1",
        "pruningnet.batch_size=64", "score.calib_images=200", "score.calib_batch_size=100", "search.population=6",
        "search.parents=2", "search.mutations=2", "search.crossovers=2", "search.generations=2", "finetune.epochs=1",
        "finetune.batch_size=64",
    ],
}  # fmt: skip
COMMON = ["data.kind=folder", "data.flip=true", "data.val_size=5000", "space.family=resnet20", "search.max_flops=0.5"]
BATCHES = (1, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 as class-per-folder JPEGs (train/, test/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="training budget of the arms")
    parser.add_argument(
        "--run-dir", default=None, help="pipeline run directory (default runs/bench_deploy_<preset>); rerun to resume"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads while timing")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; each times every arm once, in turn")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per arm and round (after a warm-up)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="the unstructured arm's fraction of zeroed weights")
    parser.add_argument(
        "--sparse-epochs", type=int, default=0, help="fine-tune epochs of the sparse arm (0: finetune.epochs, as the winner)"
    )
    parser.add_argument("--torchao", action="store_true", help="also time torchao PT2E INT8 + torch.compile (needs torchao)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline setting")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results/deploy_<preset>.json)")
    return parser.parse_args(argv)


# -- the arms' models ---------------------------------------------------------------------------
def train_arms(run: Run, sparsity: float, sparse_epochs: int) -> dict[str, Any]:
    """Every pipeline stage the arms need (each resumes), then the unstructured arm."""
    run.train_base()
    run.train_pruningnet()
    run.search()
    run.finetune()
    quantized = run.quantize()
    full = teachers.base_model(run).cpu().eval()
    sparse = _sparse_arm(run, full, sparsity, sparse_epochs or run.cfg.finetune.epochs)
    return {"full": full, "pruned": run.chosen_model().model.cpu().eval(), "sparse": sparse, "quantize": quantized}


def _sparse_arm(run: Run, full: torch.nn.Module, sparsity: float, epochs: int) -> torch.nn.Module:
    """The full network pruned to `sparsity` by global magnitude, fine-tuned as the winner was
    (same settings, distilled from the full network), with the masks held."""
    model = copy.deepcopy(full).requires_grad_(True)
    loss_fn = teachers.loss_for(run, teachers.teachers(run))
    masks = compress.magnitude_prune(model, sparsity)  # a function of the base weights: a resumed run recomputes them
    data = run.prepared
    with compress.MaskedTraining(model, masks) as masked:
        train(
            model, masked.wrap(lambda x, step: model(x)), data.train, data.normalizer,
            dataclasses.replace(run.cfg.finetune, epochs=epochs), seed=run.cfg.seed,
            checkpoint=run.dir / f"bench_sparse_{sparsity:g}_{epochs}ep.pt", flip=run.cfg.data.flip, desc="sparse", progress=True,
            meta={"sparsity": sparsity}, loss_fn=loss_fn,
        )  # fmt: skip
    return model.eval()


# -- timing -------------------------------------------------------------------------------------
def alternate(arms: dict[str, Callable[[], object]], rounds: int, runs: int) -> dict[str, list[float]]:
    """Time every arm `runs` times per round, arms in turn, after one untimed warm-up of each."""
    for fn in arms.values():
        measure_ms(fn, warmup=5, runs=1)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, fn in arms.items():
            times[name] += measure_ms(fn, warmup=1, runs=runs)
    return times


def torch_arm(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return call


def onnx_arm(path: Path, x: np.ndarray, threads: int) -> Callable[[], object]:
    session = deploy.onnx_session(path, threads)
    return lambda: session.run(None, {deploy.INPUT_NAME: x})


def torchao_arm(model: torch.nn.Module, calib: torch.Tensor, x: torch.Tensor) -> tuple[Callable[[], object], float]:
    """torchao's PT2E static INT8 for x86, lowered by torch.compile (inductor); returns the compile seconds too."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    began = time.perf_counter()
    exported = torch.export.export(model, (x,)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for i in range(0, len(calib) - len(x) + 1, len(x)):  # the program was exported for this batch size
        prepared(calib[i : i + len(x)])
    compiled = torch.compile(convert_pt2e(prepared))
    with torch.inference_mode():
        compiled(x)
    return torch_arm(compiled, x), time.perf_counter() - began


def latencies(models: dict[str, Any], files: dict[str, Path], args: argparse.Namespace, calib: torch.Tensor) -> dict[str, Any]:
    """Per batch size and runtime: median ms of each arm, alternating."""
    shape = tuple(calib.shape[1:])
    result: dict[str, Any] = {}
    with torch_threads(args.threads):
        for batch in BATCHES:
            x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch))
            arms = {f"pytorch/{name}": torch_arm(model, x) for name, model in models.items()}
            if args.torchao:
                arms["pytorch/pruned_int8"], result[f"torchao_compile_s_batch_{batch}"] = torchao_arm(
                    models["pruned_fp32"], calib, x
                )
            arms |= {f"onnxruntime/{name}": onnx_arm(path, x.numpy(), args.threads) for name, path in files.items()}
            times = alternate(arms, args.rounds, args.runs)
            result[f"batch_{batch}"] = {name: statistics.median(t) for name, t in times.items()}
    return result


# -- accuracy and size --------------------------------------------------------------------------
def accuracies(run: Run, subnets: dict[str, Any], files: dict[str, Path]) -> dict[str, float]:
    """Test top-1 of each plain subnet (normalised input) in PyTorch and of each file in ONNX Runtime (pixels / 255)."""
    data = run.prepared
    found = {f"pytorch/{name}": run.test_top1(model) for name, model in subnets.items()}
    for name, path in files.items():
        found[f"onnxruntime/{name}"] = deploy.onnx_top1(path, data.test.images, data.test.labels, 256, 0)
    return found


def sizes(models: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    found: dict[str, Any] = {f"{name}_state_dict_mb": compress.dense_bytes(m) / 1e6 for name, m in models.items()}
    found["sparse_50_stored_sparse_mb"] = compress.sparse_bytes(models["sparse_50"]) / 1e6
    found |= {f"{name}_onnx_mb": path.stat().st_size / 1e6 for name, path in files.items()}
    return found


def ratios(lat: dict[str, Any], top1: dict[str, float]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for batch in BATCHES:
        table = lat[f"batch_{batch}"]
        for runtime in ("pytorch", "onnxruntime"):
            full = table[f"{runtime}/full_fp32"]
            found[f"{runtime}_batch_{batch}"] = {
                "pruned_fp32_speedup": full / table[f"{runtime}/pruned_fp32"],
                "pruned_int8_speedup": full / table[f"{runtime}/pruned_int8"] if f"{runtime}/pruned_int8" in table else None,
                "sparse_50_speedup": full / table[f"{runtime}/sparse_50"],
            }
    found["int8_top1_drop"] = top1["pytorch/pruned_fp32"] - top1["onnxruntime/pruned_int8"]
    return found


def markdown(results: dict[str, Any]) -> str:
    lat, top1, size = results["latency_ms"], results["top1"], results["size"]
    lines = [
        f"# Deployment benchmark ({results['preset']} preset)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}, {results['threads']} threads",
        "",
        "| arm | runtime | top-1 (%) | size (MB) | " + " | ".join(f"batch {b} ms | speedup vs full" for b in BATCHES) + " |",
        "|---|---|---|---|" + "---|---|" * len(BATCHES),
    ]
    for runtime in ("pytorch", "onnxruntime"):
        for arm in ("full_fp32", "pruned_fp32", "pruned_int8", "sparse_50"):
            key = f"{runtime}/{arm}"
            if key not in lat[f"batch_{BATCHES[0]}"]:
                continue
            acc = f"{top1[key]:.2f}" if key in top1 else "-"  # torchao's INT8 is timed, not scored
            mb = size.get(f"{arm}_onnx_mb" if runtime == "onnxruntime" else f"{arm}_state_dict_mb")
            if arm == "sparse_50" and runtime == "pytorch":
                mb = size["sparse_50_stored_sparse_mb"]  # stored sparse; it runs dense
            shown_runtime = "pytorch (torchao PT2E + inductor)" if key == "pytorch/pruned_int8" else runtime
            cells = []
            for batch in BATCHES:
                table = lat[f"batch_{batch}"]
                cells.append(f"{table[key]:.2f} | {table[f'{runtime}/full_fp32'] / table[key]:.2f}x")
            shown_mb = f"{mb:.3f}" if mb is not None else "-"
            lines.append(f"| {arm} | {shown_runtime} | {acc} | {shown_mb} | " + " | ".join(cells) + " |")
    flops = results.get("flops", {})
    lines += [
        "",
        f"FLOPs: full {flops.get('full', 0):,}, pruned {flops.get('pruned', 0):,}. "
        f"INT8 top-1 drop against pruned FP32: {results['ratios']['int8_top1_drop']:.2f} points.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.data) / "train").is_dir():
        print(f"error: --data {args.data} has no train/ folder; pass the CIFAR-10 folder", file=sys.stderr)
        return 2
    overrides = [*COMMON, f"data.path={args.data}", f"name=bench_deploy_{args.preset}", *PRESETS[args.preset], *args.set]
    cfg = load_config(None, overrides)
    run = Run(cfg, Path(args.run_dir or ROOT / "runs" / f"bench_deploy_{args.preset}"))
    began = time.perf_counter()
    trained = train_arms(run, args.sparsity, args.sparse_epochs)
    shape = (run.space.in_channels, run.space.resolution, run.space.resolution)
    subnets = {"full_fp32": trained["full"], "pruned_fp32": trained["pruned"], "sparse_50": trained["sparse"]}
    models = {name: deploy.Deployable(subnet, run.prepared.normalizer).eval() for name, subnet in subnets.items()}
    onnx_dir = run.dir / "bench_onnx"
    files = {name: deploy.export_onnx(model, shape, onnx_dir / f"{name}.onnx") for name, model in models.items()}
    files["pruned_int8"] = run.dir / trained["quantize"]["files"]["int8"]
    calib = run.prepared.train.images[:256].float() / 255
    lat = latencies(models, files, args, calib)
    top1 = accuracies(run, subnets, files)
    results = {
        "preset": args.preset,
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": device_description("cpu"),
        "platform": platform.platform(),
        "load_avg_1min_before_timing": os.getloadavg()[0],
        "threads": args.threads,
        "flops": {"full": run.full.flops, "pruned": run.choice().flops},
        "sparsity_measured": compress.sparsity_of(trained["sparse"]),
        "sparse_epochs": args.sparse_epochs or cfg.finetune.epochs,
        "latency_ms": lat,
        "top1": top1,
        "size": sizes(models, files),
        "ratios": ratios(lat, top1),
        "quantize_stage": trained["quantize"],
        "distill": run.summary().get("distill"),
        "seconds": time.perf_counter() - began,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"deploy_{args.preset}.json")
    atomic_write_json(out, results)
    atomic_write_text(out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    print(json.dumps(results["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
