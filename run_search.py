#!/usr/bin/env python
"""metaprune command line: train a PruningNet, search a FLOPs budget, fine-tune (distilled), quantize and export the winner.

With no arguments it runs the whole quickstart (handwritten digits bundled with scikit-learn,
ResNet-20, half the FLOPs) on the CPU in a few minutes and prints where the results are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from metaprune.errors import UserError

if TYPE_CHECKING:
    from metaprune.config_sections import RunConfig

STAGE_HELP = {
    "pipeline": "run every stage: train-base, train-pruningnet, search, finetune (distilled), quantize, export (the default)",
    "train-base": "train the original full network (the teacher of distillation, the reference); resumes from its checkpoint",
    "train-pruningnet": "train the PruningNet (one random configuration per mini-batch); resumes from its checkpoint",
    "search": "search under the FLOPs budget (--searcher), scoring candidates with the trained PruningNet (--executor)",
    "finetune": "train the search winner, or the point --trial / --max-flops picks, and report test top-1",
    "quantize": "INT8 (ONNX Runtime static QDQ; QAT when it loses > quantize.max_drop), bf16/fp16, low-bit weights: "
    "top-1, size, latency",
    "export": "write the fine-tuned winner (or the point --trial / --max-flops picks): architecture.json + weights.pt, "
    "model.onnx, model.pt2 and (after quantize) model.int8.onnx",
}

EPILOG = """\
configuration:
  Every setting has a default (see README.md, section Configuration). --config FILE reads a YAML
  file of the same keys; --set KEY=VALUE (repeatable) overrides one key, for example
    --set search.max_flops=0.3        budget: 30% of the full model's FLOPs (values > 1 are absolute FLOPs)
    --set data.kind=folder --set data.path=../shared/data/cifar10 --set data.flip=true
    --set space.family=mobilenet_v2   resnet20, resnet56, resnet50, mobilenet_v1, mobilenet_v2, and the
                                      traced nin, vgg11, vgg16, inception, squeezenet, shufflenet_v2, mobilenet_v3
    --set pruningnet.epochs=5         PruningNet training length
  The resolved config is saved as RUN_DIR/config.yaml. Running the same command again resumes
  from where it stopped: finished work is never redone.

exit codes: 0 success, 2 bad input (the message says which value and how to fix it).

settings (KEY = default, meaning):
{settings}
"""


def _parser() -> argparse.ArgumentParser:
    from metaprune.config import describe_settings

    epilog = EPILOG.format(settings=describe_settings())
    parser = argparse.ArgumentParser(
        prog="run_search.py", description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_common(parser, argparse.SUPPRESS)  # options also work without a stage (pipeline)
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    for stage, text in STAGE_HELP.items():
        stage_parser = sub.add_parser(
            stage, help=text, description=text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        _add_common(stage_parser, argparse.SUPPRESS)
    return parser


# shortcuts for the settings users change most; each is the same as --set KEY=VALUE
SHORTCUTS = {
    "--model": (
        "space.model",
        "your own network: path/to/file.py:build_fn or package.module:build_fn, a function returning an nn.Module "
        "(given num_classes if it takes it); traced with torch.fx, replaces space.family (space.model)",
    ),
    "--weights": ("base.weights", "your trained network's state dict, torch.save(model.state_dict(), path); replaces train-base"),
    "--searcher": ("search.searcher", "evolution | tpe | nsga2 | random (search.searcher)"),
    "--executor": ("search.executor", "inprocess | ray: where candidates are scored (search.executor)"),
    "--workers": ("search.workers", "Ray actors scoring candidates with --executor ray (search.workers)"),
    "--ray-address": ("search.ray_address", "join this Ray cluster, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else local)"),
    "--storage": ("search.storage", "Optuna storage URL for the studies (default: RUN_DIR/study.journal)"),
    "--max-latency-ms": ("search.max_latency_ms", "search: latency budget in ms, predicted by a per-layer table measured here"),
}


def _add_common(parser: argparse.ArgumentParser, default: str) -> None:
    # SUPPRESS as default: an option given before the stage is not reset by the stage's parser
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="YAML file with settings (keys as in config.yaml of a run)"
    )
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=default, dest="overrides", help="override one setting; repeatable"
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        default=default,
        help="where checkpoints, the search record and summary.json go (default runs/<name>/; --model: runs/<file>-<fn>/)",
    )
    parser.add_argument(
        "--resume", action="store_true", default=default,
        help="continue the run in --run-dir with its saved config.yaml (the same command without it resumes too)",
    )  # fmt: skip
    for flag, (key, text) in SHORTCUTS.items():
        parser.add_argument(flag, metavar=key.split(".")[-1].upper(), default=default, help=text)
    parser.add_argument(
        "--trial", type=int, metavar="N", default=default,
        help="finetune/quantize/export: use trial N of the last search (see summary.json search.pareto) instead of the best",
    )  # fmt: skip
    parser.add_argument(
        "--max-flops", type=float, metavar="X", default=default,
        help="finetune/quantize/export: use the best scored point with FLOPs <= X (<= 1: a fraction of the full model)",
    )  # fmt: skip


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<name>/; for a --model network left at the quickstart's name, runs/<file>-<function>/, so
    pruning your own model neither lands in nor is refused by the quickstart's run directory."""
    if cfg.name != "quickstart" or not cfg.space.model:
        return Path("runs") / cfg.name
    module, _, function = str(cfg.space.model).rpartition(":")
    stem = Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
    return Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{function}")


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    stage = args.stage or "pipeline"
    from metaprune.config import load_config
    from metaprune.pipeline import Pick, Run

    overrides = list(getattr(args, "overrides", None) or [])
    for flag, (key, _) in SHORTCUTS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            overrides.append(f"{key}={value}")
    config_file = getattr(args, "config", None)
    if getattr(args, "resume", False):
        config_file = _saved_config(getattr(args, "run_dir", None), config_file)
    cfg = load_config(config_file, overrides)
    run_dir = Path(getattr(args, "run_dir", None) or default_run_dir(cfg))
    pick = Pick(getattr(args, "trial", None), getattr(args, "max_flops", None))
    if (pick.trial is not None or pick.max_flops is not None) and stage not in ("finetune", "quantize", "export"):
        raise UserError(
            f"--trial and --max-flops choose a point for finetune, quantize or export, not for {stage}; "
            "run `finetune`, `quantize` or `export`"
        )
    if pick.max_flops is not None and not pick.max_flops >= 0:
        raise UserError(f"--max-flops must be >= 0 (a fraction <= 1 or absolute FLOPs), got {pick.max_flops:g}")
    if pick.trial is not None and pick.max_flops is not None:
        raise UserError("give either --trial or --max-flops, not both")
    run = Run(cfg, run_dir, pick)
    try:
        result = run.stage(stage)
    finally:
        run.close()
    print(json.dumps(result, indent=2))
    print(f"\n{stage} finished. Results: {run_dir / 'summary.json'}", file=sys.stderr)
    if stage in ("pipeline", "export"):
        files = (result if stage == "export" else result.get("export", {})).get("files", [])
        where = Path(files[0]).parent if files else run_dir / "export"
        print(f"Exported subnet: {where} (load with search_spaces.load_subnet)", file=sys.stderr)
    return 0


def _saved_config(run_dir: str | None, config_file: str | None) -> Path:
    if config_file is not None:
        raise UserError("--resume takes the run's saved config.yaml; drop --config (use --set to change a setting)")
    if run_dir is None:
        raise UserError("--resume needs --run-dir, the run to continue")
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise UserError(f"nothing to resume: {saved} does not exist; start the run without --resume")
    return saved


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
