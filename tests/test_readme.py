"""The README's Python snippets for adding an architecture run as written."""

import re

import torch

from tests.conftest import REPO


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_architecture_examples_build_gated_modules():
    blocks = [b for b in _python_blocks() if "ChannelGate" in b]
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
