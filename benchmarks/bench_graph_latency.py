"""How well the traced spaces' latency table predicts whole subnets (`metaprune.graph_latency`).

For each registered family (or each `--family` given), at the given input size and width: build the
table on this machine (batch, threads as given), then time random configurations as whole subnets
in interleaved rounds and compare: MAPE, the worst error and Kendall's tau between predicted and
measured. Run it alone on a quiet machine:

    python benchmarks/bench_graph_latency.py --size 32 --width 0.5 --out benchmarks/results/graph_latency_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import search_spaces as ss  # noqa: E402
from metaprune.graph_latency import build_graph_latency_table  # noqa: E402
from metaprune.latency import device_description, lut_accuracy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", help="a registered family (default: every one)")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--width", type=float, default=0.5, help="the family's width multiplier")
    parser.add_argument("--batch", type=int, default=1, help="batch the table and the check are timed at")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--configs", type=int, default=12, help="random configurations checked per family")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    rows = []
    for name in args.family or ss.list_spaces():
        space = ss.create_space(name, 10, 3, args.size, args.width)
        start = time.perf_counter()
        table = build_graph_latency_table(space, args.batch, args.threads, progress=False)
        built_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        configs = [space.largest, space.smallest, *(ss.sample(space, rng) for _ in range(args.configs))]
        check = lut_accuracy(space, table, configs, threads=args.threads)
        measured = [row["measured_ms"] for row in check["configs"]]
        row = {
            "family": name, "ops": len(table.ops), "timings": len(table.entries),
            "build_s": round(built_s, 1),
            "mape_pct": round(check["mape_pct"], 2), "max_error_pct": round(check["max_error_pct"], 2),
            "kendall_tau": round(check["kendall_tau"], 3), "measured_ms": [round(min(measured), 3), round(max(measured), 3)],
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        head = {"device": device_description("cpu"), "size": args.size, "width": args.width, "batch": args.batch}
        args.out.write_text(json.dumps(head | {"threads": args.threads, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
