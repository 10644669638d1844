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


def test_channel_gates_sit_on_inner_channels_of_each_block(tiny_model):
    basic = CifarResNet(depth=20, gates="channel")
    assert [g.module.num_structures for g in iter_gates(basic)] == [16] * 3 + [32] * 3 + [64] * 3
    bottleneck = tiny_model(depth=164, gates="both")
    per_block = [g.kind for g in iter_gates(bottleneck)][:3]
    assert per_block == ["channel", "channel", "block"]


def test_plain_network_has_no_gates_and_same_output_shape():
    model = CifarResNet(depth=20, gates="none")
    assert not list(iter_gates(model))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_forward_backward_reaches_every_gate(tiny_model):
    model = tiny_model(depth=20, gates="both")
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
        ({"depth": 20, "gates": "every"}, "gates must be one of"),
        ({"depth": 20, "block": "wide"}, "block must be 'basic' or 'bottleneck'"),
        ({"depth": 20, "num_classes": 0}, "num_classes must be >= 1"),
    ],
)
def test_bad_architecture_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CifarResNet(**kwargs)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20", {"gates": "both", "width": 4}),
        ("resnext29_8x64d", {"gates": "both", "cardinality": 4, "base_width": 2, "stem_width": 8, "out_width": 16}),
    ],
)
def test_gates_folded_into_the_next_conv_in_training_match_running_the_gate_modules(name, kwargs, monkeypatch):
    """The fused training forward must give the outputs and gradients of gate * activation, gates included."""
    from sss_lightning.gates import random_gate_pattern

    model = build_model(name, **kwargs)
    random_gate_pattern(model, 0.3, seed=1)
    x = torch.randn(3, 3, 12, 12)
    inner = [g.module for g in iter_gates(model) if g.kind != "block"]
    calls = []
    for gate in inner:
        gate.register_forward_hook(lambda *_: calls.append(1))

    def loss_and_grads():
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused_out, fused_grads = loss_and_grads()
    assert not calls, "the training forward should fold the inner gates into the next conv, not run them"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # what a compiler sees: the plain modules
    ref_out, ref_grads = loss_and_grads()
    assert len(calls) == len(inner)
    torch.testing.assert_close(fused_out, ref_out, rtol=1e-5, atol=1e-6)
    for name_, grad in ref_grads.items():  # float32 sums in another order: compare relative to the norm
        assert (fused_grads[name_] - grad).norm() <= 1e-4 * grad.norm() + 1e-7, name_
