"""The pipeline from the user's trained network: base.weights, the warm PruningNet, filter init."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import search_spaces as ss
from metaprune import filter_prune
from metaprune.choice import start_model
from metaprune.config import load_config
from metaprune.data import Normalizer, synthetic
from metaprune.pipeline import Run
from metaprune.score import fixed_batches, top1
from tests.conftest import FAST, cli
from tests.test_cli import assert_clean_error, snapshot

MEAN, STD = [0.45, 0.5, 0.55], [0.25, 0.2, 0.3]
NORM = [f"data.mean={MEAN}", f"data.std={STD}"]


def the_space() -> ss.SearchSpace:
    """The space FAST's runs use: synthetic 16x16 RGB images of 4 classes, half-width ResNet-20."""
    return ss.create_space("resnet20", 4, 3, 16, 0.5, 4)


@pytest.fixture(scope="module")
def users_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full network trained with a plain PyTorch loop, saved as a state dict: the user's file."""
    torch.manual_seed(0)
    data = synthetic().train
    model = ss.build_subnet(the_space(), the_space().largest)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    normalize = Normalizer(MEAN, STD)
    for step in range(30):
        batch = torch.randint(0, len(data), (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(normalize(data.images[batch])), data.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("user") / "my_resnet20.pt"
    torch.save(model.state_dict(), path)
    return path


def test_the_users_trained_network_drives_the_pipeline(users_weights: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sets = [f"base.weights={users_weights}", *NORM, "quantize.qat=never"]
    result = cli("pipeline", run_dir=run_dir, sets=sets)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not (run_dir / "base.pt").exists()  # nothing trained in its place
    model = ss.build_subnet(the_space(), the_space().largest)
    model.load_state_dict(torch.load(users_weights, weights_only=True))
    test = synthetic().test
    assert summary["base"]["top1"] == top1(model, fixed_batches(test, Normalizer(MEAN, STD), 500, "cpu"))
    assert summary["base"]["weights"] == str(users_weights)
    assert summary["pruningnet"]["init"] == "trained"
    assert summary["distill"]["teachers"] == ["base"] and summary["finetune"]["init"] == "inherit"
    assert (run_dir / "export" / "model.onnx").exists()
    # the PruningNet's identity holds the trained network's: other weights are refused, nothing changes
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}, other)
    before = snapshot(run_dir)
    refused = cli("search", run_dir=run_dir, sets=[f"base.weights={other}", *NORM], inprocess=True)
    assert_clean_error(refused, "pruningnet.pt was made with other settings", "pruningnet.trained")
    assert snapshot(run_dir) == before


def test_bad_weight_files_are_refused_with_the_first_tensor_that_does_not_fit(users_weights: Path, tmp_path: Path) -> None:
    state = torch.load(users_weights, weights_only=True)
    narrow = tmp_path / "narrow.pt"
    torch.save({**state, "layers.s2b0.body.0.conv.weight": torch.zeros(8, 8, 3, 3)}, narrow)
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if k != "classifier.bias"}, missing)
    pickled = tmp_path / "object.pt"
    pickled.write_bytes(pickle.dumps(Normalizer(MEAN, STD)))
    text = tmp_path / "list.pt"
    torch.save([1, 2], text)
    cases = [
        (narrow, ["'layers.s2b0.body.0.conv.weight' has shape (8, 8, 3, 3), expected (16, 8, 3, 3)"]),
        (missing, ["'classifier.bias' is missing (expected shape (4,))"]),
        (pickled, ["cannot be loaded with torch.load(weights_only=True)", "model.state_dict()"]),
        (text, ["holds a list, not a state dict"]),
    ]
    run_dir = tmp_path / "run"
    for path, fragments in cases:
        for stage in ("pipeline", "train-pruningnet"):
            assert_clean_error(cli(stage, run_dir=run_dir, sets=[f"base.weights={path}"], inprocess=True), *fragments)
    assert not run_dir.exists()


def test_a_warm_start_without_a_trained_network_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for stage, sets, what in [
        ("train-pruningnet", ["pruningnet.init=trained"], "pruningnet.init=trained needs a trained full network"),
        ("train-pruningnet", ["pruningnet.init=trained", "pruningnet.epochs=0"], "pruningnet.init=trained needs"),
    ]:
        assert_clean_error(cli(stage, run_dir=run_dir, sets=sets, inprocess=True), what, "base.weights", "train-base")
    assert not run_dir.exists()


def test_eagleeye_scores_the_l1_pruned_trained_network_and_filter_init_starts_from_it(
    users_weights: Path, tmp_path: Path
) -> None:
    overrides = [*FAST, *NORM, f"base.weights={users_weights}", "pruningnet.init=trained", "pruningnet.epochs=0"]
    run = Run(load_config(None, overrides), tmp_path / "run")
    assert run.train_pruningnet()["steps"] == 0
    scorer = run.scorer()
    user = ss.build_subnet(run.space, run.space.largest)
    user.load_state_dict(torch.load(users_weights, weights_only=True))
    for config in (run.space.smallest, ss.uniform(run.space, 0.5), run.space.largest):
        pruned = filter_prune.prune(run.space, user, config)
        scored = dict(scorer.subnet(config).named_parameters())
        for name, weight in pruned.named_parameters():  # conv weights and BN affine: the trained ones (statistics
            torch.testing.assert_close(scored[name], weight, atol=1e-6, rtol=0)  # are re-estimated: adaptive BN)
    filtered = start_model(Run(load_config(None, [*overrides, "finetune.init=filter"]), tmp_path / "run"), run.space.smallest)
    pruned = filter_prune.prune(run.space, user, run.space.smallest)
    for (name, got), want in zip(filtered.state_dict().items(), pruned.state_dict().values()):
        assert torch.equal(got.cpu(), want), name
    run.close()
