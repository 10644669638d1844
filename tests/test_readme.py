"""The README's Python snippets for adding an architecture run as written."""

import re

import torch

from tests.conftest import REPO


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_architecture_examples_build_gated_modules():
    blocks = [b for b in _python_blocks() if "ChannelGate" in b and "TinyMobileNet" not in b]
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)
    module = namespace["module"]
    subclassed = namespace["MyMLP"](gamma=0.05)
    x = torch.randn(2, 1, 28, 28)
    for m in (module, subclassed):
        assert m(x).shape == (2, 10)
        assert [g["name"] for g in m.param_groups()] == ["weights", "gates"]


def test_readme_mobilenet_example_trains_prunes_and_cuts_the_depthwise_conv():
    import lightning as L

    from sss_lightning import prune
    from sss_lightning.data import SyntheticDataModule
    from tests.test_surgery import assert_same_outputs, randomize_bn

    (block,) = [b for b in _python_blocks() if "class TinyMobileNet" in b]
    namespace: dict = {}
    exec(block, namespace)
    module = namespace["TinyMobileNet"](gamma=0.3, schedule="constant")
    trainer = L.Trainer(
        max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
    )
    trainer.fit(module, datamodule=SyntheticDataModule(num_classes=10, in_channels=1, image_size=8, batch_size=16))
    net = module.net.eval()
    randomize_bn(net, torch.Generator().manual_seed(0))
    with torch.no_grad():  # a known pattern: every other channel of the expanded width
        net[3].branch[6].scale.copy_(torch.tensor([0.0, 0.7] * 32))
        net[3].gate.scale.fill_(0.5)
    pruned = prune(net)
    hidden = int((net[3].branch[6].scale != 0).sum())
    dw = pruned[3].branch[3]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (hidden, hidden, hidden) == (32, 32, 32)
    assert pruned[3].branch[0].out_channels == hidden and pruned[3].branch[7].in_channels == hidden
    assert_same_outputs(net, pruned, torch.randn(2, 1, 8, 8))


def test_readme_baselines_example_builds_each_method():
    from sss_lightning.callbacks import MagnitudePruning

    (block,) = [b for b in _python_blocks() if "NetworkSlimming" in b]
    namespace: dict = {}
    exec(block, namespace)
    x = torch.randn(2, 1, 28, 28)
    for name in ("slimming", "plain", "thin"):
        assert namespace[name](x).shape == (2, 10)
    assert [g["name"] for g in namespace["slimming"].param_groups()] == ["weights", "bn_scales"]
    assert namespace["thin"].net.stem[0].out_channels == 10
    assert all(isinstance(namespace[k], MagnitudePruning) for k in ("prune_ns", "prune_l1"))
