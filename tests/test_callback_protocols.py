"""Callbacks check at ``setup`` that the LightningModule has what they use (sss_lightning.callbacks.protocols),
and say which member is missing and how to get it, before any training step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from sss_lightning import SSSClassifier
from sss_lightning.callbacks import (
    FreezeGates,
    GateMonitor,
    InTrainingShrink,
    MacsBudget,
    MagnitudePruning,
    PruningSnapshot,
    StructuralSurgery,
)
from sss_lightning.callbacks.protocols import (
    FineTunableModule,
    GatedModule,
    ReshapableModule,
    SettleableModule,
    ShrinkableModule,
    ShrinkAwareModule,
    check_module,
    protocol_members,
)
from sss_lightning.data import SyntheticDataModule
from sss_lightning.models import build_model


class PlainModule(L.LightningModule):
    """A LightningModule that keeps its network elsewhere than ``net``; training it would fail loudly."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3 * 8 * 8, 4)

    def training_step(self, batch, batch_idx):
        raise AssertionError("the callback should have refused the module at setup, before any step")

    def validation_step(self, batch, batch_idx):
        raise AssertionError("the callback should have refused the module at setup, before any step")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NetOnly(PlainModule):
    """Has the gated ``net`` but none of SSSModule's reshaping members."""

    def __init__(self, net: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else build_model("resnet20", num_classes=4, width=4)


class NoFinetune(NetOnly):
    """Everything StructuralSurgery needs except ``prepare_finetune``."""

    shrunk_gates: dict = {}
    reshaped = False

    def replace_network(self, net: nn.Module) -> None:
        self.net = net

    def network_as_built(self) -> nn.Module:
        return self.net


def fit(module: L.LightningModule, callback: L.Callback, tmp_path) -> None:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[callback],
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_classes=4, image_size=8, train_size=16, batch_size=8))


FIX = r"Fix: subclass sss_lightning.SSSModule \(or SSSClassifier\), or define {name} on {kind}"

CALLBACKS = {
    "PruningSnapshot": lambda: PruningSnapshot(),
    "GateMonitor": lambda: GateMonitor(),
    "StructuralSurgery": lambda: StructuralSurgery(),
    "MagnitudePruning": lambda: MagnitudePruning("bn_scale", amount=0.5),
    "FreezeGates": lambda: FreezeGates(patience=1),
    "MacsBudget": lambda: MacsBudget(0.5, by_epoch=1),
    "InTrainingShrink": lambda: InTrainingShrink(epochs=[2]),
}


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_a_module_without_net_is_refused_at_setup_with_the_fix(name, tmp_path):
    with pytest.raises(TypeError, match=rf"{name} needs a LightningModule with `net`.*PlainModule has no 'net'"):
        fit(PlainModule(), CALLBACKS[name](), tmp_path)
    with pytest.raises(TypeError, match=FIX.format(name="net", kind="PlainModule")):
        fit(PlainModule(), CALLBACKS[name](), tmp_path)


@pytest.mark.parametrize(
    "callback, missing",
    [
        (GateMonitor(), "shrunk_gates"),
        (StructuralSurgery(), "reshaped"),
        (MagnitudePruning("filter_l1", amount=0.3), "reshaped"),
        (FreezeGates(patience=1), "settled_by"),
        (MacsBudget(0.5, by_epoch=1), "settled_by"),
        (InTrainingShrink(epochs=[2]), "shrink"),
    ],
)
def test_a_module_with_only_net_is_refused_naming_the_first_missing_member(callback, missing, tmp_path):
    match = rf"{type(callback).__name__} needs .*NetOnly has no '{missing}'\. " + FIX.format(
        name=missing, kind="NetOnly"
    )
    with pytest.raises(TypeError, match=match):
        fit(NetOnly(), callback, tmp_path)


def test_fine_tuning_surgery_also_needs_prepare_finetune(tmp_path):
    with pytest.raises(TypeError, match=r"`prepare_finetune\(lr, total_steps\)`.*no 'prepare_finetune'"):
        fit(NoFinetune(), StructuralSurgery(finetune_epochs=1, filename=None), tmp_path)


def test_a_net_that_is_not_a_module_is_named(tmp_path):
    module = NetOnly()
    module.net = None
    with pytest.raises(
        TypeError, match=r"PruningSnapshot needs `net` to be the gated nn.Module, but NetOnly.net is None"
    ):
        fit(module, PruningSnapshot(), tmp_path)


def test_sss_modules_satisfy_every_protocol():
    module = SSSClassifier(arch="resnet20", num_classes=4, arch_kwargs={"width": 4})
    protocols = (
        GatedModule,
        ShrinkAwareModule,
        ReshapableModule,
        FineTunableModule,
        ShrinkableModule,
        SettleableModule,
    )
    for protocol in protocols:
        assert isinstance(module, protocol), protocol.__name__
        check_module(module, protocol, "test")
    assert not isinstance(PlainModule(), GatedModule)
    assert isinstance(NetOnly(), GatedModule) and not isinstance(NetOnly(), ReshapableModule)


def test_protocol_members_list_what_each_callback_uses():
    assert protocol_members(GatedModule) == ["net", "example_input_array"]
    assert protocol_members(ShrinkAwareModule) == ["net", "example_input_array", "shrunk_gates"]
    assert protocol_members(FineTunableModule) == [
        "net",
        "example_input_array",
        "reshaped",
        "replace_network",
        "network_as_built",
        "prepare_finetune",
    ]
    assert protocol_members(ShrinkableModule) == ["net", "example_input_array", "shrink"]
    assert protocol_members(SettleableModule) == ["net", "example_input_array", "settled_by", "settle"]
