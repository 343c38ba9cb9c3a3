"""The pipeline on a user's own network: `--model file.py:fn` / `--weights` on the command line, and
`metaprune.prune(...)` in Python. The winner inherits the user's weights; bad input is one line."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from thop import profile

import metaprune
import search_spaces as ss
from metaprune import choice, trained
from metaprune.config import load_config
from metaprune.data import synthetic
from metaprune.importance import crop
from metaprune.pipeline import Run
from tests.conftest import FAST, cli
from tests.test_cli import assert_clean_error, snapshot

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn


    def block(cin, cout, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


    class Net(nn.Module):  # a stem, an Inception-style concat, a depthwise conv and a residual add
        def __init__(self, num_classes):
            super().__init__()
            self.stem, self.a, self.b = block(3, 16), block(16, 8), block(16, 8)
            self.dw, self.pw = block(16, 16, groups=16), block(16, 16)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = torch.cat([self.a(x), self.b(x)], 1)
            x = x + self.pw(self.dw(x))
            return self.fc(x.mean((2, 3)))


    def build(num_classes):
        return Net(num_classes)


    def not_a_module():
        return "net"


    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x


    def branchy():
        return Branchy()
    """
)


@pytest.fixture
def user_files(tmp_path: Path) -> tuple[Path, Path]:
    """The user's model file and a state dict of it (trained-looking: BN statistics away from their start)."""
    path = tmp_path / "my_model.py"
    path.write_text(MODEL)
    namespace: dict = {}
    exec(compile(MODEL, str(path), "exec"), namespace)
    torch.manual_seed(0)
    model = namespace["build"](4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 1.5), module.weight.uniform_(0.5, 1.5)
    weights = tmp_path / "my_model.pt"
    torch.save(model.state_dict(), weights)
    return path, weights


def test_the_command_line_prunes_a_users_model_file_and_exports_it(user_files: tuple[Path, Path], tmp_path: Path) -> None:
    model_file, weights = user_files
    run_dir = tmp_path / "run"
    result = cli(run_dir=run_dir, sets=[f"space.model={model_file}:build", f"base.weights={weights}"])
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pruningnet"]["init"] == "trained" and summary["base"]["space"] == "my_model:build"
    best = summary["search"]["best"]
    assert best["flops"] <= 0.5 * summary["base"]["flops"]
    # dw.0 writes no new channels (the stem's gene goes through it); the add ties pw.0's outputs to a's and b's
    assert set(best["channels"]) == {"stem.0", "a.0", "b.0"}

    # the exported files (and the user's file) rebuild it; thop counts what the summary says
    alone = tmp_path / "alone"
    shutil.copytree(run_dir / "export", alone)
    arch = json.loads((alone / "architecture.json").read_text())
    assert arch["format"] == "metaprune-graph-subnet/1" and arch["recipe"]["model"] == f"{model_file.resolve()}:build"
    model = ss.load_subnet(alone)
    flops, params = profile(model, inputs=(torch.zeros(1, 3, 16, 16),), verbose=False)
    assert (int(flops), int(params)) == (best["flops"], best["params"]) == (arch["flops"], arch["params"])
    assert summary["export"]["reload_max_abs_diff"] == 0.0 and summary["export"]["onnx_max_abs_diff"] < 1e-4

    again = cli(run_dir=run_dir, sets=[f"space.model={model_file}:build", f"base.weights={weights}"], inprocess=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "summary.json").read_text())["search"]["scored_this_run"] == 0


def test_the_winner_inherits_the_users_weights_in_importance_order(user_files: tuple[Path, Path], tmp_path: Path) -> None:
    model_file, weights = user_files
    sets = [*FAST, f"space.model={model_file}:build", f"base.weights={weights}", "pruningnet.epochs=0", "pruningnet.init=trained"]
    run = Run(load_config(None, sets), tmp_path / "run")
    try:
        run.stage("train-pruningnet")
        space, user = run.space, trained.model(run)
        assert isinstance(space, ss.GraphSpace) and isinstance(run.base_space, ss.GraphSpace)
        assert any(not np.array_equal(a, b) for a, b in zip(space.order, run.base_space.order))  # not the identity
        scores = np.abs(user.get_submodule("stem.0").weight.detach().numpy()).sum((1, 2, 3))
        kept = space.kept(space.smallest)["stem_0"].numpy()  # the stem's most important filters (L1)
        assert set(kept) == set(np.argsort(-scores, kind="stable")[: len(kept)])
        x = torch.randn(4, 3, 16, 16)
        net = choice.scorer(run).pruningnet
        for config in [space.smallest, space.largest, ss.sample(space, np.random.default_rng(0))]:
            generated = net.extract(config).eval()(x)  # EagleEye: generated == the user's network pruned
            torch.testing.assert_close(generated, crop(space, user, config).eval()(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(net.extract(space.largest).eval()(x), user(x), rtol=0, atol=1e-5)
    finally:
        run.close()


def test_a_bad_model_or_weights_file_is_one_line_exit_2_and_nothing_written(
    user_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_file, weights = user_files
    wrong = tmp_path / "wrong.pt"
    torch.save({"stem.0.weight": torch.zeros(3)}, wrong)
    run_dir = tmp_path / "run"
    cases = [
        ([f"space.model={model_file}:branchy"], ["torch.fx cannot trace Branchy"]),
        ([f"space.model={model_file}:not_a_module"], ["not_a_module() returned a str, not a torch.nn.Module"]),
        ([f"space.model={model_file}:missing"], ["has no function 'missing'"]),
        ([f"space.model={tmp_path / 'nofile.py'}:build"], ["no file"]),
        (["space.model=no_such_package.models:build"], ["cannot import no_such_package.models"]),
        (["space.model=my_model"], ["is not path/to/file.py:function or package.module:function"]),
        ([f"space.model={model_file}:build", f"base.weights={wrong}"], ["'stem.0.weight' has shape (3,)", "space.model builds"]),
    ]
    for sets, fragments in cases:
        assert_clean_error(cli("search", run_dir=run_dir, sets=sets, inprocess=True), *fragments)
        assert not run_dir.exists()
    # and an existing run is left as it was
    done = cli("train-pruningnet", run_dir=run_dir, sets=[f"space.model={model_file}:build", f"base.weights={weights}"])
    assert done.returncode == 0, done.stderr
    before = snapshot(run_dir)
    assert_clean_error(cli("search", run_dir=run_dir, sets=[f"space.model={model_file}:build", f"base.weights={wrong}"]))
    assert snapshot(run_dir) == before


def test_prune_in_python_returns_the_pruned_module_and_resumes(user_files: tuple[Path, Path], tmp_path: Path) -> None:
    model_file, weights = user_files
    namespace: dict = {}
    exec(compile(model_file.read_text(), str(model_file), "exec"), namespace)
    model = namespace["build"](4)
    model.load_state_dict(torch.load(weights, weights_only=True))
    data = synthetic()
    settings = dict(item.split("=", 1) for item in FAST if not item.startswith("data."))
    settings["data.val_size"] = "64"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train.images, data.train.labels), batch_size=50)
    pruned = metaprune.prune(
        model, loader, (data.test.images, data.test.labels), flops=0.4, run_dir=tmp_path / "run", settings=settings
    )
    flops, _ = profile(pruned.model, inputs=(torch.zeros(1, 3, 16, 16),), verbose=False)
    assert int(flops) == pruned.summary["finetune"]["flops"] <= 0.4 * pruned.summary["base"]["flops"]
    assert not (tmp_path / "run" / "export" / "architecture.json").exists()  # a module object names no code
    x = torch.randn(2, 3, 16, 16)
    again = metaprune.prune(
        model, loader, (data.test.images, data.test.labels), flops=0.4, run_dir=tmp_path / "run", settings=settings
    )
    assert again.summary["search"]["scored_this_run"] == 0 and again.summary["finetune"] == pruned.summary["finetune"]
    torch.testing.assert_close(again.model(x), pruned.model(x), rtol=0, atol=0)


def test_a_users_model_gets_its_own_default_run_directory() -> None:
    from run_search import default_run_dir

    assert default_run_dir(load_config(None, [])) == Path("runs/quickstart")
    assert default_run_dir(load_config(None, ["space.model=models/my_model.py:build"])) == Path("runs/my_model-build")
    assert default_run_dir(load_config(None, ["space.model=torchvision.models:resnet18"])) == Path("runs/models-resnet18")
    assert default_run_dir(load_config(None, ["space.model=models/my_model.py:build", "name=mine"])) == Path("runs/mine")
