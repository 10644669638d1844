import subprocess
import sys

import pytest
import torch

from sss_lightning.gates import iter_gates
from sss_lightning.io import PrunedFileError, load_pruned, save_pruned


@pytest.mark.slow  # a fresh interpreter imports torch
def test_reload_in_a_fresh_process_gives_identical_outputs(tmp_path, pruned_resnet, repo):
    gated, pruned = pruned_resnet()
    x = torch.randn(4, 1, 12, 12)
    torch.save(x, tmp_path / "x.pt")
    torch.save(pruned(x).detach(), tmp_path / "y.pt")
    save_pruned(pruned, tmp_path / "model.pt", metadata={"val/acc": 0.5})
    code = (
        "import torch, sys; from sss_lightning.io import load_pruned; "
        f"m = load_pruned(r'{tmp_path / 'model.pt'}'); x = torch.load(r'{tmp_path / 'x.pt'}'); "
        f"y = torch.load(r'{tmp_path / 'y.pt'}'); assert torch.equal(m(x), y), (m(x) - y).abs().max(); "
        "assert m.sss_metadata == {'val/acc': 0.5}; print(sum(p.numel() for p in m.parameters()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(p.numel() for p in pruned.parameters())


def test_file_is_plain_data_loadable_with_weights_only(tmp_path, pruned_resnet):
    _, pruned = pruned_resnet()
    save_pruned(pruned, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format"] == "sss-lightning/pruned" and payload["arch"]["name"] == "resnet20"
    assert payload["modules"]["layer2.0"]["branch"] is False
    assert payload["modules"]["layer1.0"]["branch_bias"] == 4
    loaded = load_pruned(tmp_path / "m.pt")
    assert not list(iter_gates(loaded)) and not loaded.training


def test_wrong_architecture_lists_mismatched_keys_and_shapes(tmp_path, pruned_resnet):
    _, pruned = pruned_resnet()
    save_pruned(pruned, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["arch"]["kwargs"]["width"] = 8  # a checkpoint of another architecture
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(PrunedFileError, match=r"(?s)does not match.*Unexpected key.*extra.weight.*size mismatch"):
        load_pruned(tmp_path / "other.pt")


def test_truncated_file_is_a_clear_error(tmp_path, pruned_resnet):
    _, pruned = pruned_resnet()
    path = save_pruned(pruned, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunedFileError, match="truncated, or not a torch file"):
        load_pruned(tmp_path / "cut.pt")


def test_foreign_torch_file_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(PrunedFileError, match="not an sss-lightning pruned model.*sss-lightning prune"):
        load_pruned(tmp_path / "ckpt.pt")


def test_model_not_from_the_registry_cannot_be_saved(tmp_path):
    from torch import nn

    with pytest.raises(PrunedFileError, match="not built by sss_lightning.build_model"):
        save_pruned(nn.Linear(2, 2), tmp_path / "m.pt")
