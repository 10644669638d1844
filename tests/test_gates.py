import pytest
import torch
from torch import nn

from sss_lightning.gates import (
    BlockGate,
    ChannelGate,
    GroupGate,
    gate_parameters,
    has_gates,
    iter_gates,
    sparsity,
)


def test_gates_start_at_one_and_are_identity():
    x = torch.randn(2, 8, 5, 5)
    for gate in (ChannelGate(8), GroupGate(4), BlockGate()):
        assert torch.all(gate.scale == 1.0)
        assert torch.equal(gate(x), x)


def test_channel_gate_scales_each_channel():
    gate = ChannelGate(3)
    with torch.no_grad():
        gate.scale.copy_(torch.tensor([0.0, 2.0, -1.0]))
    x = torch.ones(2, 3, 4)
    y = gate(x)
    assert torch.equal(y[:, 0], torch.zeros(2, 4))
    assert torch.equal(y[:, 1], torch.full((2, 4), 2.0))
    assert torch.equal(y[:, 2], torch.full((2, 4), -1.0))


def test_group_gate_scales_contiguous_channel_blocks():
    gate = GroupGate(2)
    with torch.no_grad():
        gate.scale.copy_(torch.tensor([0.0, 3.0]))
    y = gate(torch.ones(1, 6, 2, 2))
    assert torch.equal(y[0, :3], torch.zeros(3, 2, 2))
    assert torch.equal(y[0, 3:], torch.full((3, 2, 2), 3.0))


def test_block_gate_scales_whole_tensor_and_has_one_factor():
    gate = BlockGate()
    assert gate.scale.shape == (1,)
    with torch.no_grad():
        gate.scale.fill_(0.5)
    assert torch.equal(gate(torch.ones(2, 3)), torch.full((2, 3), 0.5))


@pytest.mark.parametrize(
    "gate, shape, message",
    [(ChannelGate(4), (2, 3, 5), "dimension 1 must have 4 channels"), (GroupGate(4), (2, 6, 5), "multiple of 4")],
)
def test_gates_reject_mismatched_inputs(gate, shape, message):
    with pytest.raises(ValueError, match=message):
        gate(torch.ones(shape))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_gate_sizes_are_validated(bad):
    with pytest.raises(ValueError, match="positive int"):
        ChannelGate(bad)


class UserNet(nn.Module):
    """Gates under arbitrary attribute names: found by type, not by naming convention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.whatever = ChannelGate(4)
        self.deep = nn.Sequential(nn.Identity(), nn.ModuleDict({"x": BlockGate()}))
        self.fc = nn.Linear(4, 2)


def test_iter_gates_finds_gates_by_type_with_kind_and_path():
    net = UserNet()
    found = [(g.name, g.kind) for g in iter_gates(net)]
    assert found == [("whatever", "channel"), ("deep.1.x", "block")]
    assert [id(p) for p in gate_parameters(net)] == [id(net.whatever.scale), id(net.deep[1]["x"].scale)]
    assert has_gates(net) and not has_gates(nn.Linear(2, 2))


def test_sparsity_counts_exact_zeros_only():
    net = UserNet()
    with torch.no_grad():
        net.whatever.scale.copy_(torch.tensor([0.0, 1e-12, 0.0, 1.0]))
        net.deep[1]["x"].scale.zero_()
    s = sparsity(net)
    assert s["channel"] == 0.5 and s["channel_alive"] == 2 and s["channel_total"] == 4
    assert s["block"] == 1.0
    assert s["overall"] == pytest.approx(3 / 5)
    assert sparsity(nn.Linear(2, 2)) == {}


@pytest.mark.parametrize(
    ("gate", "shape"),
    [(ChannelGate(4), (2, 4, 3, 3)), (GroupGate(2), (2, 4, 3, 3)), (BlockGate(), (2, 4, 3, 3))],
    ids=["channel", "group", "block"],
)
def test_zero_gates_that_pass_the_gradient_keep_the_forward_and_let_the_layers_before_them_train(gate, shape):
    torch.manual_seed(0)
    with torch.no_grad():  # zero entries and non-zero ones (the block gate: zero)
        gate.scale.copy_(torch.tensor([0.0, 0.3, 0.0, 1.5][: gate.num_structures]))
    x = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(shape)
    plain = gate(x)
    dx_plain, dscale_plain = torch.autograd.grad((plain * upstream).sum(), (x, gate.scale))
    gate.zeros_pass_gradient = True
    passing = gate(x)
    dx, dscale = torch.autograd.grad((passing * upstream).sum(), (x, gate.scale))
    assert torch.equal(passing, plain)  # the same forward, bit for bit
    off = plain.detach() == 0  # where a zero entry blocks the input
    assert bool(off.any()) and torch.equal(dx[off], upstream[off])  # as if that entry were 1
    assert torch.equal(dx[~off], dx_plain[~off])  # non-zero entries: the true gradient
    assert torch.equal(dscale, dscale_plain)  # the gate's own gradient is the true one
    gate.scale.requires_grad_(False)  # a frozen gate is part of a fixed structure: the true gradient again
    (dx_frozen,) = torch.autograd.grad((gate(x) * upstream).sum(), (x,))
    assert torch.equal(dx_frozen, dx_plain)


def test_module_apply_still_reaches_every_gate(tiny_model):
    """Gates keep nn.Module.apply (e.g. a user's weight init) working: their own forward helper has another name."""
    seen = []
    tiny_model().apply(lambda m: seen.append(type(m).__name__))
    assert "ChannelGate" in seen and "BlockGate" in seen
