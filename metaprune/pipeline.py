"""The pipeline is the list of stages, each resumable, over one run directory:

    train-base -> train-pruningnet -> search -> finetune -> quantize -> export

`Run` opens a run directory (every setting and every earlier artifact checked before anything is
written) and runs stages by name; each stage is `metaprune.stages.<name>.run(ctx)`. The run
directory's files are listed in `metaprune.run_dir`, what each depends on in `metaprune.identity`,
and which model a stage works on in `metaprune.choice`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import search_spaces as ss
from metaprune import choice, identity, studies, trained
from metaprune.choice import Chosen
from metaprune.config import RunConfig
from metaprune.context import Context, Pick
from metaprune.data import Splits
from metaprune.errors import UserError
from metaprune.graph_importance import ordered_space
from metaprune.results import Result, to_json
from metaprune.run_dir import BASE, FINETUNE, PRUNINGNET, RECORD
from metaprune.score import Scorer, ScorerSpec
from metaprune.stages import export, finetune, quantize, search, train_base, train_pruningnet
from metaprune.train import checkpoint_header
from nas.study import Candidate, changed_keys

__all__ = ["PRUNINGNET", "RECORD", "STAGES", "Pick", "Run"]

Stage = Callable[[Context], Result]  # its result, also in summary.json (metaprune.results)
STAGES: dict[str, Stage] = {
    "train-base": train_base.run,
    "train-pruningnet": train_pruningnet.run,
    "search": search.run,
    "finetune": finetune.run,
    "quantize": quantize.run,
    "export": export.run,
}


def needs_base(cfg: RunConfig) -> bool:
    """Does the pipeline train (or, with base.weights, measure) the full network first."""
    return (
        cfg.distill.teacher == "base"
        or cfg.pruningnet.init in ("auto", "trained")
        or cfg.finetune.init == "filter"
        or bool(cfg.base.weights)
    )


def check_artifacts(ctx: Context) -> None:
    """Refuse settings that contradict finished work, naming everything that depends on it."""
    path = ctx.dir / PRUNINGNET
    if path.exists() and (stored := checkpoint_header(path)["meta"]) != (wanted := identity.meta(ctx, PRUNINGNET)):
        studies.conflict(path, changed_keys(stored, wanted), [PRUNINGNET, RECORD, f"{FINETUNE}/"])
    base = ctx.dir / BASE
    if base.exists() and (stored := checkpoint_header(base)["meta"]) != (wanted := identity.base_meta(ctx)):
        studies.conflict(base, changed_keys(stored, wanted), [BASE, f"{FINETUNE}/"])
    studies.check_studies(ctx)


class Run(Context):
    """One run directory. Construct it (validates everything), then call `stage(name)` or `pipeline()`."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        pick: Pick | None = None,
        model: torch.nn.Module | None = None,
        splits: Splits | None = None,
    ) -> None:
        self._ordered: tuple[tuple[str, str], ss.GraphSpace] | None = None
        super().__init__(cfg, run_dir, pick, model, splits)
        trained.check_normalisation(self, self.splits.train.shape[0])
        trained.read_weights(self)  # a wrong base.weights file is refused before anything is written
        for section in ("pruningnet", "finetune"):
            batch = getattr(cfg, section).batch_size
            if batch > len(self.prepared.train):
                raise UserError(f"{section}.batch_size {batch} exceeds the {len(self.prepared.train)} training images; lower it")
        check_artifacts(self)

    def ordered(self, space: ss.GraphSpace) -> ss.GraphSpace:
        """Once a trained network exists, each gene keeps its most important channels first."""
        if not trained.available(self):
            return space
        key = (trained.identity(self), self.cfg.pruningnet.ranking)
        if self._ordered is None or self._ordered[0] != key:
            self._ordered = (key, ordered_space(space, trained.model(self), self.cfg.pruningnet.ranking))
        return self._ordered[1]

    def stage(self, name: str) -> dict[str, Any]:
        """Run one stage (or the pipeline); its result as JSON, as summary.json has it."""
        if name == "pipeline":
            return self.pipeline()
        return to_json(STAGES[name](self))

    def pipeline(self) -> dict[str, Any]:
        for name in STAGES:
            if name != "train-base" or needs_base(self.cfg):
                self.stage(name)
        return self.store.summary()

    def close(self) -> None:
        """Release the run directory now (else when this object is collected or the process ends)."""
        self.store.close()

    # -- the stages by name (results as JSON; typed: `metaprune.results`, read back with `RunDir.result`),
    # and what scripts and notebooks ask of a run --------------------------------------------------
    def train_base(self) -> dict[str, Any]:
        return self.stage("train-base")

    def train_pruningnet(self) -> dict[str, Any]:
        return self.stage("train-pruningnet")

    def search(self) -> dict[str, Any]:
        return self.stage("search")

    def finetune(self) -> dict[str, Any]:
        return self.stage("finetune")

    def quantize(self) -> dict[str, Any]:
        return self.stage("quantize")

    def export(self) -> dict[str, Any]:
        return self.stage("export")

    def summary(self) -> dict[str, Any]:
        return self.store.summary()

    def meta(self, artifact: str, winner: ss.Config | None = None) -> dict[str, Any]:
        return identity.meta(self, artifact, winner)

    def search_settings(self) -> dict[str, Any]:
        return studies.search_settings(self)

    def scorer_spec(self) -> ScorerSpec:
        return choice.scorer_spec(self)

    def scorer(self) -> Scorer:
        return choice.scorer(self)

    def candidates(self) -> tuple[str, list[Candidate]]:
        return studies.last_search(self)

    def choice(self) -> Candidate:
        return choice.chosen_point(self)

    def chosen_model(self) -> Chosen:
        return choice.chosen_model(self)
