"""Two CPU processes (gloo): every rank selects the same structure, surgery agrees, rank zero writes."""

import hashlib
import json

import lightning as L
import pytest
import torch

from sss_lightning import SSSClassifier, load_pruned
from sss_lightning.callbacks import GateMonitor, PruningSnapshot, StructuralSurgery
from sss_lightning.data import SyntheticDataModule
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


def test_ddp_ranks_agree_on_gates_and_pruned_architecture(tmp_path):
    torch.manual_seed(0)
    module = SSSClassifier(
        arch="resnet20", num_classes=4, gates="both", arch_kwargs={"width": 4}, gamma=0.5, schedule="constant"
    )
    with torch.no_grad():
        module.net.layer1[0].gate.scale.zero_()  # a zero block gate from the start: no unused-parameter error
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        callbacks=[
            GateMonitor(log_every_n_steps=2),
            PruningSnapshot(),
            GateHashes(str(tmp_path / "hashes.json")),
            StructuralSurgery(),
        ],
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_classes=4, image_size=8, train_size=64, batch_size=8))
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
