#!/usr/bin/env python
"""metaprune command line: train a PruningNet, search a FLOPs budget, fine-tune and export the winner.

With no arguments it runs the whole quickstart (handwritten digits bundled with scikit-learn,
ResNet-20, half the FLOPs) on the CPU in a few minutes and prints where the results are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metaprune.errors import UserError

STAGE_HELP = {
    "pipeline": "run every stage in order: train-pruningnet, search, finetune, export (the default)",
    "train-pruningnet": "train the PruningNet (one random configuration per mini-batch); resumes from its checkpoint",
    "search": "evolutionary search under the FLOPs budget, scoring candidates with the trained PruningNet",
    "finetune": "train the search winner (from its generated weights or from scratch) and report test top-1",
    "export": "write the fine-tuned winner as architecture.json + weights.pt, reload it and compare outputs",
}

EPILOG = """\
configuration:
  Every setting has a default (see README.md, section Configuration). --config FILE reads a YAML
  file of the same keys; --set KEY=VALUE (repeatable) overrides one key, for example
    --set search.max_flops=0.3        budget: 30% of the full model's FLOPs (values > 1 are absolute FLOPs)
    --set data.kind=folder --set data.path=../shared/data/cifar10 --set data.flip=true
    --set space.family=mobilenet_v2   resnet20, resnet56, resnet50, mobilenet_v1, mobilenet_v2
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
        help="where checkpoints, the search record and summary.json go (default runs/<name>/)",
    )


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    stage = args.stage or "pipeline"
    from metaprune.config import load_config
    from metaprune.pipeline import Run

    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
    run_dir = Path(getattr(args, "run_dir", None) or Path("runs") / cfg.name)
    pipeline = Run(cfg, run_dir)
    method = {"pipeline": pipeline.pipeline, "train-pruningnet": pipeline.train_pruningnet, "search": pipeline.search,
              "finetune": pipeline.finetune, "export": pipeline.export}[stage]  # fmt: skip
    result = method()
    print(json.dumps(result, indent=2))
    print(f"\n{stage} finished. Results: {run_dir / 'summary.json'}", file=sys.stderr)
    if stage in ("pipeline", "export"):
        print(f"Exported subnet: {run_dir / 'export'} (load with search_spaces.load_subnet)", file=sys.stderr)
    return 0


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
