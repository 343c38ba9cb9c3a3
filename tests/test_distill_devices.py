"""Teachers across devices: shipping one as a program leaves it where it was, and a torch.export
teacher (.pt2) moves with torch's move_to_device_pass, not `.to()`.

Every test runs on the CPU; the cases parametrized over "cuda" run where torch sees a GPU (the GPU
check, benchmarks/gpu_check.sh, runs this file there) and skip elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import metaprune.distill as distill
import search_spaces as ss
from metaprune.distill import from_program, load_teacher, move_to_device, to_program

WITHOUT_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, WITHOUT_CUDA])]


class TracedDevice(nn.Module):
    """A teacher whose forward makes a tensor on the input's device: export bakes that device in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.bn(self.conv(x)).relu().mean((2, 3))
        return self.fc(pooled) + torch.arange(5, device=x.device, dtype=x.dtype)


def _teacher(device: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return TracedDevice().to(device, dtype).eval().requires_grad_(False)


def _pt2(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pt2"
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(_teacher("cpu"), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [False, True])
def test_to_program_leaves_the_model_where_and_as_it_was(device: str, dtype: torch.dtype, training: bool) -> None:
    model = _teacher(device, dtype).train(training)
    before = {name: (t, t.data_ptr(), t.device, t.dtype, t.clone()) for name, t in model.state_dict(keep_vars=True).items()}
    data = to_program(model, torch.randn(2, 3, 8, 8))  # float32 on the CPU, as the pipeline passes it
    after = model.state_dict(keep_vars=True)
    assert model.training is training and [m.training for m in model.modules()] == [training] * 4
    assert list(after) == list(before)
    for name, (tensor, pointer, where, kind, values) in before.items():
        assert after[name] is tensor and tensor.data_ptr() == pointer, name
        assert (tensor.device, tensor.dtype) == (where, kind), name
        assert torch.equal(tensor, values), name
    shipped = from_program(data)  # on the CPU, as a Tune worker loads it
    x = torch.randn(5, 3, 8, 8, dtype=dtype)
    with torch.no_grad():
        reference = model.eval()(x.to(device)).cpu()
        assert torch.allclose(shipped(x), reference, atol=1e-5)


def test_to_program_ships_a_pt2_teacher(tmp_path: Path) -> None:
    """A .pt2 teacher is an exported module: it has no eval(), which the old `model.cpu().eval()` called."""
    teacher = load_teacher(_pt2(tmp_path))
    with pytest.raises(NotImplementedError):
        teacher.eval()
    shipped = from_program(to_program(teacher, torch.randn(2, 3, 8, 8)))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(shipped(x), teacher(x), atol=1e-6)


def test_a_pt2_teacher_moves_through_the_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_pass = distill.move_to_device_pass

    def recording_pass(program: torch.export.ExportedProgram, location: str) -> torch.export.ExportedProgram:
        calls.append(str(location))
        return real_pass(program, location)

    monkeypatch.setattr(distill, "move_to_device_pass", recording_pass)
    path = _pt2(tmp_path)
    teacher = load_teacher(path)
    assert calls == ["cpu"]
    moved = move_to_device(teacher, "cpu")
    assert calls == ["cpu", "cpu"] and moved is not teacher
    program = torch.export.load(str(path))
    from_the_program = move_to_device(program, "cpu")
    assert calls == ["cpu"] * 3
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = _teacher("cpu")(x)
        for module in (teacher, moved, from_the_program):
            assert not any(p.requires_grad for p in module.parameters())
            assert torch.allclose(module(x), expected, atol=1e-6)


def test_plain_teachers_move_with_to_and_never_through_the_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pass(program: object, location: object) -> None:
        raise AssertionError("move_to_device_pass called for a plain module")

    monkeypatch.setattr(distill, "move_to_device_pass", failing_pass)
    model = _teacher("cpu").train()
    assert move_to_device(model, "cpu") is model and not model.training
    space = ss.create_space("resnet20", 4, 3, 8, 0.25)
    directory = tmp_path / "subnet"
    directory.mkdir()
    (directory / "architecture.json").write_text(json.dumps(ss.architecture(space, space.largest)))
    torch.save(ss.build_subnet(space, space.largest).state_dict(), directory / "weights.pt")
    loaded = load_teacher(directory, "cpu")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert move_to_device(loaded, "cpu") is loaded


def test_to_misses_the_devices_traced_into_a_program_and_the_pass_does_not(tmp_path: Path) -> None:
    """Shown on the CPU with the meta device: `.to()` moves the weights, not the graph's `device='cpu'`."""
    teacher = load_teacher(_pt2(tmp_path))
    x = torch.randn(4, 3, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="device"):
        load_teacher(_pt2(tmp_path)).to("meta")(x)
    out = move_to_device(teacher, "meta")(x)
    assert out.device.type == "meta" and out.shape == (4, 5)


@pytest.mark.gpu
@WITHOUT_CUDA
def test_a_pt2_teacher_runs_on_the_gpu(tmp_path: Path) -> None:
    teacher = load_teacher(_pt2(tmp_path), "cuda")
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(teacher(x.cuda()).cpu(), _teacher("cpu")(x), atol=1e-4)
        back = move_to_device(teacher, "cpu")
        assert torch.allclose(back(x), _teacher("cpu")(x), atol=1e-6)
