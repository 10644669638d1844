import pytest
import torch
from torch import nn

from sss_lightning.flops import comparison_dict, count_flops, format_comparison
from sss_lightning.gates import ChannelGate
from sss_lightning.models import CifarResNet, build_model
from sss_lightning.surgery import prune


def test_macs_match_a_hand_count():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        ChannelGate(8),
        nn.Conv2d(8, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    report = count_flops(net, (3, 10, 10))
    conv1 = 8 * 3 * 3 * 3 * 10 * 10  # out * in * k * k * H * W
    conv2 = 4 * 8 * 10 * 10
    fc = 4 * 10
    assert report.macs == conv1 + conv2 + fc
    assert report.stages["0"] == conv1 and report.stages["3"] == 0  # gates and BN cost no MACs
    assert report.params == sum(p.numel() for p in net.parameters())


def test_cifar_resnet20_macs_by_formula():
    model = CifarResNet(depth=20, gates="none")
    hw = {16: 32 * 32, 32: 16 * 16, 64: 8 * 8}
    expected = 16 * 3 * 9 * hw[16]  # stem
    for c in (16, 32, 64):
        expected += 6 * c * c * 9 * hw[c]  # three blocks of two 3x3 convs each
    expected -= (32 * 32 * 9 * hw[32] - 32 * 16 * 9 * hw[32]) + (64 * 64 * 9 * hw[64] - 64 * 32 * 9 * hw[64])
    expected += 32 * 16 * hw[32] + 64 * 32 * hw[64]  # 1x1 projections
    expected += 64 * 10
    assert count_flops(model, (3, 32, 32)).macs == expected


def test_gates_add_no_macs_and_surgery_reduces_them():
    gated = build_model("resnet20", gates="both", in_channels=1)
    plain = build_model("resnet20", gates="none", in_channels=1)
    assert count_flops(gated, (1, 28, 28)).macs == count_flops(plain, (1, 28, 28)).macs
    with torch.no_grad():
        gated.layer1[0].gate.scale.zero_()
    before, after = count_flops(gated, (1, 28, 28)), count_flops(prune(gated), (1, 28, 28))
    conv = 16 * 16 * 9 * 28 * 28
    assert before.macs - after.macs == 2 * conv
    assert before.stages["layer1"] - after.stages["layer1"] == 2 * conv
    table = format_comparison(before, after, extra={"val/acc": (0.91, 0.91)})
    assert "| MACs |" in table and "| params |" in table and "| val/acc | 0.9100 | 0.9100 | 1.000 |" in table
    logged = comparison_dict(before, after)
    assert logged["gated/macs"] == before.macs and logged["macs_reduction"] == pytest.approx(2 * conv / before.macs)


def test_batch_dimension_is_optional_and_model_mode_is_restored(tiny_model):
    model = tiny_model(depth=8).train()
    assert count_flops(model, (3, 8, 8)).macs * 2 == count_flops(model, (2, 3, 8, 8)).macs
    assert model.training


@pytest.mark.parametrize(
    "size, message",
    [
        ((3, 28, 28), r"input_size \(3, 28, 28\) does not fit CifarResNet.*expected input"),
        ((28,), r"input_size must be three positive ints \[C,H,W\] \(or \[N,C,H,W\]\), got \(28,\)"),
    ],
)
def test_wrong_input_size_is_a_clear_error(tiny_model, size, message):
    with pytest.raises(ValueError, match=message):
        count_flops(tiny_model(depth=8, in_channels=1), size)
