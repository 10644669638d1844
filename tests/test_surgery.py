"""Surgery: the pruned model is smaller, has no gates, and its eval outputs equal the gated model's."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sss_lightning.gates import BlockGate, ChannelGate, Gate, GroupGate, iter_gates
from sss_lightning.models import GatedResidual, default_input_size, list_models
from sss_lightning.surgery import SurgeryError, prune


@pytest.mark.slow  # 60 examples: over 10 s (--durations=0)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.sampled_from([8, 11, 14]),
    gates=st.sampled_from(["block", "channel", "both", "stream", "all"]),
    pattern=st.sampled_from(["random", "random", "random", "ones", "zeros"]),
    p_zero=st.floats(0.1, 0.9),
    size=st.sampled_from([8, 9, 16]),
    seed=st.integers(0, 2**16),
)
def test_cifar_resnet_surgery_is_exact(
    tiny_model, randomize_bn, set_gates, assert_same_outputs, depth, gates, pattern, p_zero, size, seed
):
    gen = torch.Generator().manual_seed(seed)
    block = "bottleneck" if depth == 11 else "basic"
    torch.manual_seed(seed)
    model = tiny_model(depth=depth, block=block, num_classes=5, gates=gates)
    randomize_bn(model, gen)
    set_gates(model, pattern, gen, p_zero)
    pruned = prune(model)
    assert not list(iter_gates(pruned))
    assert_same_outputs(model, pruned, torch.randn(3, 3, size, size, generator=gen))
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in pruned.parameters())
    scales = torch.cat([info.module.scale.detach() for info in iter_gates(model)])
    if (scales == 0).any():  # zero gates remove weights beyond the gate factors themselves
        assert n_after < n_before - scales.numel()
    else:  # only the folded gate factors disappear
        assert n_after == n_before - scales.numel()


def test_prune_never_modifies_its_input(tiny_model, set_gates):
    gen = torch.Generator().manual_seed(0)
    model = tiny_model("resnet20", gates="both")
    set_gates(model, "random", gen)
    before = copy.deepcopy(model.state_dict())
    prune(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert len(list(iter_gates(model))) == 18


def test_zero_block_gate_removes_the_branch_and_keeps_the_projection(tiny_model, assert_same_outputs):
    model = tiny_model(depth=8, gates="block")
    with torch.no_grad():
        model.layer2[0].gate.scale.zero_()  # a downsampling block: its shortcut is a projection
    pruned = prune(model)
    assert pruned.layer2[0].branch is None
    assert isinstance(pruned.layer2[0].shortcut[0], nn.Conv2d)
    assert_same_outputs(model, pruned, torch.randn(2, 3, 8, 8))


def test_branch_with_all_channels_cut_becomes_its_constant_bn_shift_times_gate(
    tiny_model, randomize_bn, assert_same_outputs
):
    gen = torch.Generator().manual_seed(1)
    model = tiny_model(depth=8, gates="both")
    randomize_bn(model, gen)
    with torch.no_grad():
        model.layer1[0].branch[3].scale.zero_()  # every inner channel of the block
        model.layer1[0].gate.scale.fill_(0.7)
    pruned = prune(model)
    block = pruned.layer1[0]
    assert block.branch is None and block.branch_bias is not None
    bn = model.layer1[0].branch[5]
    shift = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(block.branch_bias, 0.7 * shift.detach())
    assert_same_outputs(model, pruned, torch.randn(2, 3, 8, 8))


def test_channel_cut_shrinks_producer_bn_and_consumer(tiny_model):
    model = tiny_model(depth=8, width=8, gates="channel")
    with torch.no_grad():
        model.layer1[0].branch[3].scale[:5] = 0
    block = prune(model).layer1[0].branch
    assert block[0].out_channels == 3 and block[1].num_features == 3 and block[4].in_channels == 3
    assert isinstance(block[3], nn.Identity)


def vgg_like() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        ChannelGate(8),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        ChannelGate(6),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    )


@pytest.mark.parametrize("pattern", ["random", "zeros", "ones"])
def test_plain_sequential_channels_with_pooling_and_flatten(randomize_bn, set_gates, assert_same_outputs, pattern):
    gen = torch.Generator().manual_seed(2)
    model = vgg_like()
    randomize_bn(model, gen)
    set_gates(model, pattern, gen)
    pruned = prune(model)
    assert_same_outputs(model, pruned, torch.randn(4, 3, 8, 8, generator=gen))
    if pattern == "zeros":  # an emptied layer of a plain network keeps one (zero-weighted) channel
        assert pruned[0].out_channels == 1 and pruned[10].in_features == 16


def inverted_residual(channels: int = 4, expand: int = 12) -> GatedResidual:
    """MobileNet-v2 style: the gate on the expanded width sits after the depthwise conv."""
    branch = nn.Sequential(
        nn.Conv2d(channels, expand, 1, bias=False),
        nn.BatchNorm2d(expand),
        nn.ReLU6(),
        nn.Conv2d(expand, expand, 3, padding=1, groups=expand, bias=False),
        nn.BatchNorm2d(expand),
        nn.ReLU(),
        ChannelGate(expand),
        nn.Conv2d(expand, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    )
    return GatedResidual(branch, gate=BlockGate())


def test_depthwise_conv_is_cut_together_with_its_producer(randomize_bn, set_gates, assert_same_outputs):
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(inverted_residual(), inverted_residual())
    randomize_bn(model, gen)
    set_gates(model, "random", gen, p_zero=0.5)
    with torch.no_grad():
        model[0].branch[6].scale.copy_(torch.tensor([0.0, 1.0] * 6))
        model[0].gate.scale.fill_(0.5)
    pruned = prune(model)
    dw = pruned[0].branch[3]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (6, 6, 6)
    assert pruned[0].branch[0].out_channels == 6
    assert_same_outputs(model, pruned, torch.randn(2, 4, 7, 7, generator=gen))


def resnext_block(channels: int = 8, width: int = 12, groups: int = 4) -> GatedResidual:
    branch = nn.Sequential(
        nn.Conv2d(channels, width, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        GroupGate(groups),
        nn.Conv2d(width, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    )
    return GatedResidual(branch, gate=BlockGate(), post_act=nn.ReLU())


def test_group_gates_remove_whole_groups_and_their_inputs(randomize_bn, assert_same_outputs):
    gen = torch.Generator().manual_seed(4)
    model = resnext_block()
    randomize_bn(model, gen)
    with torch.no_grad():
        model.branch[6].scale.copy_(torch.tensor([0.0, 0.5, 0.0, 2.0]))
    pruned = prune(model)
    grouped = pruned.branch[3]
    assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (6, 6, 2)
    assert pruned.branch[0].out_channels == 6 and pruned.branch[7].in_channels == 6
    assert_same_outputs(model, pruned, torch.randn(2, 8, 6, 6, generator=gen))


class NotASequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate, self.fc = nn.Conv2d(3, 4, 3), ChannelGate(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)))


def test_gate_outside_a_sequential_says_where_and_what_to_do():
    with pytest.raises(SurgeryError, match=r"ChannelGate at gate is not inside an nn.Sequential .* sss_prune"):
        prune(NotASequential())


class OwnSurgery(NotASequential):
    """The protocol: a module with sss_prune() tells surgery how it is cut."""

    def sss_prune(self) -> nn.Module:
        from sss_lightning.surgery import prune_sequential

        return prune_sequential(nn.Sequential(self.conv, self.gate, self.fc))


def test_modules_with_sss_prune_plug_in_without_touching_the_core(assert_same_outputs):
    model = nn.Sequential(OwnSurgery())
    with torch.no_grad():
        model[0].gate.scale.copy_(torch.tensor([0.0, 2.0, 0.0, 1.0]))
    pruned = prune(model)
    assert pruned[0][0].out_channels == 2
    assert_same_outputs(model, pruned, torch.randn(2, 3, 6, 6))


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            lambda: [nn.Conv2d(3, 4, 1), ChannelGate(4), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)],
            "BatchNorm2d between the gate and the next conv/linear does not map a zero",
        ),
        (lambda: [nn.Conv2d(3, 4, 1), ChannelGate(4)], "no conv/linear after the gate consumes"),
        (lambda: [ChannelGate(3), nn.Conv2d(3, 2, 1)], "no conv/linear before the gate produces"),
        (lambda: [nn.Conv2d(4, 4, 3, groups=2), ChannelGate(4), nn.Conv2d(4, 2, 1)], "can only lose whole groups"),
    ],
)
def test_unsupported_gate_placements_raise_clear_errors(layers, message):
    model = nn.Sequential(*layers())
    with torch.no_grad():
        next(m for m in model if isinstance(m, Gate)).scale[0] = 0
    with pytest.raises(SurgeryError, match=message):
        prune(model)


def test_negative_gate_cannot_cross_a_relu():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), ChannelGate(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[1].scale[0] = -1.0
    with pytest.raises(SurgeryError, match="negative gate cannot be folded across ReLU"):
        prune(model)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "resnext29_16x64d" else n for n in list_models()]
)  # the widest registry model: about 10 s
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16), p_zero=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_every_registry_model_prunes_exactly(
    registry_model, randomize_bn, set_gates, assert_same_outputs, name, seed, p_zero
):
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(registry_model(name))
    randomize_bn(model, gen)
    set_gates(model, "random", gen, p_zero)
    size = 16 if default_input_size(name)[1] <= 32 else 32  # small, but through every pooling stage
    assert_same_outputs(model, prune(model), torch.randn(2, 3, size, size, generator=gen))


def test_surgery_leaves_the_global_rng_alone(tiny_model, set_gates):
    """Snapshots during training must not change the data order or dropout masks that follow."""
    gen = torch.Generator().manual_seed(5)
    model = tiny_model("resnet20", gates="both")
    set_gates(model, "random", gen)
    state = torch.get_rng_state()
    prune(model)
    assert torch.equal(state, torch.get_rng_state())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    round_to=st.sampled_from([2, 3, 4, 8]),
    p_zero=st.floats(0.1, 0.9),
    fold=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_to_keeps_the_fewest_channels_that_are_a_multiple_and_stays_exact(
    tiny_model, randomize_bn, set_gates, assert_same_outputs, round_to, p_zero, fold, seed
):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = tiny_model(depth=14, width=8, num_classes=5, gates="channel")
    randomize_bn(model, gen)
    set_gates(model, "random", gen, p_zero)
    pruned = prune(model, round_to=round_to, fold_gates=fold)
    x = torch.randn(3, 3, 9, 9, generator=gen)
    if fold:
        assert_same_outputs(model, pruned, x)
    else:
        model.train(), pruned.train()
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-4)
    for name, block in model.named_modules():
        if not isinstance(block, GatedResidual):
            continue
        gate, kept = block.branch[3], pruned.get_submodule(name).branch
        alive, full = int(gate.alive().sum()), gate.num_structures
        if kept is None:  # every channel zero: the branch became its constant
            assert fold and alive == 0
            continue
        want = min(full, -(-max(alive, 1) // round_to) * round_to)  # unfolded: one zero channel stands in
        assert kept[0].out_channels == kept[4].in_channels == want


def test_round_to_rounds_group_gates_by_whole_groups(randomize_bn, assert_same_outputs):
    model = resnext_block()  # 4 groups of 3 channels
    randomize_bn(model, torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.branch[6].scale.copy_(torch.tensor([0.0, 0.5, 0.0, 2.0]))
    assert prune(model, round_to=2).branch[3].out_channels == 6  # 2 groups: already a multiple
    rounded = prune(model, round_to=4)  # 2 groups = 6 channels; the next multiple of 4 needs all 4 groups
    assert rounded.branch[3].out_channels == 12
    assert_same_outputs(model, rounded, torch.randn(2, 8, 6, 6))


@pytest.mark.parametrize("bad", [0, -8, 2.5, True])
def test_round_to_must_be_a_positive_int(tiny_model, bad):
    with pytest.raises(ValueError, match="round_to must be a positive int"):
        prune(tiny_model(depth=8), round_to=bad)


def test_plugins_without_round_to_are_told_how_to_support_it():
    model = nn.Sequential(OwnSurgery())
    prune(model)  # the default needs nothing new from a plug-in
    with pytest.raises(SurgeryError, match=r"OwnSurgery.sss_prune\(\) takes no round_to .*`round_to: int = 1`"):
        prune(model, round_to=8)
