"""Two CPU processes (gloo): every rank selects the same structure, surgery agrees, rank zero writes."""

import hashlib
import json

import lightning as L
import pytest
import torch

from sss_lightning import load_pruned
from sss_lightning.callbacks import GateMonitor, PruningSnapshot, StructuralSurgery
from sss_lightning.gates import gate_parameters

pytestmark = pytest.mark.slow


class GateHashes(L.Callback):
    """After training, all-gathers a hash of the gates and of the pruned architecture from every rank."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        from sss_lightning import prune

        gates = torch.cat([p.detach().flatten() for p in gate_parameters(pl_module.net)])
        shapes = [tuple(p.shape) for p in prune(pl_module.net).parameters()]
        digest = hashlib.sha256(gates.numpy().tobytes() + repr(shapes).encode()).hexdigest()
        code = torch.tensor([int(digest[:15], 16)], dtype=torch.int64)
        gathered = pl_module.all_gather(code).flatten().tolist()
        zeros = int((gates == 0).sum())
        if trainer.is_global_zero:
            with open(self.out, "w") as f:
                json.dump({"hashes": gathered, "zeros": zeros, "world_size": trainer.world_size}, f)


def test_ddp_ranks_agree_on_gates_and_pruned_architecture(tmp_path, tiny_classifier, quiet_trainer, tiny_data):
    torch.manual_seed(0)
    module = tiny_classifier(gamma=0.5, schedule="constant")
    with torch.no_grad():
        module.net.layer1[0].gate.scale.zero_()  # a zero block gate from the start: no unused-parameter error
    trainer = quiet_trainer(
        tmp_path,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        callbacks=[
            GateMonitor(log_every_n_steps=2),
            PruningSnapshot(),
            GateHashes(str(tmp_path / "hashes.json")),
            StructuralSurgery(),
        ],
    )
    trainer.fit(module, datamodule=tiny_data(batch_size=8))
    result = json.loads((tmp_path / "hashes.json").read_text())
    assert result["world_size"] == 2 and len(set(result["hashes"])) == 1 and len(result["hashes"]) == 2
    assert result["zeros"] > 1
    assert (
        load_pruned(tmp_path / "pruned.pt").sss_metadata["pruned/macs"]
        < load_pruned(tmp_path / "pruned.pt").sss_metadata["gated/macs"]
    )
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "snapshot-epoch001.pt",
        "snapshot-epoch002.pt",
        "snapshots.md",
    ]
    assert (tmp_path / "gate_plots" / "sparsity.png").is_file()


class SaveNet(L.Callback):
    """Rank zero saves the trained network (the main process of ddp_spawn keeps the full-width module)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        params = torch.cat([p.detach().flatten() for p in pl_module.net.parameters()])
        gathered = pl_module.all_gather(params.sum().reshape(1)).flatten().tolist()
        if trainer.is_global_zero:
            torch.save({"net": pl_module.net, "param_sums": gathered}, self.out)


def test_ddp_in_training_shrink_trains_like_the_full_width_network(tmp_path, tiny_classifier, quiet_trainer, tiny_data):
    from sss_lightning.callbacks import InTrainingShrink
    from sss_lightning.gates import random_gate_pattern

    results = {}
    for name, callbacks in (("full", []), ("shrunk", [InTrainingShrink(when_frozen=False, epochs=[2])])):
        torch.manual_seed(0)
        module = tiny_classifier(gamma=0.1)
        random_gate_pattern(module.net, 0.5, seed=0)
        for p in gate_parameters(module.net):
            p.requires_grad_(False)  # a fixed structure: the shrunk run must follow the full one exactly
        out = tmp_path / f"{name}.pt"
        trainer = quiet_trainer(
            tmp_path / name,
            [*callbacks, SaveNet(str(out))],
            accelerator="cpu",
            devices=2,
            strategy="ddp_spawn",
            max_epochs=3,
        )
        L.seed_everything(0)
        trainer.fit(module, datamodule=tiny_data(batch_size=8))
        results[name] = torch.load(out, weights_only=False)

    full, shrunk = results["full"]["net"].eval(), results["shrunk"]["net"].eval()
    sums = results["shrunk"]["param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold the same shrunk weights: gradients synced
    assert sum(p.numel() for p in shrunk.parameters()) < 0.5 * sum(p.numel() for p in full.parameters())
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(shrunk(x), full(x), rtol=1e-4, atol=1e-4)
