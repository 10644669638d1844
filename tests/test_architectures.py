"""ResNeXt, VGG, ImageNet ResNet-50, torchvision models through add_gates: train, count, cut, reload."""

import copy

import pytest
import torch
import torchvision

from sss_lightning import add_gates, load_pruned, prune, save_pruned
from sss_lightning.data import ImageNetDataModule
from sss_lightning.flops import MacEstimator, count_flops
from sss_lightning.gates import BlockGate, ChannelGate, GroupGate, iter_gates, random_gate_pattern
from sss_lightning.models import ResNeXt, build_model, default_input_size, list_models

# over ~10 s each (pytest --durations): the deepest and widest CIFAR models
SLOW_FORWARD = {"resnext29_16x64d"}
SLOW_MACS = {"resnet110", "resnet164", "resnext29_16x64d"}


def models(slow: set[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in list_models()]


def small_size(name: str) -> int:
    return 16 if default_input_size(name)[1] <= 32 else 32


@pytest.mark.parametrize("name", models(SLOW_FORWARD))
def test_forward_backward_reaches_every_gate(registry_model, name):
    model = copy.deepcopy(registry_model(name)).train()
    size = small_size(name)
    model(torch.randn(2, 3, size, size)).sum().backward()
    assert list(iter_gates(model)) and all(info.module.scale.grad is not None for info in iter_gates(model))


@pytest.mark.parametrize("name", models(SLOW_MACS))
def test_mac_estimate_of_a_random_half_pattern_equals_fvcore(registry_model, name):
    model = copy.deepcopy(registry_model(name))
    random_gate_pattern(model, 0.5, seed=1)
    size = (3, small_size(name), small_size(name))
    pruned = prune(model)
    estimate = MacEstimator(model, size)
    assert estimate(pruned) == count_flops(pruned, size).macs < count_flops(model, size).macs
    assert estimate(model) == count_flops(model, size).macs


def test_resnext_group_gates_shrink_groups_and_feeding_channels(randomize_bn, assert_same_outputs):
    model = ResNeXt(stages=(1, 1), cardinality=4, base_width=2, stem_width=8, out_width=8, num_classes=3)
    randomize_bn(model, torch.Generator().manual_seed(0))
    gate = model.layers[0][0].branch[6]
    assert isinstance(gate, GroupGate) and isinstance(model.layers[0][0].gate, BlockGate)
    with torch.no_grad():
        gate.scale.copy_(torch.tensor([0.0, 1.0, 0.0, 0.5]))
    pruned = prune(model)
    branch = pruned.layers[0][0].branch
    assert (branch[3].groups, branch[3].in_channels, branch[3].out_channels) == (2, 4, 4)
    assert branch[0].out_channels == 4 and branch[7].in_channels == 4
    assert_same_outputs(model, pruned, torch.randn(2, 3, 8, 8))


def test_vgg_channel_gates_narrow_convs_and_the_classifier(tiny_model, randomize_bn, assert_same_outputs):
    model = tiny_model("vgg11", num_classes=3)
    randomize_bn(model, torch.Generator().manual_seed(0))
    gates = [info.module for info in iter_gates(model)]
    assert len(gates) == 8 and all(isinstance(g, ChannelGate) for g in gates)
    with torch.no_grad():
        gates[-1].scale[::2] = 0  # last conv: half its channels, so the classifier input halves
    pruned = prune(model)
    assert pruned[-1].in_features == gates[-1].num_structures // 2
    assert_same_outputs(model, pruned, torch.randn(2, 3, 32, 32))
    assert pruned(torch.randn(1, 3, 28, 28)).shape == (1, 3)  # Fashion-MNIST size works too


def test_resnet50_matches_the_published_size():
    report = count_flops(build_model("resnet50", gates="none"), (3, 224, 224))
    assert report.params == 25_557_032 and round(report.macs / 1e9, 2) == 4.09  # SSS_METHOD.md: 4.09 GFLOPs


@pytest.mark.parametrize(
    "factory, kinds",
    [(torchvision.models.resnet18, ("block", "channel")), (torchvision.models.resnext50_32x4d, ("block", "group"))],
)
def test_add_gates_keeps_the_users_model_and_its_outputs(randomize_bn, assert_same_outputs, factory, kinds):
    original = factory(weights=None, num_classes=7).eval()
    randomize_bn(original, torch.Generator().manual_seed(0))
    gated = add_gates(copy.deepcopy(original), kinds).eval()
    assert type(gated) is type(original)  # the user's class, not a rewrite
    assert {info.kind for info in iter_gates(gated)} == set(kinds)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(gated(x), original(x))  # gates start at 1: same function
    random_gate_pattern(gated, 0.5, seed=2)
    assert_same_outputs(gated, prune(gated), x)


def test_add_gates_on_our_own_plain_blocks(tiny_model):
    model = add_gates(tiny_model("resnet20", gates="none"), ["block", "channel"])
    assert [info.kind for info in iter_gates(model)][:2] == ["channel", "block"]


@pytest.mark.parametrize(
    "model, kinds, message",
    [
        (lambda: torchvision.models.resnext50_32x4d(), ["channel"], r"layer1.0 \(Bottleneck\): channel gates cannot"),
        (lambda: torchvision.models.resnet18(), ["group"], r"layer1.0 \(BasicBlock\): 'group' needs a grouped conv"),
        pytest.param(  # builds VGG-11's 133M parameters: over 10 s
            lambda: torchvision.models.vgg11(),
            ["channel"],
            "add_gates found no block it knows in VGG",
            marks=pytest.mark.slow,
        ),
        (lambda: torchvision.models.resnet18(), ["neuron"], "kinds must be a non-empty subset"),
    ],
)
def test_add_gates_errors_name_the_module_and_the_supported_kinds(model, kinds, message):
    with pytest.raises(ValueError, match=message):
        add_gates(model(), kinds)


def test_gated_torchvision_resnet50_saves_and_reloads_pruned(tmp_path, randomize_bn):
    model = build_model("tv_resnet50", num_classes=4)
    randomize_bn(model, torch.Generator().manual_seed(0))
    random_gate_pattern(model, 0.5, seed=3)
    pruned = prune(model).eval()
    save_pruned(pruned, tmp_path / "tv.pt")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(load_pruned(tmp_path / "tv.pt")(x), pruned(x))


def test_imagenet_datamodule_reads_an_image_folder_tree(tmp_path, make_image_folder):
    dm = ImageNetDataModule(
        str(make_image_folder(tmp_path / "imnet")), batch_size=2, num_workers=0, image_size=32, val_resize=36
    )
    dm.setup("fit")
    assert dm.num_classes == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 3, 32, 32)


def test_imagenet_datamodule_missing_tree_says_which_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expects the ImageFolder layout .*/train/<class>/<image>"):
        ImageNetDataModule(str(tmp_path))
