"""Exported pruned models compute what the pruned model computes, at any batch size."""

import numpy as np
import onnxruntime
import pytest
import torch

from sss_lightning import load_pruned, prune, save_pruned
from sss_lightning.cli import main
from sss_lightning.export import export_model
from sss_lightning.gates import random_gate_pattern


@pytest.fixture
def pruned(tiny_model, randomize_bn):
    model = tiny_model("resnet20", in_channels=1, num_classes=5)
    randomize_bn(model, torch.Generator().manual_seed(0))
    random_gate_pattern(model, 0.5, seed=1)
    return prune(model).eval()


def test_torchscript_export_round_trips_at_other_batch_sizes(tmp_path, pruned):
    path, diff = export_model(pruned, tmp_path / "m.ts", (1, 12, 12), "torchscript")
    assert diff is not None and diff < 1e-5
    loaded = torch.jit.load(str(path))
    x = torch.randn(7, 1, 12, 12)
    torch.testing.assert_close(loaded(x), pruned(x))


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(tmp_path, pruned):
    path, diff = export_model(pruned, tmp_path / "m.onnx", (1, 12, 12), "onnx")
    assert diff is not None and diff < 1e-4
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 12, 12)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, pruned(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_export_command_uses_the_recorded_input_size(tmp_path, pruned, capsys):
    save_pruned(pruned, tmp_path / "p.pt", metadata={"input_size": [1, 12, 12]})
    main(["export", "--model", str(tmp_path / "p.pt"), "--format", "torchscript"])
    assert "max |difference|" in capsys.readouterr().out
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "p.ts"))(x), load_pruned(tmp_path / "p.pt")(x))


def test_export_command_rejects_an_unknown_format(tmp_path, pruned, capsys):
    save_pruned(pruned, tmp_path / "p.pt", metadata={"input_size": [1, 12, 12]})
    with pytest.raises(SystemExit):
        main(["export", "--model", str(tmp_path / "p.pt"), "--format", "tflite"])
    assert "--format must be one of ('torchscript', 'onnx')" in capsys.readouterr().err
