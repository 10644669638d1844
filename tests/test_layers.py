"""The layer table: one ``register_layer`` entry makes a new layer type cut by surgery, saved and reloaded
by pruned files, and counted by the MAC estimate, with no other code changed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sss_lightning.flops import MacEstimator, count_flops
from sss_lightning.gates import ChannelGate, iter_gates
from sss_lightning.io import load_pruned, save_pruned
from sss_lightning.layers import COUNT, LayerKind, layer_kind, recorded_types, register_layer, unregister_layer
from sss_lightning.records import rebuildable
from sss_lightning.surgery import SurgeryError, prune

SIZE = (3, 8, 8)


class ChannelScale(nn.Module):
    """``y[:, c] = weight[c] * x[:, c] + bias[c]``, computed as a 1x1 depthwise conv (fvcore counts its
    multiply-adds). A layer type the built-in table does not cover."""

    def __init__(self, channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.view(-1, 1, 1, 1), self.bias, groups=self.weight.numel())


def _cut_channel_scale(layer: ChannelScale, keep: torch.Tensor) -> tuple[ChannelScale, torch.Tensor]:
    idx = keep.nonzero().flatten()
    new = ChannelScale(len(idx), device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[idx])
        new.bias.copy_(layer.bias[idx])
    return new, keep  # per-channel: the cut goes on to the layer producing these channels


CHANNEL_SCALE = LayerKind(
    channels=lambda m: m.weight.numel(),
    in_channels=lambda m: m.weight.numel(),
    cut_out=_cut_channel_scale,
    record=lambda m: {"channels": m.weight.numel()},
    record_fields={"channels": COUNT},
    rebuild=lambda fields: ChannelScale(fields["channels"]),
    macs=lambda m, shape: 0 if shape is None else m.weight.numel() * shape[-2] * shape[-1],
)


@rebuildable
class ScaledNet(nn.Module):
    """conv -> ChannelScale -> BN -> ReLU -> gate -> conv -> ChannelScale -> ReLU -> gate -> pool -> linear."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            ChannelScale(width),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            ChannelGate(width),
            nn.Conv2d(width, width, 3, padding=1),
            ChannelScale(width),
            nn.ReLU(),
            ChannelGate(width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@pytest.fixture
def channel_scale():
    register_layer(ChannelScale, CHANNEL_SCALE)
    yield CHANNEL_SCALE
    unregister_layer(ChannelScale)


def gated_net(seed: int = 0) -> ScaledNet:
    """A ScaledNet with random weights, BN statistics and gates, two of each layer's gates zero."""
    gen = torch.Generator().manual_seed(seed)
    model = ScaledNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        bn = model.features[2]
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        for info in iter_gates(model):
            info.module.scale.copy_(torch.rand(info.module.scale.shape, generator=gen) + 0.1)
            info.module.scale[[1, 4]] = 0.0
    return model.eval()


def assert_same_outputs(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    assert (ya - yb).abs().max().item() <= 1e-4 * max(1.0, ya.abs().max().item())


def test_a_type_without_an_entry_is_refused_by_name():
    assert layer_kind(ChannelScale(2)) == LayerKind()
    with pytest.raises(SurgeryError, match="cannot cut channels through ChannelScale at position 1"):
        prune(gated_net())


def test_surgery_cuts_a_registered_type_exactly(channel_scale):
    model = gated_net()
    before = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()
    pruned = prune(model)
    assert torch.equal(torch.random.get_rng_state(), rng)  # cutting never draws random numbers
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is left alone
    assert not list(iter_gates(pruned))
    scales = [m for m in pruned.modules() if isinstance(m, ChannelScale)]
    assert [m.weight.numel() for m in scales] == [6, 6]
    assert pruned.features[0].out_channels == 6 and pruned.features[5].in_channels == 6
    assert pruned.features[11].in_features == 6
    assert_same_outputs(model, pruned)


def test_pruned_files_record_and_rebuild_a_registered_type(channel_scale, tmp_path):
    assert "ChannelScale" in recorded_types()
    pruned = prune(gated_net())
    path = save_pruned(pruned, tmp_path / "scaled.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["modules"]["features.1"] == {"type": "ChannelScale", "channels": 6}
    loaded = load_pruned(path)
    assert [m.weight.numel() for m in loaded.modules() if isinstance(m, ChannelScale)] == [6, 6]
    assert_same_outputs(pruned, loaded)


def test_pruned_files_check_a_registered_type_s_fields(channel_scale, tmp_path):
    from sss_lightning.io import PrunedFileError

    path = save_pruned(prune(gated_net()), tmp_path / "scaled.pt")
    payload = torch.load(path, weights_only=True)
    payload["modules"]["features.1"]["channels"] = 0
    torch.save(payload, path)
    with pytest.raises(PrunedFileError, match=r"field 'channels' of module 'features.1' \(ChannelScale\)"):
        load_pruned(path)


def test_mac_counts_include_a_registered_type(channel_scale):
    model = gated_net()
    pruned = prune(model)
    hw = SIZE[1] * SIZE[2]
    conv = 6 * 3 * 9 * hw + 6 * 6 * 9 * hw
    expected = conv + 2 * 6 * hw + 6 * 3  # two ChannelScales (one multiply-add per value) and the linear
    estimate = MacEstimator(model, SIZE)
    assert estimate(pruned) == expected
    assert count_flops(pruned, SIZE).macs == expected  # fvcore agrees with the table's count
    assert estimate(model) == count_flops(model, SIZE).macs
