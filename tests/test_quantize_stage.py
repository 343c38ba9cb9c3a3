"""The quantize stage through the command line: INT8 beside FP32, QAT, reuse, and bad settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from metaprune.train import checkpoint_header
from tests.conftest import cli, finetuned_top1, onnx_counted_top1
from tests.test_cli import assert_clean_error


def test_a_winner_trained_from_scratch_quantized_with_qat_then_reuse(trained_run: Path, tmp_path: Path) -> None:
    """Also the winner trained from scratch when asked (once its own pipeline run, merged here: one
    quantize stage fewer in the suite)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    sets = ["distill.teacher=none", "quantize.qat=always", "quantize.qat_batch_size=32", "latency.runs=3"]
    sets += ["finetune.init=scratch", "search.max_flops=0.3"]
    for stage in ("search", "finetune", "quantize", "export"):
        result = cli(stage, run_dir=run, sets=sets, inprocess=True)
        assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finetune"]["init"] == "scratch" and summary["finetune"]["steps"] > 0
    assert summary["search"]["best"]["flops"] <= 0.3 * summary["base"]["flops"]
    assert summary["export"]["reload_max_abs_diff"] == 0.0 and summary["export"]["weights"] == "finetuned"
    quantized = summary["quantize"]
    assert quantized["config"] == summary["finetune"]["config"] and quantized["weights"] == "finetuned"
    assert quantized["qat_int8_top1"] is not None and quantized["int8_method"] in ("ptq", "qat")
    best = max(quantized["ptq_int8_top1"], quantized["qat_int8_top1"])
    assert quantized["int8_top1"] == best  # the better INT8 model is the artifact
    work = run / Path(quantized["files"]["fp32"]).parent
    # each figure, counted here from the file it names (within one image of 128: ONNX Runtime's thread count
    # there and here may order a sum differently); the PyTorch one from the fine-tuned checkpoint, exactly
    one_image = 100 / 128
    for key, path in (("fp32_top1", work / "model.onnx"), ("ptq_int8_top1", work / "model.int8.onnx"),
                      ("qat_int8_top1", work / "model.qat.onnx"), ("int8_top1", run / "export" / "model.int8.onnx")):  # fmt: skip
        assert abs(quantized[key] - onnx_counted_top1(path)) <= one_image, (key, quantized[key])
    assert quantized["pytorch_top1"] == summary["finetune"]["top1"] == finetuned_top1(run)
    header = checkpoint_header(work / "qat.pt")
    assert header["step"] == header["total_steps"] > 0 and (work / "model.qat.onnx").exists()
    assert (run / "export" / "model.int8.onnx").read_bytes() == (run / quantized["files"]["int8"]).read_bytes()
    assert {"bf16", "fp16", "fp32", "images"} <= set(quantized["half"]) and quantized["low_bit_weights"]["packed_mb"] > 0

    # the same model and settings again: the measurement is reused, nothing is redone
    again = cli("quantize", run_dir=run, sets=sets, inprocess=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["quantize"] == quantized


def test_bad_quantize_settings_are_one_line_errors(trained_run: Path, tmp_path: Path) -> None:
    for sets, words in (
        (["quantize.qat=sometimes"], ["quantize.qat", "auto, always or never"]),
        (["quantize.calibration=kl"], ["quantize.calibration", "minmax"]),
        (["compress.weight_bits=12"], ["compress.weight_bits"]),
        (["search.max_latency_ms=-1"], ["search.max_latency_ms"]),
    ):
        assert_clean_error(cli("quantize", run_dir=tmp_path / "run", sets=sets, inprocess=True), *words)
    assert not (tmp_path / "run").exists()
    assert_clean_error(cli("quantize", run_dir=trained_run, inprocess=True), "no finished search")
