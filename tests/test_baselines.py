"""Baselines in the box: Network Slimming and L1-norm filter pruning on the same gates and surgery."""

import lightning as L
import pytest
import torch

from sss_lightning import count_flops, load_pruned
from sss_lightning.baselines import NetworkSlimming, channel_scores, gated_producers, select_channels
from sss_lightning.callbacks import MagnitudePruning
from sss_lightning.gates import gate_parameters, iter_gates


@pytest.fixture
def model(tiny_model):
    """A tiny ResNet-20 with channel gates only and distinct BN scales (seeded)."""
    torch.manual_seed(0)
    model = tiny_model("resnet20", num_classes=4, gates="channel")
    with torch.no_grad():  # distinct scores
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    return model


def test_every_channel_gate_is_matched_to_its_producing_conv_and_bn(model):
    found = list(gated_producers(model))
    assert len(found) == 9  # one per basic block
    for name, gate, conv, bn in found:
        assert conv.out_channels == gate.num_structures == bn.num_features
        assert name.endswith(".branch.3")  # conv, bn, relu, gate


@pytest.mark.parametrize("criterion", ["bn_scale", "filter_l1"])
def test_global_selection_removes_the_lowest_scores_over_all_layers(criterion, model):
    scores = channel_scores(model, criterion)
    removed = select_channels(model, criterion, 0.4)
    flat = torch.cat(list(scores.values()))
    threshold = flat.sort().values[int(0.4 * flat.numel()) - 1]
    for (name, gate, _, _), s in zip(gated_producers(model), scores.values(), strict=True):
        expected = (s > threshold).float()
        if not expected.any():
            expected[s.argmax()] = 1
        assert torch.equal(gate.scale.detach(), expected), name
    zeros = torch.cat([g.detach() == 0 for g in gate_parameters(model)])
    assert removed == pytest.approx(zeros.float().mean().item())
    assert 0.3 < removed <= 0.4  # 40% minus the channels given back to layers that would have been emptied


def test_layer_selection_removes_the_same_fraction_in_every_layer_and_keeps_one(model):
    select_channels(model, "filter_l1", 0.5, scope="layer")
    for _, gate, _, _ in gated_producers(model):
        assert int((gate.scale == 0).sum()) == gate.num_structures // 2
    select_channels(model, "bn_scale", 0.99, scope="global")
    assert all((g != 0).sum() >= 1 for g in gate_parameters(model))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"criterion": "weights", "amount": 0.5}, "criterion must be 'bn_scale'"),
        ({"criterion": "bn_scale", "amount": 1.0}, r"amount .* must be in \[0, 1\)"),
        ({"criterion": "bn_scale", "amount": 0.5, "scope": "stage"}, "scope must be 'global' or 'layer'"),
    ],
)
def test_bad_pruning_arguments_say_what_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MagnitudePruning(**kwargs)


def test_no_channel_gates_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="no channel gates after a conv; build it with gates='channel'"):
        channel_scores(tiny_model("resnet20", gates="block"), "filter_l1")


def test_network_slimming_puts_the_bn_scales_under_l1_and_keeps_gates_out_of_the_optimizer():
    module = NetworkSlimming(sparsity=1e-3, arch="resnet20", num_classes=4, arch_kwargs={"width": 4})
    groups = {g["name"]: g for g in module.param_groups()}
    assert set(groups) == {"weights", "bn_scales"}
    assert groups["bn_scales"]["mode"] == "sgd" and groups["bn_scales"]["gamma"] == 1e-3
    bn_ids = {id(bn.weight) for _, _, _, bn in gated_producers(module.net)}
    assert {id(p) for p in groups["bn_scales"]["params"]} == bn_ids
    assert not any(p.requires_grad for p in gate_parameters(module.net))


@pytest.fixture(scope="session")
def fit(quiet_trainer, tiny_data):
    """fit(module, callbacks, root, epochs=3): a seeded fit on tiny_data with 128 training images."""

    def fit(module, callbacks, root, epochs=3):
        trainer = quiet_trainer(root, callbacks, max_epochs=epochs)
        L.seed_everything(0)
        trainer.fit(module, datamodule=tiny_data(train_size=128))
        return trainer

    return fit


@pytest.mark.slow
def test_the_l1_subgradient_shrinks_the_bn_scales(tmp_path, fit):
    norms = {}
    for sparsity in (0.0, 0.1):
        torch.manual_seed(0)
        module = NetworkSlimming(sparsity=sparsity, arch="resnet20", num_classes=4, arch_kwargs={"width": 4})
        fit(module, [], tmp_path / str(sparsity), epochs=2)
        norms[sparsity] = float(torch.cat(list(channel_scores(module.net, "bn_scale").values())).sum())
    assert norms[0.1] < 0.8 * norms[0.0]


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["bn_scale", "filter_l1"])
def test_prune_then_finetune_gives_a_smaller_network_trained_after_the_cut(tmp_path, criterion, fit):
    torch.manual_seed(0)
    module = NetworkSlimming(sparsity=1e-3, arch="resnet20", num_classes=4, arch_kwargs={"width": 4})
    full = count_flops(module.net, [3, 8, 8]).macs
    pruning = MagnitudePruning(criterion, amount=0.5, finetune_epochs=1, dirpath=str(tmp_path))
    fit(module, [pruning], tmp_path)
    assert not list(iter_gates(module.net))  # cut at the start of epoch 3 and fine-tuned in it
    pruned = load_pruned(tmp_path / "pruned.pt")
    assert count_flops(pruned, [3, 8, 8]).macs < 0.8 * full
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(pruned(x), module.net.eval()(x))
