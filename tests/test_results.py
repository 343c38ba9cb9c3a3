"""The typed stage results (metaprune.results): what summary.json holds, written and read back
byte for byte as the stages wrote it before they had types."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from metaprune.results import (
    Assistant,
    BaseResult,
    DistillResult,
    ExportResult,
    FinetuneResult,
    PruningNetResult,
    QuantizeResult,
    Result,
    SearchResult,
    SearchTiming,
    TuneReport,
    TuneTrial,
    from_json,
    to_json,
)
from metaprune.run_dir import RunDir

CONFIG = [0, 0, 6, 0, 0, 0, 3, 2, 2, 5, 5, 5]
OTHER = [0, 1, 3, 0, 0, 0, 0, 0, 0, 5, 4, 5]

# A summary.json as the stages wrote it as plain dicts (a FAST run: pipeline, then `export --trial 3`,
# `finetune` with distill.assistant_width=0.5, `search` with search.max_latency_ms=1000); lists shortened.
OLD_SUMMARY: dict[str, Any] = {
    "base": {"flops": 2679456, "params": 68588, "space": "resnet20", "top1": 27.34375, "steps": 10, "checkpoint": "base.pt"},
    "pruningnet": {"steps": 20, "final_loss": 1.3088136315345764, "checkpoint": "pruningnet.pt", "init": "trained"},
    "search": {
        "searcher": "evolution", "study": "evolution-a3b2df9a", "storage": "/runs/a/study.journal", "executor": "inprocess",
        "pool": {"nodes": []}, "evaluated": 24, "trials": 24, "scored_this_run": 0, "budget_flops": 1339728.0,
        "best": {
            "trial": 9, "config": CONFIG, "channels": {"stage1": 4, "stage2": 4, "stage3": 28, "s3b2_mid": 24},
            "flops": 989004, "flops_ratio": 0.3691062663466017, "params": 35736, "proxy_top1": 64.0625,
        },
        "pareto": [
            {"trial": 3, "config": OTHER, "flops": 688720, "params": 21048, "proxy_top1": 39.0625},
            {"trial": 9, "config": CONFIG, "flops": 989004, "params": 35736, "proxy_top1": 64.0625},
        ],
        "plot": "search_front.png",
        "timing": {"driver_s": 0.065, "scoring_s": 0.0, "driver_share": None},
        "latency": {
            "max_latency_ms": 1000.0, "batch": 1, "threads": 1, "device": "AMD EPYC, 2 cores, torch 2.13.0+cpu",
            "best_predicted_ms": 1.2869170203715385,
            "table_check": {
                "mape_pct": 0.8916029518911981, "max_error_pct": 1.5998965292336715, "kendall_tau": 0.3333333333333333,
                "configs": [{"config": OTHER, "predicted_ms": 1.2458899581155416, "measured_ms": 1.2661470000239206,
                             "error_pct": -1.5998965292336715}],
            },
        },
    },
    "finetune": {"top1": 45.3125, "flops": 989004, "params": 35736, "config": CONFIG, "steps": 10, "init": "inherit",
                 "checkpoint": "finetune/ac9943739535.pt"},
    "distill": {
        "top1": 45.3125, "teacher_top1": 27.34375, "teachers": ["assistant"], "alpha": 1.0, "temperature": 4.0,
        "assistant": {"width": 0.5, "flops": 708944, "config": [0, 1, 3, 0, 0, 0, 1, 1, 1, 3, 3, 3]}, "config": CONFIG,
    },
    "quantize": {
        "config": CONFIG, "weights": "finetuned", "runtime": "onnxruntime", "fp32_top1": 60.15625, "int8_top1": 60.15625,
        "int8_method": "ptq", "ptq_int8_top1": 60.15625, "qat_int8_top1": None, "fp32_mb": 0.153465, "int8_mb": 0.091723,
        "fp32_latency_ms": 0.13063500000498607, "int8_latency_ms": 0.16766399994594394, "int8_speedup": 0.7791475811569789,
        "latency_ms": {
            "batch_1": {"onnxruntime_fp32": 0.1306, "onnxruntime_int8": 0.1676, "pytorch_fp32": 1.435},
            "batch_32": {"onnxruntime_fp32": 2.032, "onnxruntime_int8": 3.016, "pytorch_fp32": 6.164},
        },
        "latency_threads": 1, "pytorch_top1": 60.15625, "onnx_max_abs_diff": 9.5367431640625e-07,
        "half": {"images": 128, "fp32": 60.15625, "bf16": 60.15625, "fp16": 60.15625},
        "dynamic_linear_int8": {"top1": 60.15625, "mb": 0.158242},
        "low_bit_weights": {"scheme": "kmeans", "bits": 4, "top1": 60.15625, "packed_mb": 0.023478},
        "unstructured": {"sparsity": 0.5, "top1": 61.71875, "sparse_mb": 0.079262, "dense_mb": 0.145256},
        "files": {"fp32": "quantize/5e45c2b88195/model.onnx", "int8": "quantize/5e45c2b88195/model.int8.onnx"},
        "max_drop_exceeded": False,
    },
    "export": {
        "files": ["/runs/a/export/architecture.json", "/runs/a/export/weights.pt", "/runs/a/export/model.onnx",
                  "/runs/a/export/model.pt2", "/runs/a/export/model.int8.onnx"],
        "reload_max_abs_diff": 0.0, "onnx_max_abs_diff": 9.5367431640625e-07, "program_max_abs_diff": 0.0,
        "weights": "finetuned", "config": CONFIG,
    },
    "exports": {
        "trial-3": {
            "files": ["/runs/a/export/trial-3/architecture.json", "/runs/a/export/trial-3/weights.pt",
                      "/runs/a/export/trial-3/model.onnx", "/runs/a/export/trial-3/model.pt2"],
            "reload_max_abs_diff": 0.0, "onnx_max_abs_diff": 1.430511474609375e-06, "program_max_abs_diff": 0.0,
            "weights": "generated", "config": OTHER,
        }
    },
}  # fmt: skip

STAGES: dict[str, type[Result]] = {
    "base": BaseResult,
    "pruningnet": PruningNetResult,
    "search": SearchResult,
    "finetune": FinetuneResult,
    "distill": DistillResult,
    "quantize": QuantizeResult,
    "export": ExportResult,
}


def as_written(data: object) -> str:
    return json.dumps(data, indent=2) + "\n"  # as metaprune.io.atomic_write_json writes summary.json


def test_an_old_summary_reads_back_typed_and_writes_out_identically(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(as_written(OLD_SUMMARY))
    store = RunDir(tmp_path)
    typed = {stage: store.result(stage, cls) for stage, cls in STAGES.items()}
    exports = store.results("exports", ExportResult)
    search = typed["search"]
    assert isinstance(search, SearchResult) and search.latency is not None
    assert search.best.flops_ratio == 0.3691062663466017 and search.pareto[0].trial == 3
    assert search.latency.table_check.configs[0].error_pct == -1.5998965292336715 and search.timing.driver_share is None
    assert isinstance(typed["quantize"], QuantizeResult) and typed["quantize"].files.int8.endswith("model.int8.onnx")
    assert exports["trial-3"].weights == "generated"
    for stage, result in typed.items():  # reported again, stage by stage: the same bytes
        assert result is not None
        store.report(stage, result)
    store.report("exports", exports)
    assert (tmp_path / "summary.json").read_text() == as_written(OLD_SUMMARY)


@pytest.mark.parametrize("stage", [*STAGES, "exports"])
def test_each_stage_of_the_old_summary_round_trips(stage: str) -> None:
    data = OLD_SUMMARY[stage]
    if stage == "exports":
        typed = {name: from_json(ExportResult, one) for name, one in data.items()}
        assert as_written(to_json(typed)) == as_written(data)
        return
    result = from_json(STAGES[stage], data)
    assert as_written(to_json(result)) == as_written(data)  # keys, their order, values, nulls
    assert from_json(STAGES[stage], to_json(result)) == result


def round_trip(result: Any) -> dict[str, Any]:
    """The result's JSON, checked to read back as an equal result (through the text, as summary.json)."""
    data = json.loads(json.dumps(to_json(result)))
    assert from_json(type(result), data) == result
    return data


def test_base_leaves_out_what_this_run_did_not_do() -> None:
    figures = BaseResult(flops=2679456, params=68588, space="resnet20")
    assert list(round_trip(figures)) == ["flops", "params", "space"]  # Context.begin, before train-base
    trained = BaseResult(flops=2679456, params=68588, space="resnet20", top1=27.34375, steps=10, checkpoint="base.pt")
    assert list(round_trip(trained)) == ["flops", "params", "space", "top1", "steps", "checkpoint"]
    users = BaseResult(flops=2679456, params=68588, space="resnet20", top1=81.5, weights="/data/my_resnet20.pt")
    assert list(round_trip(users)) == ["flops", "params", "space", "top1", "weights"]


def test_a_figure_that_could_not_be_had_is_written_as_null() -> None:
    untrained = PruningNetResult(steps=0, final_loss=None, checkpoint="pruningnet.pt", init="trained")
    assert round_trip(untrained) == {"steps": 0, "final_loss": None, "checkpoint": "pruningnet.pt", "init": "trained"}
    assert round_trip(SearchTiming(driver_s=0.02, scoring_s=0.0, driver_share=None))["driver_share"] is None
    quantized = from_json(QuantizeResult, copy.deepcopy(OLD_SUMMARY["quantize"]))
    assert quantized.qat_int8_top1 is None and round_trip(quantized)["qat_int8_top1"] is None
    quantized.qat_int8_top1, quantized.int8_method, quantized.half.bf16 = 64.0625, "qat", None
    data = round_trip(quantized)
    assert data["qat_int8_top1"] == 64.0625 and data["half"] == {"images": 128, "fp32": 60.15625, "bf16": None, "fp16": 60.15625}


def test_search_without_a_latency_budget_has_no_latency_key() -> None:
    search = from_json(SearchResult, OLD_SUMMARY["search"])
    search.latency = None
    data = round_trip(search)
    assert "latency" not in data and list(data)[-2:] == ["plot", "timing"]


def test_a_top_k_fine_tune_reports_its_trials_instead_of_steps() -> None:
    trials = [
        TuneTrial(name="trial-9", config=CONFIG, epochs=1, val_top1=71.875, stopped_early=False),
        TuneTrial(name="trial-18", config=OTHER, epochs=2, val_top1=73.4375, stopped_early=True),
    ]
    tuned = FinetuneResult(
        top1=67.1875, flops=891468, params=29664, config=OTHER, init="inherit", checkpoint="finetune/03891349864d.pt",
        tune=TuneReport(study="evolution-be6b102c", survivor="trial-18", trials=trials),
    )  # fmt: skip
    data = round_trip(tuned)
    assert list(data) == ["top1", "flops", "params", "config", "init", "checkpoint", "tune"]
    assert list(data["tune"]["trials"][1]) == ["name", "config", "epochs", "val_top1", "stopped_early"]
    single = FinetuneResult(top1=45.3, flops=989004, params=35736, config=CONFIG, steps=10, init="filter", checkpoint="f.pt")
    assert list(round_trip(single)) == ["top1", "flops", "params", "config", "steps", "init", "checkpoint"]


def test_distill_with_several_teachers_or_an_assistant() -> None:
    two = DistillResult(
        top1=45.3125, teacher_top1=[50.0, 52.5], teachers=["/t/a", "/t/b"], alpha=0.5, temperature=4.0, config=CONFIG
    )
    data = round_trip(two)
    assert list(data) == ["top1", "teacher_top1", "teachers", "alpha", "temperature", "config"]
    assert data["teacher_top1"] == [50.0, 52.5]
    assistant = Assistant(width=0.5, flops=708944, config=OTHER)
    one = DistillResult(top1=45.3, teacher_top1=27.3, teachers=["assistant"], alpha=1.0, temperature=4.0, assistant=assistant,
                        config=CONFIG)  # fmt: skip
    data = round_trip(one)
    assert list(data)[-2:] == ["assistant", "config"] and data["teacher_top1"] == 27.3


def test_a_ray_pool_report_stays_as_the_executor_wrote_it() -> None:
    search = from_json(SearchResult, OLD_SUMMARY["search"])
    search.pool = {"nodes": ["10.0.0.1", "10.0.0.2"], "chunks_scored": [5, 3], "chunks_lost": 1}
    search.executor = "ray x2"
    assert round_trip(search)["pool"] == {"nodes": ["10.0.0.1", "10.0.0.2"], "chunks_scored": [5, 3], "chunks_lost": 1}


def test_a_result_of_another_layout_is_refused_and_the_store_skips_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no field"):
        from_json(PruningNetResult, {**OLD_SUMMARY["pruningnet"], "loss": 1.0})
    with pytest.raises(ValueError, match="lacks final_loss"):
        from_json(PruningNetResult, {"steps": 20, "checkpoint": "pruningnet.pt", "init": "trained"})
    with pytest.raises(ValueError, match="JSON array"):
        from_json(ExportResult, {**OLD_SUMMARY["export"], "files": "model.onnx"})
    old = {**OLD_SUMMARY, "pruningnet": {"steps": 20}, "exports": {"a": {"files": []}, **OLD_SUMMARY["exports"]}}
    (tmp_path / "summary.json").write_text(as_written(old))
    store = RunDir(tmp_path)
    assert store.result("pruningnet", PruningNetResult) is None and store.result("missing", BaseResult) is None
    assert list(store.results("exports", ExportResult)) == ["trial-3"]


def test_a_new_winner_drops_the_results_of_other_models(tmp_path: Path) -> None:
    store = RunDir(tmp_path)
    for stage, cls in STAGES.items():
        store.report(stage, from_json(cls, OLD_SUMMARY[stage]))
    search = from_json(SearchResult, OLD_SUMMARY["search"])
    store.report("search", search, winner=tuple(CONFIG))
    assert list(store.summary()) == list(STAGES)  # the same winner: its results stay
    store.report("search", search, winner=tuple(OTHER))
    assert list(store.summary()) == ["base", "pruningnet", "search"]
