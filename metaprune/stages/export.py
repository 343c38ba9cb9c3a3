"""export: architecture.json + weights.pt (rebuilt by `search_spaces.load_subnet`), model.onnx
(checked against PyTorch with ONNX Runtime), model.pt2 (a torch.export program) and, when
`quantize` ran for the same model, model.int8.onnx. Each is reloaded and compared. A picked point
(--trial, --max-flops) goes to export/trial-N/.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import torch

import search_spaces as ss
from metaprune import deploy
from metaprune.choice import Chosen, chosen_model
from metaprune.context import Context
from metaprune.data import Normalizer
from metaprune.io import atomic_torch_save, atomic_write_json
from metaprune.results import ExportResult
from metaprune.run_dir import EXPORT
from metaprune.stages.quantize import finished, work_dir


def run(run: Context) -> ExportResult:
    chosen = chosen_model(run)
    run.begin()
    config, model, space = chosen.candidate.config, copy.deepcopy(chosen.model).cpu().eval(), run.space  # (the caller's stays)
    out = run.dir / EXPORT
    if run.pick.picked:
        out = out / f"trial-{chosen.candidate.trial}"
    files, reload_diff = export_model(model, space, config, run.prepared.normalizer, run.splits.train.classes, out)
    onnx_diff, program_diff, deployables = _deployables(run, model, out)
    files += deployables
    int8 = _quantized(run, chosen)
    if int8 is not None:
        shutil.copyfile(int8, out / "model.int8.onnx")
        files.append(str(out / "model.int8.onnx"))
    summary = ExportResult(
        files=files, reload_max_abs_diff=reload_diff, onnx_max_abs_diff=onnx_diff, program_max_abs_diff=program_diff,
        weights=chosen.weights, config=list(config),
    )  # fmt: skip
    if run.pick.picked:  # exports of other points are listed beside the winner's
        run.store.report("exports", {**run.store.results("exports", ExportResult), out.name: summary})
    else:
        run.store.report("export", summary)
    if chosen.weights == "generated":
        print(
            "note: exported generated weights (not fine-tuned); `run_search.py finetune` with the same choice trains them",
            file=sys.stderr,
        )
    return summary


def _deployables(run: Context, model: torch.nn.Module, out: Path) -> tuple[float, float, list[str]]:
    """model.onnx and model.pt2 (normalisation baked in: input pixels / 255), each reloaded and compared:
    the largest output difference of each, and the two files."""
    shape = run.image_shape()
    deployable = deploy.Deployable(model, run.prepared.normalizer).eval()
    onnx_path = deploy.export_onnx(deployable, shape, out / "model.onnx")
    x = deploy._example(shape, 4)
    program_diff = deploy.export_program(deployable, x, out / "model.pt2")
    return deploy.onnx_max_abs_diff(deployable, onnx_path, x), program_diff, [str(onnx_path), str(out / "model.pt2")]


def _quantized(run: Context, chosen: Chosen) -> Path | None:
    """The INT8 file of a finished `quantize` of this very model under these settings."""
    done = finished(run, work_dir(run, chosen))
    return None if done is None else run.dir / done.files.int8


def export_model(
    model: torch.nn.Module,
    space: ss.GraphSpace,
    config: ss.Config,
    normalizer: Normalizer,
    classes: list[str],
    out: Path,
) -> tuple[list[str], float]:
    """Save a plain subnet so that `search_spaces.load_subnet(out)` rebuilds it with equal outputs:
    the files, and the largest output difference of the rebuilt subnet."""
    inputs = {"channels": space.in_channels, "size": space.resolution, "mean": normalizer.mean, "std": normalizer.std}
    cost = ss.count(space, config)
    atomic_torch_save(out / "weights.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    files = [str(out / "weights.pt")]
    if not isinstance(space.recipe.get("model"), str):
        # a module handed to metaprune.prune: no code to name, so the check reloads into this process's space
        reloaded: torch.nn.Module = ss.build_graph_subnet(space, config)
        reloaded.load_state_dict(torch.load(out / "weights.pt", map_location="cpu", weights_only=True))
    else:
        arch = ss.architecture(space, config, input=inputs, classes=classes, flops=cost.flops, params=cost.params)
        atomic_write_json(out / "architecture.json", arch)
        files.insert(0, str(out / "architecture.json"))
        reloaded = ss.load_subnet(out)
    x = torch.randn(4, space.in_channels, space.resolution, space.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((reloaded(x) - model.cpu().eval()(x)).abs().max())
    return files, diff
