"""The Python examples of the README and the docs run as written, and the tests the docs name exist."""

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]  # the checkout
DOCS = REPO / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(), flags=re.S)


def test_readme_python_example_trains_prunes_saves_and_reloads(tmp_path, monkeypatch, assert_same_outputs):
    from sss_lightning import count_flops

    (block,) = _python_blocks("README.md")
    monkeypatch.chdir(tmp_path)  # the example writes pruned.pt into the current directory
    namespace: dict = {}
    exec(block, namespace)
    net, small, same = namespace["model"].net.eval(), namespace["small"].eval(), namespace["same"].eval()
    assert (tmp_path / "pruned.pt").is_file()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert small(x).shape == (2, 10)
        torch.testing.assert_close(same(x), small(x))
    assert_same_outputs(net, small, x)
    assert count_flops(small, (1, 28, 28)).macs <= count_flops(net, (1, 28, 28)).macs


def test_docs_architecture_examples_build_gated_modules():
    blocks = [b for b in _python_blocks("docs/architectures.md") if "ChannelGate" in b and "TinyMobileNet" not in b]
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


def test_docs_stream_example_declares_checks_and_prunes_a_residual_stream(assert_same_outputs):
    (block,) = [b for b in _python_blocks("docs/architectures.md") if "class TwoBlocks" in b]
    namespace: dict = {}
    exec(block, namespace)  # it checks its declaration and asserts the pruned head's width itself
    from sss_lightning import SSSModule, prune

    net = namespace["net"]
    pruned = prune(net)
    assert pruned.stem[0].out_channels == 8 and all(b[0].in_channels == b[0].out_channels == 8 for b in pruned.branches)
    assert_same_outputs(net, pruned, torch.randn(2, 1, 28, 28))
    assert SSSModule(net=namespace["TwoBlocks"](), input_size=[1, 28, 28]).param_groups()[1]["name"] == "gates"


def test_docs_mobilenet_example_trains_prunes_and_cuts_the_depthwise_conv(randomize_bn, assert_same_outputs):
    import lightning as L

    from sss_lightning import prune
    from sss_lightning.data import SyntheticDataModule

    (block,) = [b for b in _python_blocks("docs/architectures.md") if "class TinyMobileNet" in b]
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


def test_docs_baselines_example_builds_each_method():
    from sss_lightning.callbacks import MagnitudePruning

    (block,) = [b for b in _python_blocks("docs/guide.md") if "NetworkSlimming" in b]
    namespace: dict = {}
    exec(block, namespace)
    x = torch.randn(2, 1, 28, 28)
    for name in ("slimming", "plain", "thin"):
        assert namespace[name](x).shape == (2, 10)
    assert [g["name"] for g in namespace["slimming"].param_groups()] == ["weights", "bn_scales"]
    assert namespace["thin"].net.stem[0].out_channels == 10
    assert all(isinstance(namespace[k], MagnitudePruning) for k in ("prune_ns", "prune_l1"))


# `tests/test_x.py::test_name`, optionally with a parametrized case: `...::test_name[case]` (`...` = any suffix)
_TEST_REF = re.compile(r"tests/(test_\w+\.py)::(test_\w+)(?:\[([^\]]*)\])?")


def test_every_test_named_by_the_guarantees_and_bad_input_pages_exists():
    checked = 0
    for page in ("guarantees.md", "bad-input.md"):
        refs = _TEST_REF.findall((DOCS / page).read_text())
        assert len(refs) >= 10, f"docs/{page} names only {len(refs)} tests"
        for file, name, case in refs:
            path = REPO / "tests" / file
            assert path.is_file(), f"docs/{page} names {file}, which is not in tests/"
            source = path.read_text()
            assert re.search(rf"^\s*(async\s+)?def {name}\(", source, flags=re.M), (
                f"docs/{page} names tests/{file}::{name}, which is not defined there"
            )
            case = case.replace("...", "").strip()
            assert case in source, f"docs/{page} names the case [{case}] of tests/{file}::{name}, not in that file"
            checked += 1
    assert checked >= 80


_ACCURACY = re.compile(r"\d\.\d{4}")  # an accuracy as the result tables quote it
_PAIRED = re.compile(r"([+-]\d+\.\d\d) ± (\d+\.\d\d)")  # a paired difference and its 95% half-width


def _section(page: str, heading: str) -> str:
    """The text of one ``## heading`` section of a page, up to the next ``## ``."""
    text = (REPO / page).read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _seed_count(cell: str) -> int:
    many = re.search(r"(\d+) seeds", cell)
    return int(many.group(1)) if many else 1 if re.search(r"\bseed \d\b", cell) else 0


def _pareto_results() -> tuple[set[tuple[str, int]], set[tuple[str, str]]]:
    """benchmarks/results/pareto_resnet20.json as the pages quote it: (mean accuracy to 4 places, number of
    seeds) of every setting, and (paired mean difference, 95% half-width) to 2 places of every comparison."""
    import json

    results = json.loads((REPO / "benchmarks" / "results" / "pareto_resnet20.json").read_text())
    means = {(f"{s['acc_mean']:.4f}", len(s["seeds"])) for s in results["summary"]}
    pairs = {
        (f"{v['mean']:+.2f}", f"{v['half_width']:.2f}")
        for c in results["comparisons"]
        for v in c["vs"].values()
        if v is not None and v["n"] > 1
    }
    return means, pairs


def test_the_readme_result_table_and_its_paired_differences_are_the_committed_benchmark_results():
    """Every accuracy the README's result table quotes is the mean, over the seed count it quotes, of a
    setting in benchmarks/results/pareto_resnet20.json, and every paired difference ``+a ± b`` quoted next to
    it is one of that file's comparisons: a rerun that changes the results must change the README too."""
    means, pairs = _pareto_results()
    section = _section("README.md", "Result")
    rows = [line for line in section.splitlines() if re.match(r"\| \d\.\d+ \|", line)]
    cells = [cell for row in rows for cell in row.split("|")[2:] if _ACCURACY.search(cell)]
    assert len(cells) >= 12, f"the README's result table quotes only {len(cells)} accuracies"
    for cell in cells:
        accuracy = _ACCURACY.search(cell).group(0)
        assert (accuracy, _seed_count(cell)) in means, f"README result table: {cell.strip()!r} is not in the results"
    quoted = _PAIRED.findall(section)
    assert len(quoted) >= 5, f"the README's result paragraph quotes only {len(quoted)} paired differences"
    for difference in quoted:
        assert difference in pairs, f"README result paragraph: {' ± '.join(difference)} is not a paired comparison"


def test_the_benchmarks_page_tables_are_the_committed_benchmark_results():
    """The same for the tables of docs/benchmarks.md's accuracy-vs-MACs section: each accuracy of a row
    (``a / b / c`` for several settings) is a mean over the row's seeds, each ``+a ± b`` a comparison."""
    means, pairs = _pareto_results()
    section = _section("docs/benchmarks.md", "Accuracy vs MACs against the baselines")
    checked = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 6 and re.fullmatch(r"\d", cells[2]):  # method | setting | seeds | MACs | params | acc
            for accuracy in _ACCURACY.findall(re.sub(r"\(.*?\)", "", cells[5])):  # not the std
                assert (accuracy, int(cells[2])) in means, f"docs/benchmarks.md: {line!r} quotes {accuracy}"
                checked += 1
        if len(cells) == 6 and re.fullmatch(r"\d", cells[1]):  # SSS point | seeds | four differences
            for difference in _PAIRED.findall(line):
                assert difference in pairs, f"docs/benchmarks.md: {line!r} quotes {' ± '.join(difference)}"
                checked += 1
    assert checked >= 30, f"only {checked} figures of docs/benchmarks.md's tables were checked"
