"""The command line as a user meets it: the pipeline, the exported files, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import search_spaces as ss
from tests.conftest import cli, counted_top1, finetuned_top1, hold_at, onnx_counted_top1, scored_configs, study_trials, wait_held


def test_pipeline_runs_and_exported_subnet_reloads(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli(run_dir=run_dir)  # no stage: the whole pipeline
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) >= {"base", "pruningnet", "search", "finetune", "export"}
    best = summary["search"]["best"]
    assert best["flops"] <= 0.5 * summary["base"]["flops"]
    assert summary["search"]["evaluated"] == len(scored_configs(run_dir)) == len(set(scored_configs(run_dir)))
    assert summary["finetune"]["flops"] == best["flops"] and (run_dir / "config.yaml").exists()

    # the exported files alone rebuild the model: copy them away from the run and its PruningNet
    alone = tmp_path / "alone"
    shutil.copytree(run_dir / "export", alone)
    arch = json.loads((alone / "architecture.json").read_text())
    model = ss.load_subnet(alone)
    reference = ss.subnet_from_architecture(arch)
    reference.load_state_dict(torch.load(run_dir / "export" / "weights.pt", weights_only=True))
    x = torch.randn(3, arch["input"]["channels"], arch["input"]["size"], arch["input"]["size"])
    torch.testing.assert_close(model(x), reference.eval()(x), rtol=0, atol=0)
    space = ss.space_from_payload({"graph": arch["recipe"], "order": arch["order"]})
    assert ss.count(space, space.from_channels(arch["config"])).flops == best["flops"] == arch["flops"]
    # the summary's test top-1 is that of the exported (fine-tuned) weights, counted here on the test split
    assert summary["export"]["weights"] == "finetuned"
    assert summary["finetune"]["top1"] == counted_top1(model, arch["input"]["mean"], arch["input"]["std"])
    assert summary["finetune"]["top1"] == finetuned_top1(run_dir) == summary["quantize"]["pytorch_top1"]
    _check_deployables(alone, model, arch, summary, tmp_path)

    # a second run of the same command finds everything done and redoes nothing
    again = cli(run_dir=run_dir, inprocess=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "summary.json").read_text())["search"]["scored_this_run"] == 0
    assert (run_dir / "export" / "weights.pt").stat().st_mode & 0o044, "results must be readable by others"

    # the same PruningNet searched at another budget (written as absolute FLOPs): no retraining,
    # the earlier fine-tune is kept on disk and the summary no longer claims it for the new winner
    budget = f"{0.3 * summary['base']['flops']:.6e}"
    again = cli("search", run_dir=run_dir, sets=[f"search.max_flops={budget}"], inprocess=True)
    assert again.returncode == 0, again.stderr
    new = json.loads((run_dir / "summary.json").read_text())
    assert new["search"]["best"]["flops"] <= 0.3 * summary["base"]["flops"] and new["pruningnet"] == summary["pruningnet"]
    assert "finetune" not in new and len(list((run_dir / "finetune").iterdir())) == 1
    assert cli("finetune", run_dir=run_dir, sets=[f"search.max_flops={budget}"], inprocess=True).returncode == 0
    assert len(list((run_dir / "finetune").iterdir())) == 2


def _check_deployables(alone: Path, model: torch.nn.Module, arch: dict, summary: dict, tmp_path: Path) -> None:
    """model.onnx runs in ONNX Runtime without this project or torch; model.pt2 with plain torch;
    both take pixels / 255 and equal the subnet on normalised input. INT8 is smaller and close."""
    import subprocess
    import sys

    import numpy as np

    quantized = summary["quantize"]
    assert {"fp32_top1", "int8_top1", "fp32_latency_ms", "int8_latency_ms", "fp32_mb", "int8_mb"} <= set(quantized)
    assert quantized["int8_mb"] < quantized["fp32_mb"] and abs(quantized["fp32_top1"] - quantized["pytorch_top1"]) <= 2
    assert set(quantized["latency_ms"]) == {"batch_1", "batch_32"} and quantized["onnx_max_abs_diff"] < 1e-4
    assert {"model.onnx", "model.pt2", "model.int8.onnx"} <= {Path(f).name for f in summary["export"]["files"]}
    pixels = torch.rand(5, arch["input"]["channels"], arch["input"]["size"], arch["input"]["size"])
    mean, std = (torch.tensor(arch["input"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = model((pixels - mean) / std)
    np.save(tmp_path / "x.npy", pixels.numpy())
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "for name in ('model.onnx', 'model.int8.onnx'):\n"
        "    out = ort.InferenceSession(sys.argv[1] + '/' + name).run(None, {'images': np.load(sys.argv[2])})[0]\n"
        "    np.save(sys.argv[2] + '.' + name + '.npy', out)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'metaprune', 'search_spaces')]\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(alone), str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # the quantize stage's top-1 figures, counted here from the exported files (within one image of 128:
    # ONNX Runtime's thread count there and here may order a sum differently)
    for name, key in (("model.onnx", "fp32_top1"), ("model.int8.onnx", "int8_top1")):
        assert abs(quantized[key] - onnx_counted_top1(alone / name)) <= 100 / 128, (key, quantized[key])
    fp32 = torch.from_numpy(np.load(tmp_path / "x.npy.model.onnx.npy"))
    torch.testing.assert_close(fp32, expected, rtol=0, atol=1e-4)
    int8 = torch.from_numpy(np.load(tmp_path / "x.npy.model.int8.onnx.npy"))
    assert (int8 - expected).abs().max() < 0.25 * (expected.max() - expected.min())  # INT8: close, not equal
    program = torch.export.load(str(alone / "model.pt2")).module()
    torch.testing.assert_close(program(pixels), expected, rtol=0, atol=1e-5)


def assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bad_input_gives_one_line_error_and_changes_nothing(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = snapshot(run_dir)
    cases = [
        (["search"], ["space.family=resnet21"], ["unknown search space 'resnet21'", "resnet20"]),
        (["search"], ["search.max_flops=1000"], ["below the smallest configuration", "raise the budget"]),
        (["search"], ["search.max_flop=0.5"], ["unknown config key 'search.max_flop'", "max_flops"]),
        (["search"], ["data.kind=folder", f"data.path={tmp_path / 'missing'}"], ["does not exist", "missing"]),
        (["search"], ["data.kind=folder", f"data.path={tmp_path / 'empty'}"], ["holds no images"]),
        (["search"], ["pruningnet.lr=0.2"], ["pruningnet.pt", "pruningnet.lr", "new --run-dir", "study.journal"]),
        (["search"], ["search.min_flops=0.9", "search.max_flops=0.5"], ["window", "empty"]),
        (["search"], ["score.calib_batch_size=5000"], ["score.calib_images", ">= score.calib_batch_size"]),
        (["search"], ["pruningnet.batch_size=100000"], ["pruningnet.batch_size", "lower it"]),
        (["pipeline"], ["finetune.init=foo"], ["finetune.init", "inherit, filter or scratch"]),
        (["pipeline"], ["pruningnet.init=warm"], ["pruningnet.init", "auto, trained or scratch"]),
        (["pipeline"], ["pruningnet.ranking=taylor"], ["pruningnet.ranking", "l1, l1_mean, bn"]),
        (["pipeline"], ["pruningnet.epochs=0"], ["pruningnet.epochs", "0 needs pruningnet.init=trained"]),
        (["pipeline"], ["space.channel_multiple=0"], ["space.channel_multiple", "in [1, 256]"]),
        (["pipeline"], ["data.mean=[0.5]", "data.std=[0.2]"], ["data.mean has 1 values", "3 channels"]),
        (["pipeline"], ["data.mean=[0.5, 0.5, 0.5]"], ["data.std", "set together with data.mean"]),
        (["pipeline"], [f"base.weights={tmp_path / 'none.pt'}"], ["base.weights", "none.pt does not exist"]),
        (["search"], ["seed=[1"], ["cannot read value"]),
        (["search"], ["search.searcher=cmaes"], ["search.searcher", "nsga2"]),
        (["search"], ["search.executor=ray", "search.ray_address=127.0.0.1:1"], ["cannot reach the Ray cluster", "127.0.0.1:1"]),
        (["export"], ["search.workers=0"], ["search.workers", ">= 1"]),
    ]
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    for stage, sets, fragments in cases:
        assert_clean_error(cli(*stage, run_dir=run_dir, sets=sets, inprocess=True), *fragments)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("search:\n  budget: 3\n")
    assert_clean_error(
        cli("search", "--config", str(config_file), run_dir=run_dir), "unknown config key 'search.budget'"
    )  # fresh process
    assert snapshot(run_dir) == before


def test_corrupt_checkpoint_is_a_clear_error(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    checkpoint = run_dir / "pruningnet.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = snapshot(run_dir)
    assert_clean_error(cli("search", run_dir=run_dir), "pruningnet.pt", "corrupt", "delete it")
    assert_clean_error(cli("train-pruningnet", run_dir=run_dir), "pruningnet.pt", "corrupt")
    assert snapshot(run_dir) == before


def test_stage_order_is_explained_and_nothing_is_created(tmp_path: Path) -> None:
    assert_clean_error(cli("search", run_dir=tmp_path / "fresh", inprocess=True), "train-pruningnet")
    assert_clean_error(cli("finetune", run_dir=tmp_path / "fresh", inprocess=True), "no finished search")
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "file").write_text("x")
    assert_clean_error(cli("search", run_dir=tmp_path / "file", inprocess=True), "is a file")
    assert_clean_error(cli("train-pruningnet", run_dir=tmp_path / "file" / "run"), "cannot write --run-dir")


def test_temp_files_of_killed_writes_are_cleaned(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    leftover = run_dir / ".pruningnet.pt.abc123.metaprune-tmp"
    leftover.write_bytes(b"half a checkpoint")
    unrelated = run_dir / ".notes.tmp"
    unrelated.write_text("the user's own file")
    assert cli("train-pruningnet", run_dir=run_dir).returncode == 0
    assert not leftover.exists() and unrelated.exists()


def test_settings_that_cannot_change_results_do_not_block_reuse(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    trained = (run_dir / "pruningnet.pt").read_bytes()
    sets = ["pruningnet.checkpoint_every=7", "score.eval_batch_size=17", "progress=true", "threads=2"]
    result = cli("search", run_dir=run_dir, sets=sets)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "pruningnet.pt").read_bytes() == trained, "the PruningNet was trained again"
    summary = json.loads((run_dir / "summary.json").read_text())["search"]
    assert summary["trials"] == len(study_trials(run_dir)) == 8 * 3  # the whole search ran, on the trained PruningNet
    assert summary["scored_this_run"] == summary["evaluated"] == len(scored_configs(run_dir)) > 0


def test_help_explains_every_stage_and_option() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for word in ("train-pruningnet", "search", "finetune", "export", "pipeline", "--set", "--run-dir", "--config"):
        assert word in result.stdout
    stage_help = cli("search", "--help").stdout
    assert "--set" in stage_help and "max_flops" in stage_help
    from metaprune.config import RunConfig

    def leaves(prefix: str, value: object) -> list[str]:  # every setting, nested sections (search.evolution.*) too
        if not isinstance(value, dict):
            return [prefix]
        return [name for key, sub in value.items() for name in leaves(f"{prefix}.{key}" if prefix else key, sub)]

    names = leaves("", RunConfig().to_dict())
    assert "search.evolution.parents" in names and "search.rounds.batch" in names
    for name in names:
        line = next((line for line in result.stdout.splitlines() if line.startswith(f"  {name} = ")), None)
        assert line is not None, f"--help does not list setting {name}"
        assert len(line.split("  ")) > 2 and len(line.strip()) > 45, f"--help does not explain {name}: {line!r}"


def test_a_second_process_on_the_same_run_dir_is_refused(trained_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    release = tmp_path / "release"
    first = cli("search", run_dir=run_dir, background=True, env=hold_at("recorded", 1, release))
    try:
        wait_held(first, release)  # holding the run's lock, mid-search
        assert_clean_error(cli("search", run_dir=run_dir), "another process", "--run-dir")
    finally:
        first.kill()
        first.wait()
    # the holder died by SIGKILL: its lock went with it, and the same command resumes to an uninterrupted run's study
    result = cli("search", run_dir=run_dir)
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "reference"
    shutil.copytree(trained_run, reference)
    assert cli("search", run_dir=reference, inprocess=True).returncode == 0
    assert [(t.params, t.values) for t in study_trials(run_dir)] == [(t.params, t.values) for t in study_trials(reference)]
