"""Stream gates: one gate per residual stream, cut from every writer and reader at once."""

import pytest
import torch
from torch import nn

from sss_lightning.gates import StreamGate, iter_gates
from sss_lightning.io import apply_spec, architecture_spec, load_pruned, save_pruned
from sss_lightning.rescale import gate_pairs, rescale_gates
from sss_lightning.shrink import slice_sources
from sss_lightning.streams import Stream, check_streams
from sss_lightning.surgery import SurgeryError, prune


def _streamed(tiny_model, randomize_bn, set_gates, seed=0, gates="all", **kwargs):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = tiny_model("resnet20", in_channels=1, num_classes=3, gates=gates, **kwargs)
    randomize_bn(model, gen)
    set_gates(model, "random", gen, p_zero=0.4)
    return model


def _stream_gates(model):
    return [info.module for info in iter_gates(model) if isinstance(info.module, StreamGate)]


@pytest.mark.parametrize("depth", [20, 164])
def test_every_registry_cifar_resnet_declares_its_streams_correctly(tiny_model, depth):
    model = tiny_model(f"resnet{depth}", gates="all")
    check_streams(model, (3, 16, 16))  # writers all gated, readers exactly the declared ones
    # one stream for the stem and one per projection shortcut
    assert len(_stream_gates(model)) == (3 if depth == 20 else 4)


def test_a_zero_stream_gate_removes_that_channel_from_every_writer_and_reader(
    tiny_model, randomize_bn, assert_same_outputs
):
    gen = torch.Generator().manual_seed(0)
    model = tiny_model("resnet20", in_channels=1, num_classes=3, gates="stream")
    randomize_bn(model, gen)
    with torch.no_grad():
        model.stream_gates[1].scale[:3] = 0  # the second stage's stream: 8 channels at width 4
    pruned = prune(model)
    assert_same_outputs(model, pruned, torch.randn(2, 1, 12, 12, generator=gen))
    assert pruned.layer2[0].shortcut[0].out_channels == 5  # a writer
    assert all(block.branch[-2].num_features == 5 for block in pruned.layer2)  # every branch's last BN
    assert all(block.branch[0].in_channels == 5 for block in pruned.layer2[1:])  # readers in the stage
    assert pruned.layer3[0].shortcut[0].in_channels == 5 and pruned.layer3[0].branch[0].in_channels == 5
    assert not list(iter_gates(pruned))


def test_sliced_surgery_keeps_one_shared_gate_per_stream_and_only_slices(tiny_model, randomize_bn, set_gates):
    model = _streamed(tiny_model, randomize_bn, set_gates)
    sliced = prune(model, fold_gates=False)
    x = torch.randn(4, 1, 12, 12)
    model.train(), sliced.train()
    torch.testing.assert_close(sliced(x), model(x), rtol=1e-4, atol=1e-5)
    assert sliced.stem[-1] is sliced.stream_gates[0] is sliced.layer1[0].branch[-1]
    assert sliced.layer2[0].shortcut[-1] is sliced.stream_gates[1]
    check_streams(sliced, (1, 12, 12))
    slice_sources(model)  # every parameter, the stream gates' included, is a slice of the same-named one


def test_pruned_files_and_checkpoint_specs_keep_streams_shared(tiny_model, randomize_bn, set_gates, tmp_path):
    model = _streamed(tiny_model, randomize_bn, set_gates).eval()
    x = torch.randn(2, 1, 12, 12)
    save_pruned(prune(model), tmp_path / "p.pt")
    torch.testing.assert_close(load_pruned(tmp_path / "p.pt").eval()(x), model(x), rtol=1e-4, atol=1e-5)
    sliced = prune(model, fold_gates=False)
    rebuilt = apply_spec(architecture_spec(sliced), tiny_model("resnet20", in_channels=1, num_classes=3, gates="all"))
    rebuilt.load_state_dict(sliced.state_dict())
    writers = [rebuilt.stem[-1], *(b.branch[-1] for b in rebuilt.layer1 if b.branch is not None)]
    assert len(writers) > 1 and all(w is rebuilt.stream_gates[0] for w in writers)
    torch.testing.assert_close(rebuilt.eval()(x), sliced.eval()(x))


def test_rescaling_a_stream_gate_moves_its_scale_into_every_reader(tiny_model, randomize_bn, set_gates):
    model = _streamed(tiny_model, randomize_bn, set_gates)
    pairs = {p.name: p for p in gate_pairs(model)[0]}
    assert len(pairs["stream_gates.1"].consumers) == 4  # 2 in-stage blocks + next stage's branch and shortcut
    assert isinstance(pairs["stream_gates.2"].consumers[-1], nn.Linear)
    x = torch.randn(4, 1, 12, 12)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        before = model(x)
        rescale_gates(list(pairs.values()))
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert all(g.scale.max().item() == pytest.approx(1.0) for g in _stream_gates(model) if g.scale.any())


def test_the_last_stream_gate_is_not_scale_invariant_but_the_first_is(tiny_model, randomize_bn):
    """What rescaling is for: a stream read by BN-normalised convs only (the first) loses a common factor,
    the stream read by the head keeps it."""
    model = tiny_model("resnet20", in_channels=1, num_classes=3, gates="stream").train()
    x = torch.randn(8, 1, 12, 12)
    before = model(x)
    with torch.no_grad():
        model.stream_gates[0].scale.mul_(0.5)
    torch.testing.assert_close(model(x), before, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        model.stream_gates[2].scale.mul_(0.5)
    assert not torch.allclose(model(x), before, rtol=1e-3, atol=1e-4)


class _Leaky(nn.Module):
    """Two blocks sharing a stream; ``gate_stem`` and ``declare`` plant the two kinds of mistakes."""

    def __init__(self, gate_stem: bool = True, declare: str = "all") -> None:
        super().__init__()
        self.gate = StreamGate(4)
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), *([self.gate] if gate_stem else []))
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), self.gate)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.declare = declare

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.branch(x))

    def sss_streams(self):
        readers = {"all": (self.branch[0], self.head[2]), "no head": (self.branch[0],),
                   "extra": (self.branch[0], self.head[2], self.stem[0])}[self.declare]  # fmt: skip
        return [Stream(self.gate, readers)]


def test_check_streams_names_an_ungated_writer_and_the_fix():
    check_streams(_Leaky(), (1, 6, 6))
    with pytest.raises(SurgeryError, match=r"\['branch.0'\] are declared but do not read it.*without the gate"):
        check_streams(_Leaky(gate_stem=False), (1, 6, 6))


class _HalfGated(_Leaky):
    """The head reads, besides the gated stream, an ungated conv's output: a leak only the zero test sees."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(y + self.branch(y) + self.raw(x))


def test_check_streams_names_a_reader_whose_input_leaks_past_the_gate():
    with pytest.raises(SurgeryError, match=r"at zero the input of \['head.2'\] is not zero"):
        check_streams(_HalfGated(), (1, 6, 6))


@pytest.mark.parametrize(
    ("declare", "named"), [("no head", r"\['head.2'\] read the stream"), ("extra", r"\['stem.0'\] are declared")]
)
def test_check_streams_names_wrongly_declared_readers(declare, named):
    with pytest.raises(SurgeryError, match=named):
        check_streams(_Leaky(declare=declare), (1, 6, 6))


def test_an_undeclared_stream_gate_is_refused_with_the_fix():
    model = _Leaky()
    model.sss_streams = lambda: []
    with pytest.raises(SurgeryError, match=r"not declared by any module's sss_streams\(\)"):
        prune(model)


def test_a_user_network_with_a_declared_stream_prunes_exactly(assert_same_outputs):
    torch.manual_seed(0)
    model = _Leaky()
    with torch.no_grad():
        model.gate.scale.copy_(torch.tensor([0.0, 1.5, 0.0, 0.7]))
    pruned = prune(model)
    assert pruned.stem[0].out_channels == pruned.branch[0].in_channels == pruned.head[2].in_features == 2
    assert_same_outputs(model, pruned, torch.randn(3, 1, 6, 6))
