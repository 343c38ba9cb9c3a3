"""The GPU check: every CUDA path of metaprune once, on the bundled digits, in a few minutes.

Run through benchmarks/gpu_check.sh (its header has the usage). Two commands:

    python benchmarks/gpu_check.py fetch   # here: the wheels the GPU machine lacks, into .whl/
    python benchmarks/gpu_check.py run     # there: the checks, one line each: ok|failed <path> <figure>

`run` drives the command line (`run_search.py STAGE --set device=...`), as a user would, and reads
what the runs wrote (summary.json, the study journal). A failed path prints
its reason and the rest go on; the exit status is the number of failed paths (at most 100).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CARRY_LIMIT_MIB = 64  # the device tool's limit on the working tree plus every carried path

# What metaprune imports at run time that the GPU machine's image lacks (device/KINDS.md lists what it
# has: torch, numpy, onnx, onnxruntime, pyyaml, tqdm, scikit-learn, pillow, matplotlib, pandas,
# pyarrow, requests, click, filelock, msgpack, protobuf, attrs, markupsafe, ...). Each is fetched at
# the version installed here, the one the tests ran against. typing-extensions and packaging are
# there too, but ray, pydantic and alembic want recent ones, and later versions are compatible.
MISSING = [
    "ray",  # search.executor=ray and finetune.top_k > 1 (Tune); slimmed below to fit the carry limit
    "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",  # ray
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # ray.tune imports pydantic
    "optuna", "alembic", "sqlalchemy", "mako", "colorlog",  # the study record
    "thop",  # FLOPs counts are checked against thop
    "typing-extensions", "packaging",
]  # fmt: skip
# Parts of the ray wheel no path here imports: Java workers, RLlib, Serve, LLM serving, the dashboard
# front end's source maps. 79 MB -> about 42 MB.
RAY_DROPPED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/")
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
MORE_PLATFORMS = ["manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]


# ---------------------------------------------------------------- fetch (on the machine with a registry)


def fetch(wheels: Path, python_version: str) -> int:
    """Download the missing wheels for `python_version`, slim ray's, and check the carry limit."""
    _ignore_in_git(wheels)
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = {name: importlib.metadata.version(name) for name in MISSING}
    for stale in wheels.glob("*.whl"):  # one version of each: two stop the whole install
        if not any(_wheel_is(stale, name, version) for name, version in wanted.items()):
            stale.unlink()
    for name, version in wanted.items():
        if not any(_wheel_is(w, name, version) for w in wheels.glob("*.whl")):
            _download(name, version, wheels, python_version)
    for wheel in wheels.glob("ray-*.whl"):
        _slim(wheel, RAY_DROPPED)
    return _report_sizes(wheels)


def _wheel_is(wheel: Path, name: str, version: str) -> bool:
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    dist, found = parse_wheel_filename(wheel.name)[:2]
    return dist == canonicalize_name(name) and found == Version(version)


def _download(name: str, version: str, wheels: Path, python_version: str) -> None:
    """The device README's command; with more manylinux tags when pip finds no match."""
    for platforms in (PLATFORMS, PLATFORMS + MORE_PLATFORMS):
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", python_version, "--implementation", "cp"]  # fmt: skip
        command += [arg for p in platforms for arg in ("--platform", p)] + ["-d", str(wheels), f"{name}=={version}"]
        if subprocess.run(command, capture_output=True, text=True).returncode == 0:
            return
    raise SystemExit(f"pip found no wheel of {name}=={version} for CPython {python_version} on manylinux x86-64")


def _slim(wheel: Path, dropped: tuple[str, ...]) -> None:
    """Rewrite a wheel without the files under `dropped` (and source maps), its RECORD to match."""
    with zipfile.ZipFile(wheel) as source:
        names = [n for n in source.namelist() if not n.startswith(dropped) and not n.endswith(".map")]
        if len(names) == len(source.namelist()):
            return  # slimmed already
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        kept = set(names)
        rows = [r for r in source.read(record).decode().splitlines() if r.split(",")[0] in kept]
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
            for name in names:
                info = source.getinfo(name)
                out.writestr(info, "\n".join(rows) + "\n" if name == record else source.read(name))
    slim.replace(wheel)


def _tree_bytes() -> int:
    """What the device tool sends besides `carry`: tracked and untracked files that git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    paths = [ROOT / p for p in listed.stdout.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def _report_sizes(wheels: Path) -> int:
    total = 0
    for wheel in sorted(wheels.glob("*.whl")):
        total += wheel.stat().st_size
        print(f"{wheel.stat().st_size / MIB:7.2f} MiB  {wheel.name}")
    tree = _tree_bytes()
    fits = total + tree <= CARRY_LIMIT_MIB * MIB
    print(f"wheels {total / MIB:.2f} MiB + working tree {tree / MIB:.2f} MiB = {(total + tree) / MIB:.2f} MiB "
          f"({'within' if fits else 'OVER'} the {CARRY_LIMIT_MIB} MiB limit)")  # fmt: skip
    carry = wheels.relative_to(ROOT) if wheels.is_relative_to(ROOT) else wheels
    print(f'carry: ["{carry}"]   command: bash benchmarks/gpu_check.sh')
    return 0 if fits else 1


def _ignore_in_git(wheels: Path) -> None:
    """The wheels must not travel as part of the working tree (nor be committed): ignore them locally."""
    if not wheels.is_relative_to(ROOT):
        return
    relative = wheels.relative_to(ROOT).as_posix()
    if subprocess.run(["git", "check-ignore", "-q", f"{relative}/x.whl"], cwd=ROOT).returncode != 0:
        exclude = ROOT / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as f:
            f.write(f"/{relative}/\n")


# ---------------------------------------------------------------- run (on the GPU machine)


class Failure(Exception):
    """A path failed: the message is the one-line reason printed after it."""


@dataclass
class Check:
    device: str  # cuda, or cpu for the self-test
    work: Path  # the run directories
    logs: Path  # one log per command
    deadline: float  # time.monotonic() by which every path must be done
    failed: list[str] = field(default_factory=list)

    @property
    def small(self) -> list[str]:
        """Settings of every run: the digits quickstart made small."""
        return [f"device={self.device}", "progress=false", "base.epochs=2", "pruningnet.epochs=2", "score.calib_images=200",
                "score.val_images=0", "search.population=8", "search.parents=3", "search.mutations=3", "search.crossovers=3",
                "search.generations=2", "finetune.epochs=2", "finetune.grace_epochs=1", "quantize.calib_images=128",
                "quantize.qat=never", "latency.warmup=1", "latency.runs=4"]  # fmt: skip

    def cli(self, log: str, stage: str, run: Path, *sets: str, args: tuple[str, ...] = (), device: str | None = None) -> float:
        """One run_search.py command; its seconds. Its output goes to logs/<log>.log."""
        settings = [s for s in self.small if not s.startswith("device=")] + [f"device={device or self.device}", *sets]
        command = [sys.executable, "run_search.py", stage, "--run-dir", str(run), *args]
        command += [arg for s in settings for arg in ("--set", s)]
        return self.command(log, command)

    def command(self, log: str, command: list[str]) -> float:
        left = self.deadline - time.monotonic()
        if left < 5:
            raise Failure("skipped: the time budget is spent")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
        }
        started = time.monotonic()
        with (self.logs / f"{log}.log").open("a") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=left)
            except subprocess.TimeoutExpired:
                raise Failure(f"timed out after {left:.0f} s (logs/{log}.log)") from None
        if done.returncode != 0:
            raise Failure(f"exit {done.returncode}: {_last_error(self.logs / f'{log}.log')} (logs/{log}.log)")
        return time.monotonic() - started

    def path(self, name: str, body: Callable[[], str]) -> None:
        """Run one path and print its line; never raise."""
        try:
            line = f"ok {name} {body()}"
        except Exception as exc:
            self.failed.append(name)
            reason = str(exc) if isinstance(exc, Failure) else f"{exc.__class__.__name__}: {exc}"
            line = f"failed {name} {reason.splitlines()[0][:300] if reason else ''}"
        print(line, flush=True)
        with (self.logs / "gpu_check.txt").open("a") as f:
            f.write(line + "\n")


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:240]


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def amp_probe(check: Check) -> str:
    """The dtype the training loop's convolutions run in with amp=True on this device (bf16 on CUDA):
    runs no longer record amp in their checkpoints (it is left out of identities)."""
    import torch
    from torch import nn

    from metaprune.data import ImageData, Normalizer
    from metaprune.train import OptimConfig, train

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).to(check.device)
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    data = ImageData(
        torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (64,)), [str(i) for i in range(10)]
    )
    with tempfile.TemporaryDirectory() as work:
        train(
            model, lambda x, step: model(x), data, Normalizer([0.5], [0.25]), OptimConfig(epochs=1, batch_size=32),
            seed=0, checkpoint=Path(work) / "probe.pt", device=check.device, progress=False, amp=True,
        )  # fmt: skip
    expected = torch.bfloat16 if check.device == "cuda" else torch.float32
    if set(seen) != {expected}:
        raise Failure(f"convolutions ran in {sorted(map(str, set(seen)))} with amp=True, expected {expected}")
    return f"conv_dtype={expected} steps={len(seen)}"


def _scores(run: Path) -> dict[tuple[Any, ...], float]:
    """Every scored configuration of a run's studies -> its proxy top-1 (read with Optuna itself)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "study.journal")))
    scores = {}
    for name in optuna.get_all_study_names(storage):
        for trial in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            if trial.user_attrs.get("status") == "scored" and trial.values:
                scores[tuple(sorted(trial.params.items()))] = trial.values[0]
    return scores


def setup_line(check: Check) -> str:
    import torch

    versions = []
    for module in ("ray", "optuna", "thop", "onnx", "onnxruntime", "yaml", "tqdm", "sklearn", "matplotlib", "PIL"):
        imported = __import__(module)
        versions.append(f"{module}={getattr(imported, '__version__', '?')}")
    import ray.tune  # noqa: F401  (its own imports: pydantic, pandas, pyarrow)

    where = f"torch={torch.__version__}"
    if check.device == "cuda":
        if not torch.cuda.is_available():
            raise Failure(f"torch {torch.__version__} sees no CUDA GPU")
        where += f" gpu='{torch.cuda.get_device_name()}' bf16={torch.cuda.is_bf16_supported()}"
    return f"{where} {' '.join(versions)}"


def run_checks(check: Check) -> int:
    amp = check.work / "amp"
    latency = ["search.max_latency_ms=1000"]  # far above any subnet's: the table is built and checked, nothing is cut
    check.path("setup", lambda: setup_line(check))
    check.path("amp.autocast", lambda: amp_probe(check))
    check.path("train-base.amp", lambda: _train(check, amp, "train-base", "base.pt"))
    check.path("train-pruningnet.amp", lambda: _train(check, amp, "train-pruningnet", "pruningnet.pt"))
    check.path("proxy.cuda-vs-cpu", lambda: _proxy(check, amp))
    check.path("search.inprocess", lambda: _search(check, amp, "search-inprocess", (), ()))
    check.path(
        "search.ray-1-actor",
        lambda: _search(check, amp, "search-ray", ("search.seed=1",), ("--executor", "ray", "--workers", "1")),
    )
    check.path("latency-table", lambda: _latency(check, amp, latency))
    check.path("finetune.tune-top2", lambda: _tune(check, amp, latency))
    check.path("quantize", lambda: _quantize(check, amp, latency))
    check.path("export", lambda: _export(check, amp, latency))
    check.path("tests.distill-devices", lambda: _tests(check))
    return len(check.failed)


def _train(check: Check, run: Path, stage: str, checkpoint: str) -> str:
    seconds = check.cli(stage, stage, run, "amp=true")
    if not (run / checkpoint).is_file():
        raise Failure(f"no {checkpoint} after {stage}")
    top1 = _summary(run).get("base", {}).get("top1") if stage == "train-base" else None
    return (f"top1={top1:.2f}% " if top1 is not None else "") + f"{seconds:.1f}s"


def _search(check: Check, run: Path, log: str, sets: tuple[str, ...], args: tuple[str, ...]) -> str:
    searcher = ("--searcher", "random") if args else ()
    seconds = check.cli(log, "search", run, "amp=true", *sets, args=args + searcher)
    found = _summary(run)["search"]
    pool = json.dumps(found.get("pool"), separators=(",", ":"))[:160]
    return (f"scored={found['scored_this_run']} best_proxy={found['best']['proxy_top1']:.2f}% executor='{found['executor']}' "
            f"pool={pool} {seconds:.1f}s")  # fmt: skip


def _proxy(check: Check, run: Path) -> str:
    """The run's PruningNet checkpoint (trained on this device, with AMP) scored here and, in a copy
    of the run directory, on the CPU: the random searcher proposes the same configurations on both."""
    on_cpu = run.with_name("proxy-cpu")
    shutil.rmtree(on_cpu, ignore_errors=True)
    shutil.copytree(run, on_cpu, ignore=shutil.ignore_patterns("study.journal*"))  # the CPU copy scores every config itself
    sets, args = ("amp=true", "search.seed=2"), ("--searcher", "random")
    here = check.cli("proxy-search", "search", run, *sets, args=args)
    cpu = check.cli("proxy-search-cpu", "search", on_cpu, *sets, args=args, device="cpu")
    a, b = _scores(run), _scores(on_cpu)
    common = sorted(set(a) & set(b))
    if not common:
        raise Failure(f"no configuration scored on both devices ({len(a)} on {check.device}, {len(b)} on cpu)")
    diff = max(abs(a[c] - b[c]) for c in common)
    return f"max_abs_diff={diff:.3f} points over {len(common)} configs ({check.device} {here:.1f}s, cpu {cpu:.1f}s)"


def _latency(check: Check, run: Path, latency: list[str]) -> str:
    seconds = check.cli("latency", "search", run, "amp=true", *latency)
    report = _summary(run)["search"]["latency"]
    table = report["table_check"]
    return (f"device='{report['device']}' best_predicted_ms={report['best_predicted_ms']:.3f} mape={table['mape_pct']:.1f}% "
            f"tau={table['kendall_tau']} {seconds:.1f}s")  # fmt: skip


def _tune(check: Check, run: Path, latency: list[str]) -> str:
    seconds = check.cli("finetune-tune", "finetune", run, "amp=true", "finetune.top_k=2", *latency)
    tuned = _summary(run)["finetune"]
    tune = tuned.get("tune", {})
    epochs = {t["name"]: t["epochs"] for t in tune.get("trials", [])}
    return f"top1={tuned['top1']:.2f}% survivor={tune.get('survivor')} epochs_per_trial={epochs} {seconds:.1f}s"


def _quantize(check: Check, run: Path, latency: list[str]) -> str:
    seconds = check.cli("quantize", "quantize", run, "amp=true", "finetune.top_k=2", *latency)
    q = _summary(run)["quantize"]
    half = " ".join(
        f"{k}={v:.2f}%" if isinstance(v, float) else f"{k}={v}" for k, v in q.get("half", {}).items() if k in ("bf16", "fp16")
    )
    return f"fp32={q['fp32_top1']:.2f}% int8={q['int8_top1']:.2f}% pytorch={q['pytorch_top1']:.2f}% {half} {seconds:.1f}s"


def _export(check: Check, run: Path, latency: list[str]) -> str:
    seconds = check.cli("export", "export", run, "amp=true", "finetune.top_k=2", *latency)
    files = sorted(p.name for p in (run / "export").iterdir())
    return f"files={','.join(files)} {seconds:.1f}s"


def _tests(check: Check) -> str:
    # -o addopts=: pyproject's xdist options need pytest-xdist, which the GPU machine's image lacks
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    check.command("tests", [*pytest, "tests/test_distill_devices.py"])
    lines = (check.logs / "tests.log").read_text().strip().splitlines()
    return lines[-1].strip("= ") if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("fetch", "run"))
    parser.add_argument("--wheels", type=Path, default=Path(os.environ.get("GPU_CHECK_WHEELS", ROOT / ".whl")))
    parser.add_argument("--python-version", default=os.environ.get("GPU_CHECK_PYTHON_VERSION", "3.12"))
    parser.add_argument("--device", default=os.environ.get("GPU_CHECK_DEVICE", "cuda"), choices=("cuda", "cpu"))
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("GPU_CHECK_WORK", Path(tempfile.gettempdir()) / "gpu_check"))
    )
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 330)))
    args = parser.parse_args()
    if args.mode == "fetch":
        raise SystemExit(fetch(args.wheels.resolve(), args.python_version))
    shutil.rmtree(args.work, ignore_errors=True)
    out = Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else args.work / "logs"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    check = Check(args.device, args.work, out, time.monotonic() + args.budget_s)
    raise SystemExit(min(run_checks(check), 100))


if __name__ == "__main__":
    main()
