"""What each stage reports: one dataclass per stage result, written to summary.json (`RunDir.report`)
and, for quantize, to its `quantize/<id>/result.json`.

`to_json` and `from_json` convert every one of them alike, from the fields' types: nested
dataclasses, lists and name -> result mappings included. Keys are written in field order, which is
the order the stages always wrote them in (the classes are `kw_only`, so that a field with a default
may stand before required ones). A field made with `omitted()` is a part only some runs
have (base's `steps` or `weights`, search's `latency`): left out of the JSON while None. Any other
None is a figure that could not be had (pruningnet's `final_loss` after 0 epochs) and is written as
null. Units: FLOPs and params are counts, top-1 and errors in %, sizes in MB (1e6 bytes), times in ms
(`_s`: seconds).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar

OMIT = "omit"  # field metadata: leave the key out of the JSON while the value is None


def omitted() -> Any:
    """A field that is None, and absent from the JSON, unless this run has that part."""
    return field(default=None, metadata={OMIT: True})


class Result:
    """A stage's result (a dataclass): what `RunDir.report` takes and `RunDir.result` gives back."""


R = TypeVar("R")


# -- the stages' results ------------------------------------------------------------------------
@dataclass(kw_only=True)
class BaseResult(Result):
    """`base`: the full network's figures (every stage writes them), then what train-base measured."""

    flops: int  # of the full network (the space's largest)
    params: int
    space: str  # the search space's name
    top1: float | None = omitted()  # test top-1 (%) of the trained full network: after train-base
    steps: int | None = omitted()  # optimiser steps, when train-base trained it here
    checkpoint: str | None = omitted()  # base.pt, relative to the run directory, when trained here
    weights: str | None = omitted()  # the user's trained network (base.weights), when given


@dataclass(kw_only=True)
class PruningNetResult(Result):
    steps: int
    final_loss: float | None  # mean training loss of the last tenth of the steps; null after 0 epochs
    checkpoint: str  # relative to the run directory
    init: str  # trained (warm-started from the trained network) | scratch


@dataclass(kw_only=True)
class FrontPoint:
    """A point of the search's Pareto front (proxy top-1 against FLOPs)."""

    trial: int  # its trial number in the study
    config: list[int]  # a choice index per gene
    flops: int
    params: int
    proxy_top1: float  # validation top-1 (%) under the PruningNet's generated weights


@dataclass(kw_only=True)
class BestCandidate:
    """The search's best candidate: a front point with its channel counts and its share of the full FLOPs."""

    trial: int
    config: list[int]
    channels: dict[str, int]  # gene name -> channels
    flops: int
    flops_ratio: float  # of the full network's FLOPs (0..1)
    params: int
    proxy_top1: float


@dataclass(kw_only=True)
class SearchTiming:
    driver_s: float  # seconds asking, checking constraints and recording: all but waiting for scores
    scoring_s: float  # seconds waiting for the executor
    driver_share: float | None  # driver_s / scoring_s; null when nothing was scored in this run


@dataclass(kw_only=True)
class CheckedConfig:
    """One whole subnet timed against the latency table's prediction."""

    config: list[int]
    predicted_ms: float
    measured_ms: float
    error_pct: float  # (predicted - measured) / measured, in %


@dataclass(kw_only=True)
class TableCheck:
    """The latency table checked against measured whole subnets (up to 5 points of the front)."""

    mape_pct: float  # mean absolute error, %
    max_error_pct: float
    kendall_tau: float  # rank agreement of predicted and measured (NaN when every time ties)
    configs: list[CheckedConfig]


@dataclass(kw_only=True)
class LatencyReport:
    """A latency-constrained search's budget and the table that priced its candidates."""

    max_latency_ms: float  # the budget (search.max_latency_ms)
    batch: int  # the table's batch size and threads
    threads: int
    device: str
    best_predicted_ms: float  # the best candidate's latency as the table predicts it
    table_check: TableCheck


@dataclass(kw_only=True)
class SearchResult(Result):
    searcher: str
    study: str  # the study's name in the storage
    storage: str  # where the study lives (passwords redacted)
    executor: str  # inprocess | ray xN
    pool: dict[str, object]  # the executor's report: where this run's candidates were scored
    evaluated: int  # candidates measured in the window (from this run or reused from the study)
    trials: int  # trials in the study, infeasible ones included
    scored_this_run: int
    budget_flops: float  # the upper end of the search's FLOPs window
    best: BestCandidate
    pareto: list[FrontPoint]
    plot: str  # the front's plot, relative to the run directory
    timing: SearchTiming
    latency: LatencyReport | None = omitted()  # with search.max_latency_ms


@dataclass(kw_only=True)
class TuneTrial:
    name: str  # trial-N, N the candidate's trial in the study
    config: list[int]
    epochs: int  # epochs trained: all of them, or fewer when ASHA stopped it
    val_top1: float  # validation top-1 (%) after its last epoch
    stopped_early: bool


@dataclass(kw_only=True)
class TuneReport:
    """A top-k fine-tune (finetune.top_k > 1): the k best candidates as Ray Tune trials under ASHA."""

    study: str  # the search whose candidates were fine-tuned
    survivor: str  # the name of the trial that became the winner
    trials: list[TuneTrial]


@dataclass(kw_only=True)
class FinetuneResult(Result):
    top1: float  # test top-1 (%) of the fine-tuned model
    flops: int
    params: int
    config: list[int]
    steps: int | None = omitted()  # optimiser steps of a single fine-tune
    init: str  # what the fine-tune started from (finetune.init)
    checkpoint: str  # relative to the run directory
    tune: TuneReport | None = omitted()  # instead of steps, after a top-k fine-tune


@dataclass(kw_only=True)
class Assistant:
    width: float  # every width of the full network scaled by this (distill.assistant_width)
    flops: int
    config: list[int]


@dataclass(kw_only=True)
class DistillResult(Result):
    """The fine-tune's distillation: the student's and each teacher's test top-1 (%)."""

    top1: float  # the student's (the fine-tuned model's)
    teacher_top1: float | list[float]  # one figure per teacher; one teacher: the figure alone
    teachers: list[str]  # base, assistant, or the user's teacher files
    alpha: float
    temperature: float
    assistant: Assistant | None = omitted()  # with distill.assistant_width > 0
    config: list[int]  # the student's


@dataclass(kw_only=True)
class HalfPrecision:
    """Top-1 (%) under autocast, beside FP32 on the same images (on a CPU: the first 1,000)."""

    images: int
    fp32: float
    bf16: float | None  # null where the device has no such arithmetic
    fp16: float | None


@dataclass(kw_only=True)
class DynamicInt8:
    top1: float  # ONNX Runtime, dynamic INT8 of the linear layers
    mb: float


@dataclass(kw_only=True)
class LowBitWeights:
    scheme: str  # compress.weight_scheme
    bits: int
    top1: float
    packed_mb: float


@dataclass(kw_only=True)
class Unstructured:
    sparsity: float  # fraction of the conv/linear weights that are zero
    top1: float
    sparse_mb: float  # stored sparse
    dense_mb: float


@dataclass(kw_only=True)
class QuantizeFiles:
    fp32: str  # relative to the run directory
    int8: str  # the better INT8 file (static or QAT)


@dataclass(kw_only=True)
class QuantizeResult(Result):
    """The model in ONNX Runtime, FP32 against INT8 (top-1 on the test split, size, latency), and the other options."""

    config: list[int]
    weights: str  # finetuned | generated
    runtime: str
    fp32_top1: float
    int8_top1: float  # of the INT8 file kept
    int8_method: str  # ptq | qat: which one that is
    ptq_int8_top1: float
    qat_int8_top1: float | None  # null when no quantization-aware training ran
    fp32_mb: float
    int8_mb: float
    fp32_latency_ms: float  # median, ONNX Runtime, at latency.batch (batch 1 when not measured)
    int8_latency_ms: float
    int8_speedup: float  # fp32_latency_ms / int8_latency_ms
    latency_ms: dict[str, dict[str, float]]  # batch_N -> runtime_precision -> median ms
    latency_threads: int
    pytorch_top1: float  # the same model in PyTorch (FP32)
    onnx_max_abs_diff: float  # largest output difference of the FP32 file against PyTorch
    half: HalfPrecision
    dynamic_linear_int8: DynamicInt8
    low_bit_weights: LowBitWeights
    unstructured: Unstructured
    files: QuantizeFiles
    max_drop_exceeded: bool  # INT8 lost more than quantize.max_drop points


@dataclass(kw_only=True)
class ExportResult(Result):
    files: list[str]  # every exported file
    reload_max_abs_diff: float  # largest output difference against the model: the subnet rebuilt from its files
    onnx_max_abs_diff: float  # model.onnx in ONNX Runtime
    program_max_abs_diff: float  # model.pt2 (torch.export)
    weights: str  # finetuned | generated
    config: list[int]


# -- JSON -----------------------------------------------------------------------------------------
def to_json(result: Result | Mapping[str, Result]) -> dict[str, Any]:
    """The JSON object of a result (or of a name -> result mapping), keys in field order."""
    written: dict[str, Any] = _write(result)
    return written


def from_json(cls: type[R], data: object) -> R:
    """The `cls` that `to_json` wrote as `data`; ValueError if `data` does not have its layout."""
    read: R = _read(cls, data)
    return read


def from_json_or_none(cls: type[R], data: object) -> R | None:
    """`from_json`, or None where `data` has another layout (written by another version)."""
    try:
        return from_json(cls, data)
    except ValueError:
        return None


def _write(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _write_fields(value)
    if isinstance(value, list | tuple):
        return [_write(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _write(v) for k, v in value.items()}
    return value  # a number, string, bool or None


def _write_fields(value: Any) -> dict[str, Any]:
    written = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None and f.metadata.get(OMIT):
            continue  # a part this run does not have
        written[f.name] = _write(item)
    return written


@cache
def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


@cache
def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (`from __future__ import annotations`)


def _read(kind: Any, value: object) -> Any:
    """`value` as the type `kind`: dataclasses and the containers of them rebuilt, the rest as it is."""
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _read_fields(kind, _expect(dict, value, kind))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return [_read(args[0], v) for v in _expect(list, value, kind)]
    if origin is dict:
        return {k: _read(args[1], v) for k, v in _expect(dict, value, kind).items()}
    if origin in (typing.Union, types.UnionType):
        member = next((arg for arg in args if _fits(arg, value)), None)
        if member is None:
            raise ValueError(f"expected {kind}, got {value!r}"[:200])
        return _read(member, value)
    return value  # a number, string, bool or free-form JSON (`object`)


def _read_fields(cls: type, data: dict[str, Any]) -> Any:
    known, hints = _fields(cls), _types(cls)
    if unknown := [key for key in data if key not in known]:
        raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
    required = [name for name, f in known.items() if f.default is dataclasses.MISSING and name not in data]
    if required:
        raise ValueError(f"{cls.__name__} lacks {', '.join(required)}")
    return cls(**{key: _read(hints[key], value) for key, value in data.items()})


def _fits(kind: Any, value: object) -> bool:
    """Whether `value` has the JSON shape of `kind`, one member of a union."""
    if dataclasses.is_dataclass(kind) or typing.get_origin(kind) is dict:
        return isinstance(value, dict)
    if typing.get_origin(kind) is list:
        return isinstance(value, list)
    if kind is type(None):
        return value is None
    return value is not None and not isinstance(value, dict | list)


def _expect(shape: type, value: object, kind: Any) -> Any:
    if not isinstance(value, shape):
        raise ValueError(f"expected {kind} as a JSON {'object' if shape is dict else 'array'}, got {value!r}"[:200])
    return value
