"""Gate rescaling: why it is needed (BN makes a layer's channel gates scale-invariant) and that it keeps
the network's function, its zeros and the optimizer's trajectory."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sss_lightning import rescale
from sss_lightning.gates import ChannelGate, GroupGate, iter_gates
from sss_lightning.optim import APG
from sss_lightning.rescale import GatePairCache, gate_pairs, rescale_gates

SMALL_RESNEXT = {"cardinality": 2, "base_width": 4, "stem_width": 8, "out_width": 16}


def _random_gates(net: nn.Module, gen: torch.Generator, p_zero: float, low: float = 0.0) -> None:
    """Every gate entry 0 with probability ``p_zero``, else uniform in [low, 1)."""
    with torch.no_grad():
        for info in iter_gates(net):
            s = info.module.scale
            alive = low + (1 - low) * torch.rand(s.shape, generator=gen)
            s.copy_(torch.where(torch.rand(s.shape, generator=gen) < p_zero, 0.0, alive))


def test_channel_gates_in_front_of_a_conv_and_bn_are_scale_invariant_as_a_layer(tiny_model):
    """The flaw rescaling answers: in the CIFAR basic block the loss cannot tell a layer's gates at 1 from
    the same gates at 0.1, and its gradient has no component along the layer's gates."""
    net = tiny_model(depth=8, num_classes=4, gates="channel").double().train()
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    gate = next(info.module for info in iter_gates(net))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    radial = (gate.scale.grad * gate.scale).sum().item()  # d loss / d log(common factor)
    assert abs(radial) < 1e-3 * gate.scale.grad.abs().sum().item()  # zero but for BN's eps
    with torch.no_grad():
        gate.scale.mul_(0.1)
    # equal up to BN's eps, which is what finally breaks the tie as the gates shrink
    torch.testing.assert_close(nn.functional.cross_entropy(net(x), y), loss.detach(), rtol=1e-3, atol=0)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(["resnet20", "resnext29_8x64d", "vgg11"]),
    p_zero=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_rescaling_keeps_outputs_and_zeros_and_sets_each_layers_largest_gate_to_one(arch, p_zero, seed, tiny_model):
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"resnext29_8x64d": SMALL_RESNEXT}.get(arch, {})  # ResNet-20 of width 4, VGG-11 at 1/8 width
    net = tiny_model(arch, num_classes=5, **kwargs).double()
    _random_gates(net, gen, p_zero)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=gen)
    pairs, unpaired = gate_pairs(net)
    assert pairs and not unpaired
    for mode in ("train", "eval"):
        model = copy.deepcopy(net).train(mode == "train")
        before = model(x).detach()
        zeros = [p.gate.scale.detach() == 0 for p in gate_pairs(model)[0]]
        rescale_gates(gate_pairs(model)[0])
        torch.testing.assert_close(model(x).detach(), before, rtol=1e-10, atol=1e-10)
        for pair, zero in zip(gate_pairs(model)[0], zeros, strict=True):
            assert torch.equal(pair.gate.scale.detach() == 0, zero)
            if not zero.all():
                assert pair.gate.scale.max().item() == pytest.approx(1.0, abs=1e-15)


def test_group_and_vgg_gates_pair_with_the_conv_or_linear_that_consumes_them(tiny_model):
    resnext = tiny_model("resnext29_8x64d", num_classes=5, **SMALL_RESNEXT)
    pairs, _ = gate_pairs(resnext)
    assert {type(p.gate) for p in pairs} == {GroupGate}
    assert all(isinstance(p.consumers[0], nn.Conv2d) and p.consumers[0].kernel_size == (1, 1) for p in pairs)
    vgg = tiny_model("vgg11", num_classes=5)
    consumers = [type(p.consumers[0]) for p in gate_pairs(vgg)[0]]
    assert consumers[-1] is nn.Linear and set(consumers[:-1]) == {nn.Conv2d}


def test_a_gate_without_a_foldable_consumer_is_reported_and_left_alone():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ChannelGate(4), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    pairs, unpaired = gate_pairs(seq)
    assert not pairs and unpaired == ["2"]


def test_momentum_moves_with_the_parameters(tiny_model):
    """Rescaling is a change of coordinates: the optimizer continues from the same point on the same path."""
    torch.manual_seed(0)
    net = tiny_model(depth=8, num_classes=4, gates="channel").double()
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    opt = APG(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    pairs, _ = gate_pairs(net)
    gate, consumer = pairs[0].gate.scale, pairs[0].consumers[0].weight
    s = gate.detach().max().item()
    gate_buf, consumer_buf = opt.state[gate]["momentum_buffer"].clone(), opt.state[consumer]["momentum_buffer"].clone()
    rescale_gates(pairs, opt)
    torch.testing.assert_close(opt.state[gate]["momentum_buffer"], gate_buf / s)
    torch.testing.assert_close(opt.state[consumer]["momentum_buffer"], consumer_buf * s)


def test_the_pair_cache_finds_the_pairs_again_only_when_a_module_is_replaced(tiny_model, monkeypatch):
    """Rescaling after every step reuses the pairs; a replaced consumer (what shrink and surgery do) is
    paired again, so its weights, not the dropped module's, take the factor and the function is kept."""
    net = tiny_model(depth=8, num_classes=4, gates="channel").double()
    walks = []
    monkeypatch.setattr(rescale, "gate_pairs", lambda model: walks.append(model) or gate_pairs(model))
    cache = GatePairCache()
    first = cache(net)
    assert cache(net) is first and len(walks) == 1
    assert [(p.name, p.consumers) for p in first] == [(p.name, p.consumers) for p in gate_pairs(net)[0]]
    seq, index = next((m, i) for m in net.modules() if isinstance(m, nn.Sequential) for i, c in enumerate(m)
                      if c is first[0].consumers[0])  # fmt: skip
    replacement = copy.deepcopy(seq[index])
    seq[index] = replacement
    again = cache(net)
    assert len(walks) == 2 and again[0].consumers == (replacement,)
    with torch.no_grad():
        first[0].gate.scale.mul_(0.5)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    before, kept = net.eval()(x), replacement.weight.detach().clone()
    rescale_gates(cache(net))
    torch.testing.assert_close(net(x), before, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(replacement.weight.detach(), kept * 0.5)


def test_frozen_gates_are_not_rescaled(tiny_model):
    net = tiny_model(depth=8, num_classes=4, gates="channel").double()
    with torch.no_grad():
        for info in iter_gates(net):
            info.module.scale.mul_(0.5)
            info.module.scale.requires_grad_(False)
    rescale_gates(gate_pairs(net)[0])
    assert all(torch.all(info.module.scale == 0.5) for info in iter_gates(net))


def test_module_with_gate_rescale_keeps_every_trained_layer_max_at_one(
    tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    module = tiny_classifier(gamma=0.05, gate_rescale=True)
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=tiny_data())
    maxima = [p.gate.scale.max().item() for p in gate_pairs(module.net)[0] if p.gate.scale.any()]
    assert maxima and all(m == pytest.approx(1.0, abs=1e-6) for m in maxima)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    arch=st.sampled_from(["resnet20", "resnext29_8x64d", "vgg11"]),
    p_zero=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_rescaling_into_the_norm_leaves_bn_followed_consumers_untouched_and_keeps_outputs(
    arch, p_zero, seed, tiny_model, randomize_bn
):
    """``into="norm"``: a consumer followed by BN keeps its weights bit for bit (the BN's running statistics
    take the factor), any other consumer takes it in its weights, and outputs agree up to BN's eps: in eval
    mode against running variances of 0.5-1.5, in train mode against the variances of one batch."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = {"resnext29_8x64d": SMALL_RESNEXT}.get(arch, {})
    net = tiny_model(arch, num_classes=5, **kwargs).double()
    randomize_bn(net, gen)  # non-trivial running statistics (variances 0.5-1.5), as after training
    _random_gates(net, gen, p_zero, low=0.5)  # largest gates 0.5-1: the BN eps stays small
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=gen)
    for mode, tol in (("train", 1e-2), ("eval", 1e-4)):
        model = copy.deepcopy(net).train(mode == "train")
        before = model(x).detach()
        pairs = gate_pairs(model)[0]
        weights = {id(c): c.weight.detach().clone() for p in pairs for c in p.consumers}
        factors = {id(p.gate): p.gate.scale.detach().max().item() for p in pairs}
        rescale_gates(pairs, into="norm")
        torch.testing.assert_close(model(x).detach(), before, rtol=tol, atol=tol)  # BN's eps, 1e-5
        for pair in pairs:
            s = factors[id(pair.gate)] or 1.0
            for consumer, absorber in zip(pair.consumers, pair.absorbers, strict=True):
                expected = weights[id(consumer)] * (1.0 if absorber is not None else s)
                torch.testing.assert_close(consumer.weight.detach(), expected, rtol=1e-15, atol=0)
    absorbed = [a is not None for p in gate_pairs(net)[0] for a in p.absorbers]
    assert any(absorbed)  # every architecture here has BN-followed consumers ...
    assert all(absorbed) != (arch == "vgg11")  # ... and VGG's last gate feeds its linear head


def test_rescale_into_must_name_where_the_factor_goes(tiny_model):
    from sss_lightning import SSSModule

    with pytest.raises(ValueError, match=r"rescale_into must be one of \('weights', 'norm'\).*got 'bn'"):
        SSSModule(tiny_model(depth=8, num_classes=4), rescale_into="bn")
    with pytest.raises(ValueError, match=r"into must be one of \('weights', 'norm'\)"):
        rescale_gates([], into="bn")


def test_module_rescaling_into_the_norm_keeps_every_trained_layer_max_at_one(
    tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    module = tiny_classifier(gamma=0.05, gate_rescale=True, rescale_into="norm")
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=tiny_data())
    maxima = [p.gate.scale.max().item() for p in gate_pairs(module.net)[0] if p.gate.scale.any()]
    assert maxima and all(m == pytest.approx(1.0, abs=1e-6) for m in maxima)
