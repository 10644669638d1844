import lightning as L
import pytest
import torch

from sss_lightning import SSSClassifier, load_pruned
from sss_lightning.callbacks import FitSummary, StructuralSurgery
from sss_lightning.data import SyntheticDataModule
from sss_lightning.gates import iter_gates


def tiny_classifier(**kwargs) -> SSSClassifier:
    return SSSClassifier(
        arch="resnet20", num_classes=4, gates="both", arch_kwargs={"width": 4}, schedule="constant", **kwargs
    )


def run(module, tmp_path, callbacks, steps=20):
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        enable_checkpointing=False,
    )
    data = SyntheticDataModule(num_classes=4, image_size=8, train_size=64, val_size=32, batch_size=16)
    trainer.fit(module, datamodule=data)
    return trainer, data


def test_structural_surgery_replaces_the_net_with_an_equal_smaller_one(tmp_path):
    module = tiny_classifier(gamma=0.5)
    data_x = torch.randn(4, 3, 8, 8)
    surgery = StructuralSurgery()
    captured = {}

    class KeepGated(L.Callback):
        def on_train_end(self, trainer, pl_module):
            import copy

            captured["gated"] = copy.deepcopy(pl_module.net).eval()

    run(module, tmp_path, [FitSummary(), KeepGated(), surgery])
    gated, pruned = captured["gated"], module.net.eval()
    assert any((g.module.scale == 0).any() for g in iter_gates(gated))
    assert not list(iter_gates(pruned))
    torch.testing.assert_close(pruned(data_x), gated(data_x), rtol=1e-4, atol=1e-5)
    assert surgery.report["pruned/macs"] < surgery.report["gated/macs"]
    reloaded = load_pruned(tmp_path / "pruned.pt")
    assert torch.equal(reloaded(data_x), pruned(data_x))
    assert reloaded.sss_metadata["input_size"] == [3, 8, 8] and "val/acc" in reloaded.sss_metadata


def test_summary_and_surgery_print_accuracy_sparsity_and_macs(tmp_path, caplog):
    caplog.set_level("INFO")
    run(tiny_classifier(gamma=0.5), tmp_path, [FitSummary(), StructuralSurgery()])
    text = caplog.text
    assert "SSS fit summary" in text and "val/acc" in text and "block gates" in text
    assert "| MACs |" in text and "| params |" in text and "pruned model:" in text


def test_no_zero_gate_is_reported_not_claimed_as_pruning(tmp_path):
    with pytest.warns(UserWarning, match=r"no gate reached exactly zero.*Smallest gates: .*=.*Raise gamma"):
        run(tiny_classifier(gamma=0.0), tmp_path, [StructuralSurgery()], steps=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"filename": "a/b.pt"}, "plain file name"), ({"input_size": [3, 8]}, r"\(C, H, W\)")],
)
def test_structural_surgery_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StructuralSurgery(**kwargs)


def test_surgery_state_survives_a_checkpoint_round_trip(tmp_path):
    surgery = StructuralSurgery()
    run(tiny_classifier(gamma=0.5), tmp_path, [surgery])
    restored = StructuralSurgery()
    restored.load_state_dict(surgery.state_dict())
    assert restored.report == surgery.report and restored.saved_path == surgery.saved_path
