import pytest
import torch

from sss_lightning.gates import iter_gates
from sss_lightning.models import CifarResNet, build_model, list_models


@pytest.mark.parametrize("name, blocks", [("resnet20", 9), ("resnet32", 15), ("resnet56", 27), ("resnet164", 54)])
def test_registry_resnets_have_a_block_gate_per_residual_branch(name, blocks):
    model = build_model(name, num_classes=7, in_channels=1, gates="block")
    kinds = [g.kind for g in iter_gates(model)]
    assert kinds == ["block"] * blocks
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 7)
    assert model.sss_arch == {"name": name, "kwargs": {"num_classes": 7, "in_channels": 1, "gates": "block"}}


def test_channel_gates_sit_on_inner_channels_of_each_block():
    basic = CifarResNet(depth=20, gates="channel")
    assert [g.module.num_structures for g in iter_gates(basic)] == [16] * 3 + [32] * 3 + [64] * 3
    bottleneck = CifarResNet(depth=164, gates="both", width=4)
    per_block = [g.kind for g in iter_gates(bottleneck)][:3]
    assert per_block == ["channel", "channel", "block"]


def test_plain_network_has_no_gates_and_same_output_shape():
    model = CifarResNet(depth=20, gates="none")
    assert not list(iter_gates(model))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_forward_backward_reaches_every_gate():
    model = CifarResNet(depth=20, gates="both", width=4)
    model(torch.randn(2, 3, 12, 12)).sum().backward()
    assert all(g.module.scale.grad is not None for g in iter_gates(model))


def test_list_models_includes_the_cifar_resnets():
    assert {"resnet20", "resnet32", "resnet56", "resnet110", "resnet164"} <= set(list_models())


def test_unknown_model_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet21'; known models: .*resnet20"):
        build_model("resnet21")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 21}, "depth 21 does not fit basic blocks"),
        ({"depth": 32, "block": "bottleneck"}, "depth 32 does not fit bottleneck"),
        ({"depth": 20, "gates": "all"}, "gates must be one of"),
        ({"depth": 20, "block": "wide"}, "block must be 'basic' or 'bottleneck'"),
        ({"depth": 20, "num_classes": 0}, "num_classes must be >= 1"),
    ],
)
def test_bad_architecture_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CifarResNet(**kwargs)
