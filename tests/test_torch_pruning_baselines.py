"""Torch-Pruning baselines (benchmarks/torch_pruning_baselines.py): Network Slimming and DepGraph sparse
training, one-shot pruning to a MACs target counted with our own counter, fine-tuning on the same LR curve."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

pytest.importorskip("torch_pruning")

from benchmarks.torch_pruning_baselines import DEFAULT_REG, PlainClassifier, TorchPruningBaseline  # noqa: E402
from sss_lightning.flops import count_flops  # noqa: E402
from sss_lightning.models import build_model  # noqa: E402

SIZE = (3, 8, 8)  # tiny_data: 4 classes of 8x8 RGB images, 4 batches of 16 per epoch
METHODS = ("slimming", "depgraph")


def _module(seed: int = 0) -> PlainClassifier:
    L.seed_everything(seed)
    return PlainClassifier(num_classes=4, in_channels=3, arch_kwargs={"width": 4})


@pytest.fixture(scope="session")
def fit(quiet_trainer, tiny_data):
    """fit(module, callbacks, epochs, **trainer_kwargs): the trainer of a fit on tiny_data."""

    def fit(module: L.LightningModule, callbacks: list[Callback], epochs: int, **kwargs) -> L.Trainer:
        trainer = quiet_trainer(callbacks=callbacks, max_epochs=epochs, num_sanity_val_steps=0, **kwargs)
        trainer.fit(module, datamodule=tiny_data())
        return trainer

    return fit


class Recorder(Callback):
    """The LR at every batch and, at each epoch end, the optimizer's momentum and the network's weights."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.epoch_ends: list[dict[str, dict[str, torch.Tensor]]] = []
        self.rng_states: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        params = dict(pl_module.net.named_parameters())
        self.rng_states.append(torch.get_rng_state())
        self.epoch_ends.append(
            {
                "weights": {n: p.detach().clone() for n, p in params.items()},
                "momentum": {
                    n: optimizer.state[p]["momentum_buffer"].clone()
                    for n, p in params.items()
                    if "momentum_buffer" in optimizer.state.get(p, {})
                },
            }
        )


def _conv_linear_weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] + [
        m.bias for m in net.modules() if isinstance(m, nn.Linear)
    ]


@pytest.mark.parametrize("gates", ["channel", "both"])
def test_plain_resnet20_starts_from_the_same_weights_as_the_gated_one(gates):
    L.seed_everything(3)
    plain = build_model("resnet20", gates="none", num_classes=10, in_channels=1)
    L.seed_everything(3)
    gated = build_model("resnet20", gates=gates, num_classes=10, in_channels=1)
    ours, theirs = _conv_linear_weights(plain), _conv_linear_weights(gated)
    assert len(ours) == len(theirs) == 19 + 2 + 2  # 19 3x3 convs, 2 projection shortcuts, the head
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    L.seed_everything(3)
    module = PlainClassifier(arch="resnet20", num_classes=10, in_channels=1)
    for a, b in zip(_conv_linear_weights(module.net), theirs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_fit_prunes_to_the_macs_target_and_fine_tunes_on_the_unpruned_lr_curve(method, fit):
    module = _module()
    full = count_flops(module.net, SIZE).macs
    before, after = Recorder(), Recorder()
    baseline = TorchPruningBaseline(method, target_macs=0.5, prune_at_epoch=1, input_size=SIZE)
    assert baseline.reg == DEFAULT_REG[method]
    trainer = fit(module, [before, baseline, after], epochs=2)

    report = baseline.report
    assert set(report) >= {"macs_before", "macs_after", "macs_ratio", "params_after", "pruning_ratio"}
    assert report["macs_before"] == full
    assert abs(report["macs_ratio"] - 0.5) <= baseline.tolerance
    assert report["macs_after"] == count_flops(module.net, SIZE).macs < full
    assert report["params_after"] == sum(p.numel() for p in module.net.parameters())
    assert 0 < report["pruning_ratio"] < 1
    assert (report["epoch"], report["step"]) == (1, 4) and trainer.global_step == 8  # then 4 fine-tuning steps
    assert module.pruned
    module.eval()
    assert module(torch.randn(2, *SIZE)).shape == (2, 4)
    assert "val/acc" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics

    # the same LR at every step as an unpruned run of the same length
    reference = Recorder()
    fit(_module(), [reference], epochs=2)
    assert after.lrs == pytest.approx(reference.lrs, rel=1e-12, abs=0.0)
    assert len(set(after.lrs)) == 8  # cosine, stepped every step
    assert torch.equal(before.rng_states[0], after.rng_states[0])  # pruning draws no random numbers: same data order

    # momentum survives pruning for every surviving entry: the head keeps its bias and its kept input columns
    old, new = before.epoch_ends[0], after.epoch_ends[0]
    params = dict(module.net.named_parameters())
    assert set(new["momentum"]) == set(params)
    assert all(new["momentum"][n].shape == p.shape for n, p in params.items())
    assert torch.equal(new["momentum"]["head.2.bias"], old["momentum"]["head.2.bias"])
    w_old, w_new = old["weights"]["head.2.weight"], new["weights"]["head.2.weight"]
    assert w_new.shape[1] < w_old.shape[1]  # the last stage lost channels
    for j in range(w_new.shape[1]):
        (i,) = [i for i in range(w_old.shape[1]) if torch.equal(w_old[:, i], w_new[:, j])]
        assert torch.equal(new["momentum"]["head.2.weight"][:, j], old["momentum"]["head.2.weight"][:, i])


def _sparsity_measure(method: str, net: nn.Module) -> float:
    """What each regulariser pulls down: the BN scales' L1 (slimming), all conv/BN weights' squares (DepGraph)."""
    if method == "slimming":
        return sum(float(m.weight.detach().abs().sum()) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    kinds = (nn.Conv2d, nn.BatchNorm2d)
    return sum(float(m.weight.detach().pow(2).sum()) for m in net.modules() if isinstance(m, kinds))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_the_regulariser_shrinks_what_the_method_prunes_by(method, fit, tiny_model):
    measured = {}
    for reg in (0.0, 0.05):
        module, probe = _module(), Recorder()
        baseline = TorchPruningBaseline(method, target_macs=0.6, prune_at_epoch=1, input_size=SIZE, reg=reg)
        fit(module, [probe, baseline], epochs=1)  # the probe reads the weights just before pruning
        state = probe.epoch_ends[0]["weights"]
        net = tiny_model("resnet20", gates="none", num_classes=4, in_channels=3)
        net.load_state_dict(state, strict=False)  # the parameters: what the regulariser acts on
        measured[reg] = _sparsity_measure(method, net)
    assert measured[0.05] < measured[0.0] * 0.995  # same data, same init: only the regulariser differs


@pytest.mark.slow
def test_a_target_that_torch_pruning_cannot_reach_is_an_error_saying_what_it_can(fit):
    with pytest.raises(ValueError, match=r"within tolerance=1e-06.*closest MACs fractions are"):
        fit(_module(), [TorchPruningBaseline("slimming", 0.5, 1, SIZE, tolerance=1e-6)], epochs=1)
    with pytest.raises(ValueError, match=r"cannot bring CifarResNet down to target_macs=0.001"):
        fit(_module(), [TorchPruningBaseline("depgraph", 0.001, 1, SIZE)], epochs=1)


@pytest.mark.slow
def test_pruned_checkpoint_resumes_without_pruning_again_and_loads_with_its_shape(
    tmp_path, fit, quiet_trainer, tiny_data
):
    module = _module()
    baseline = TorchPruningBaseline("depgraph", target_macs=0.5, prune_at_epoch=1, input_size=SIZE)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    trainer = fit(module, [baseline, every_epoch], epochs=3, enable_checkpointing=True)
    final = tmp_path / "final.ckpt"
    trainer.save_checkpoint(final)

    loaded = PlainClassifier.load_from_checkpoint(final, map_location="cpu")
    assert loaded.pruned and count_flops(loaded.net, SIZE).macs == baseline.report["macs_after"]
    x = torch.randn(3, *SIZE)
    module.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), module(x), rtol=0, atol=0)

    again = TorchPruningBaseline("depgraph", target_macs=0.5, prune_at_epoch=1, input_size=SIZE)
    fresh = _module(seed=1)  # unpruned as built: the checkpoint reshapes it
    resumed = quiet_trainer(callbacks=[again], max_epochs=3, num_sanity_val_steps=0)
    resumed.fit(fresh, datamodule=tiny_data(), ckpt_path=tmp_path / "epoch=1.ckpt")  # written after epoch 2
    assert again.report == baseline.report  # restored, not pruned a second time
    assert resumed.global_step == 12 and count_flops(fresh.net, SIZE).macs == baseline.report["macs_after"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "slim"}, "got 'slim'"),
        ({"target_macs": 1.0}, "got 1.0"),
        ({"target_macs": 0}, "got 0"),
        ({"target_macs": True}, "got True"),
        ({"prune_at_epoch": 0}, "got 0"),
        ({"prune_at_epoch": 1.5}, "got 1.5"),
        ({"input_size": (3, 8)}, r"got \(3, 8\)"),
        ({"input_size": (3, 8, 0)}, r"got \(3, 8, 0\)"),
        ({"reg": -1e-4}, "got -0.0001"),
        ({"reg": float("nan")}, "got nan"),
        ({"tolerance": 0.0}, "got 0.0"),
        ({"tolerance": 1.5}, "got 1.5"),
    ],
)
def test_bad_baseline_arguments_name_the_value(kwargs, message):
    settings = {"method": "slimming", "target_macs": 0.5, "prune_at_epoch": 1, "input_size": SIZE, **kwargs}
    with pytest.raises(ValueError, match=message):
        TorchPruningBaseline(**settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "got 0.0"),
        ({"lr": float("inf")}, "got inf"),
        ({"momentum": 1.0}, "got 1.0"),
        ({"momentum": 0.0}, "momentum=0"),
        ({"weight_decay": -1.0}, "got -1.0"),
        ({"num_classes": 0}, "got 0"),
        ({"in_channels": 2.0}, "got 2.0"),
        ({"arch_kwargs": {"gates": "both"}}, r"\['gates'\]"),
        ({"arch_kwargs": [("width", 4)]}, r"got \[\('width', 4\)\]"),
    ],
)
def test_bad_plain_classifier_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlainClassifier(**kwargs)


def test_a_pruning_epoch_after_the_last_epoch_or_a_module_without_net_is_refused_before_training(fit):
    with pytest.raises(ValueError, match=r"prune_at_epoch=3 is after the last epoch \(max_epochs=2\)"):
        fit(_module(), [TorchPruningBaseline("slimming", 0.5, 3, SIZE)], epochs=2)

    class NoNet(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)

        def training_step(self, batch, batch_idx):
            return self.body(batch[0].mean((2, 3))).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="has no nn.Module attribute 'net'"):
        fit(NoNet(), [TorchPruningBaseline("slimming", 0.5, 1, SIZE)], epochs=1)
