"""The persistence contract: whatever trains can be pruned, saved, snapshotted, resumed after a shrink and
reloaded in a fresh process with equal outputs, for every way of bringing a network.

The matrix is {registry ResNet-20, ResNet-20 with stream gates too, VGG-11, ResNet-50, an SSSModule
subclass with build_network, a user's own @rebuildable nn.Module, a torchvision ResNet-18 gated by add_gates}
x {save_pruned + fresh-process load, PruningSnapshot during fit, StructuralSurgery's file, resume from a
post-shrink checkpoint, ONNX}. Each network trains once (a 3-epoch run that shrinks before epoch 2,
snapshots, checkpoints every epoch and ends with surgery, then a run resumed from the post-shrink
checkpoint), and one fresh process loads every file of every network, so the matrix costs two short fits
per network and a single interpreter start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sss_lightning import SSSModule, add_gates, build_model, prune, rebuildable, save_pruned
from sss_lightning.callbacks import InTrainingShrink, PruningSnapshot, StructuralSurgery
from sss_lightning.export import export_model
from sss_lightning.gates import ChannelGate, gate_parameters, iter_gates, random_gate_pattern
from sss_lightning.io import PrunedFileError, architecture_spec, load_pruned, read_pruned, rebuild_problem
from tests import persist_models  # networks a fresh process imports by name: not a test module

pytestmark = [  # the resumed run writes elsewhere and takes no snapshots
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]

SIZE = (3, 16, 16)


NETWORKS = ("resnet20", "resnet20_streams", "vgg11", "resnet50", "subclass", "user_class", "add_gates")
# what a fresh process passes as net= to load a checkpoint of a module built with net=...
NET_FACTORY = {"user_class": "tests.persist_models:user_net", "add_gates": "tests.persist_models:torchvision_net"}
SLOW = {"resnet50", "add_gates"}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NETWORKS]


@pytest.fixture(scope="session")
def make(tiny_classifier):
    """make(name): that network's module (gamma 0.1, 4 classes) with a fixed half-zero gate pattern and
    frozen gates: every run shrinks the same way."""
    builders = {
        "resnet20": lambda: tiny_classifier(gamma=0.1),
        "resnet20_streams": lambda: tiny_classifier(gates="all", gamma=0.1),
        "vgg11": lambda: tiny_classifier(arch="vgg11", gates="channel", gamma=0.1),
        "resnet50": lambda: tiny_classifier(arch="resnet50", arch_kwargs={"width": 2}, gamma=0.1),
        "subclass": lambda: persist_models.TinySubclass(width=4, num_classes=4, gamma=0.1),
        "user_class": lambda: SSSModule(net=persist_models.user_net(), gamma=0.1),
        "add_gates": lambda: SSSModule(net=persist_models.torchvision_net(), gamma=0.1),
    }
    assert set(builders) == set(NETWORKS)

    def make(name: str) -> SSSModule:
        torch.manual_seed(0)
        module = builders[name]()
        random_gate_pattern(module.net, 0.5, seed=1)
        for p in gate_parameters(module.net):
            p.requires_grad_(False)
        return module

    return make


def example() -> torch.Tensor:
    return torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(7))


def outputs(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(example())


class PrunedOutputs(L.Callback):
    """What each epoch's pruned network outputs (the snapshot of that epoch must reload to this)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.by_epoch[trainer.current_epoch + 1] = outputs(prune(pl_module.net))


@dataclass
class Run:
    """One network through the whole contract; ``files`` are what the fresh process must reload."""

    root: Path
    module: SSSModule
    resumed: SSSModule
    snapshot_outputs: dict[int, torch.Tensor]
    snapshot_rows: list[dict]
    surgery_file: Path
    files: list[dict] = field(default_factory=list)


def _expect(root: Path, tag: str, y: torch.Tensor) -> str:
    path = root / f"{tag}.expected.pt"
    torch.save({"x": example(), "y": y}, path)
    return str(path)


class Lab:
    """Runs each network once per test module, and one fresh process over the files of every network
    whose tests were selected (``-m "not slow"`` leaves out the slow ones, ``-k`` all but the named).
    ``fixtures`` are those it works with: make, quiet_trainer, tiny_data, randomize_bn and repo."""

    def __init__(self, root: Path, networks: list[str], fixtures: dict[str, Any]) -> None:
        self.root = root
        self.networks = networks
        self.make, self.quiet_trainer, self.tiny_data = (
            fixtures["make"],
            fixtures["quiet_trainer"],
            fixtures["tiny_data"],
        )
        self.randomize_bn, self.repo = fixtures["randomize_bn"], fixtures["repo"]
        self._done: dict[tuple[str, str], Any] = {}
        self._fresh: dict[str, str] | None = None

    def fit(self, module: SSSModule, root: Path, callbacks: list, ckpt_path: Path | None = None) -> L.Trainer:
        trainer = self.quiet_trainer(
            root,
            [*callbacks, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)],
            max_epochs=3,
            enable_checkpointing=True,
            limit_val_batches=0,
        )
        L.seed_everything(0)
        trainer.fit(module, datamodule=self.tiny_data(image_size=SIZE[1], train_size=32), ckpt_path=ckpt_path)
        return trainer

    def save_contract(self, name: str, root: Path) -> dict:
        """save_pruned on the pruned network (no training); the fresh process's entry for it."""
        gated = self.make(name).net
        self.randomize_bn(gated, torch.Generator().manual_seed(0))
        pruned = prune(gated)
        saved = save_pruned(pruned, root / "saved.pt")
        return {
            "tag": "save_pruned",
            "kind": "pruned",
            "file": str(saved),
            "io": _expect(root, "saved", outputs(pruned)),
        }

    def run_contract(self, name: str, root: Path) -> Run:
        """A fit that shrinks before epoch 2, snapshots after epochs 1 and 3, checkpoints every epoch and ends
        with surgery; then a fit resumed from the checkpoint after epoch 2 (taken after the shrink)."""
        files: list[dict] = []
        module = self.make(name)
        probe = PrunedOutputs()
        snapshot = PruningSnapshot(epochs=[1, 3], dirpath=str(root / "snapshots"))
        surgery = StructuralSurgery(dirpath=str(root), evaluate=False)
        self.fit(module, root / "a", [InTrainingShrink(when_frozen=False, epochs=[2]), snapshot, probe, surgery])
        assert not list(iter_gates(module.net)) and surgery.saved_path is not None
        after = root / "after-surgery.ckpt"
        module.trainer.save_checkpoint(after)
        y = outputs(module.net)
        for row in snapshot.rows:
            tag = f"snapshot-{row['epoch']}"
            expected = _expect(root, tag, probe.by_epoch[row["epoch"]])
            files.append({"tag": tag, "kind": "pruned", "file": row["path"], "io": expected})
        files.append({"tag": "surgery", "kind": "pruned", "file": str(surgery.saved_path), "io": _expect(root, "y", y)})
        files.append(
            {
                "tag": "checkpoint",
                "kind": "checkpoint",
                "file": str(after),
                "net": NET_FACTORY.get(name),
                "io": str(root / "y.expected.pt"),
            }
        )

        resumed = self.make(name)  # a fresh full-width module: the checkpoint reshapes it
        post_shrink = root / "a" / "ckpt" / "epoch=1-step=4.ckpt"
        self.fit(
            resumed,
            root / "b",
            [InTrainingShrink(when_frozen=False, epochs=[2]), StructuralSurgery(filename=None, evaluate=False)],
            post_shrink,
        )
        return Run(root, module, resumed, probe.by_epoch, list(snapshot.rows), surgery.saved_path, files)

    def _once(self, stage: str, name: str, work) -> Any:
        if (stage, name) not in self._done:
            root = self.root / name / stage
            root.mkdir(parents=True)
            try:
                self._done[stage, name] = work(name, root)
            except Exception as err:  # kept, so each of this network's tests reports it
                self._done[stage, name] = err
        result = self._done[stage, name]
        if isinstance(result, BaseException):
            raise result
        return result

    def saved(self, name: str) -> dict:
        return self._once("saved", name, self.save_contract)

    def run(self, name: str) -> Run:
        return self._once("run", name, self.run_contract)

    def fresh(self, name: str, tag: str) -> str:
        """The fresh process's verdict on one file: "ok", or what went wrong."""
        if self._fresh is None:
            manifest = []
            for other in self.networks:
                for items in (lambda n: [self.saved(n)], lambda n: self.run(n).files):
                    try:
                        manifest += [{**item, "network": other} for item in items(other)]
                    except Exception:
                        pass  # that network's own tests report its failure
            self._fresh = reload_in_fresh_process(manifest, self.root, self.repo)
        self.saved(name) if tag == "save_pruned" else self.run(name)
        return self._fresh.get(f"{name}/{tag}", "not reloaded")


FRESH = """
import importlib, json, sys, torch
from sss_lightning import SSSModule, load_pruned
from sss_lightning.module import load_sss_checkpoint
results = {}
for item in json.load(open(sys.argv[1])):
    key = item["network"] + "/" + item["tag"]
    try:
        if item["kind"] == "pruned":
            net = load_pruned(item["file"])
        elif item["net"]:  # a module built with net=...: the user builds the network again and passes it
            path, _, fn = item["net"].partition(":")
            net = SSSModule.load_from_checkpoint(item["file"], net=getattr(importlib.import_module(path), fn)()).net
        else:
            net = load_sss_checkpoint(item["file"])[0].net
        io = torch.load(item["io"], weights_only=True)
        with torch.no_grad():
            y = net.eval()(io["x"])
        results[key] = "ok" if torch.equal(y, io["y"]) else f"outputs differ by {(y - io['y']).abs().max():.3g}"
    except Exception as err:
        results[key] = f"{type(err).__name__}: {err}"
json.dump(results, open(sys.argv[2], "w"))
"""


def reload_in_fresh_process(manifest: list[dict], root: Path, repo: Path) -> dict[str, str]:
    (root / "manifest.json").write_text(json.dumps(manifest))
    out = root / "results.json"
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(root / "manifest.json"), str(out)], capture_output=True, text=True, cwd=repo
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request, make, quiet_trainer, tiny_data, randomize_bn, repo) -> Lab:
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is sys.modules[__name__] and "name" in getattr(getattr(item, "callspec", None), "params", {})
    }
    fixtures = {"make": make, "quiet_trainer": quiet_trainer, "tiny_data": tiny_data, "randomize_bn": randomize_bn}
    networks = [n for n in NETWORKS if n in selected]
    return Lab(tmp_path_factory.mktemp("persistence"), networks, {**fixtures, "repo": repo})


# --------------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_save_pruned_reloads_in_a_fresh_process_with_equal_outputs(lab, name, make):
    payload = torch.load(lab.saved(name)["file"], weights_only=True)  # pickle-free: plain data and tensors only
    assert payload["arch"] == make(name).net.sss_arch
    assert lab.fresh(name, "save_pruned") == "ok"


@pytest.mark.parametrize("name", NAMES)
def test_pruning_snapshots_during_fit_reload_in_a_fresh_process(lab, name):
    run = lab.run(name)
    assert [row["epoch"] for row in run.snapshot_rows] == [1, 3]
    for epoch in (1, 3):
        assert lab.fresh(name, f"snapshot-{epoch}") == "ok"
    assert run.snapshot_rows[0]["macs"] == run.snapshot_rows[1]["macs"]  # frozen gates: shrinking changes no MAC


@pytest.mark.parametrize("name", NAMES)
def test_structural_surgery_writes_a_file_that_reloads_in_a_fresh_process(lab, name):
    run = lab.run(name)
    assert run.surgery_file.is_file()
    assert lab.fresh(name, "surgery") == "ok"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_after_shrink_and_surgery_reloads_in_a_fresh_process(lab, name):
    lab.run(name)
    assert lab.fresh(name, "checkpoint") == "ok"


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_post_shrink_checkpoint_ends_with_the_uninterrupted_runs_weights(lab, name):
    run = lab.run(name)
    whole, resumed = run.module.net.state_dict(), run.resumed.net.state_dict()
    assert list(whole) == list(resumed)
    for key, value in whole.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow  # the ONNX export and onnxruntime check: over 10 s for each network
@pytest.mark.parametrize("name", NAMES)
def test_pruned_file_exports_to_onnx_with_equal_outputs(lab, name, tmp_path):
    run = lab.run(name)
    _, diff = export_model(load_pruned(run.surgery_file), tmp_path / "m.onnx", SIZE, fmt="onnx")
    assert diff is not None  # onnxruntime ran it and export_model checked it against the eager model


# --------------------------------------------------------------------------------------------------
# One description of the shrunk structure; loading into an already reshaped module
# --------------------------------------------------------------------------------------------------


def test_checkpoints_and_pruned_files_hold_the_same_description_of_a_shrunk_network(lab, make):
    run = lab.run("subclass")
    ckpt = torch.load(run.root / "a" / "ckpt" / "epoch=1-step=4.ckpt", weights_only=False)
    in_checkpoint = ckpt["state_dict"]["_extra_state"]["architecture"]
    shrunk = make("subclass")
    shrunk.set_extra_state(ckpt["state_dict"]["_extra_state"])  # the sliced network of the checkpoint
    in_file = architecture_spec(shrunk.net)  # what save_pruned would write for it
    assert in_checkpoint["modules"] == in_file["modules"] and in_file["modules"]
    assert in_checkpoint["arch"] == in_file["arch"] == make("subclass").net.sss_arch


def test_a_checkpoint_loads_into_a_module_whose_network_was_already_reshaped(lab, make):
    """As ``trainer.test(ckpt_path="best")`` does after a fit that shrank or pruned the network."""
    run = lab.run("user_class")
    module = make("user_class")
    module.replace_network(prune(module.net))  # no gates left
    for ckpt in ("epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"):  # before and after the shrink
        state = torch.load(run.root / "a" / "ckpt" / ckpt, weights_only=False)["state_dict"]
        fresh = make("user_class")
        fresh.load_state_dict(state)
        module.load_state_dict(state)
        assert torch.equal(outputs(module.net), outputs(fresh.net))
        assert [i.name for i in iter_gates(module.net)] == [i.name for i in iter_gates(fresh.net)]


# --------------------------------------------------------------------------------------------------
# Records: what each way of building a network writes, and what happens without one
# --------------------------------------------------------------------------------------------------


def test_prune_keeps_the_class_and_record_of_a_sequential_subclass(tiny_model):
    vgg = tiny_model("vgg11", num_classes=3)
    random_gate_pattern(vgg, 0.5, seed=0)
    for fold in (True, False):
        pruned = prune(vgg, fold_gates=fold)
        assert type(pruned) is type(vgg) and pruned.sss_arch == vgg.sss_arch


def test_prune_keeps_the_keys_of_a_named_sequential():
    seq = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(3, 4, 3), gate=ChannelGate(4), relu=nn.ReLU(), out=nn.Conv2d(4, 2, 1))
    )
    random_gate_pattern(seq, 0.5, seed=0)
    assert list(prune(seq).state_dict()) == ["conv.weight", "conv.bias", "out.weight", "out.bias"]


def test_rebuildable_records_the_import_path_and_the_arguments_by_name():
    net = persist_models.GatedConvNet(3, num_classes=5)  # positional arguments are recorded by name
    assert net.sss_arch == {"name": "tests.persist_models:GatedConvNet", "kwargs": {"width": 3, "num_classes": 5}}
    assert rebuild_problem(net) is None


def test_a_builder_registered_by_the_users_module_is_recorded_by_import_path(tmp_path):
    """So a fresh process finds it by importing that module, where the registry name alone is unknown."""
    net = build_model("persist_tiny", width=4)
    assert net.sss_arch == {"name": "tests.persist_models:tiny_registered", "kwargs": {"width": 4}}
    assert build_model("resnet20").sss_arch["name"] == "resnet20"  # ours: by name, as before
    random_gate_pattern(net, 0.5, seed=0)
    pruned = prune(net).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(load_pruned(save_pruned(pruned, tmp_path / "m.pt"))(x), pruned(x))


def test_add_gates_records_the_torchvision_builder_without_its_weights():
    net = add_gates("resnet18", kinds=["block"], num_classes=3, weights=None)
    base = net.sss_arch["kwargs"]["base"]
    assert base == {"name": "torchvision.models.resnet:resnet18", "kwargs": {"num_classes": 3}}
    assert net.sss_arch["kwargs"]["kinds"] == ["block"] and rebuild_problem(net) is None
    with pytest.raises(TypeError, match=r"builder arguments \['num_classes'\] with an already built ResNet"):
        add_gates(net, ["channel"], num_classes=3)
    with pytest.raises(ValueError, match="add_gates\\('resnet1000'\\).*builder name such as 'resnet18'"):
        add_gates("resnet1000")


def test_add_gates_extends_the_record_of_a_recorded_model(tmp_path, tiny_model):
    net = add_gates(tiny_model("resnet20", gates="none", num_classes=3), ["block", "channel"])
    assert net.sss_arch["kwargs"]["base"]["name"] == "resnet20"
    random_gate_pattern(net, 0.5, seed=0)
    pruned = prune(net).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(load_pruned(save_pruned(pruned, tmp_path / "m.pt"))(x), pruned(x))


def head(act: nn.Module | None = None) -> nn.Sequential:
    """conv, gate, classifier: the smallest gated network (4 classes, as tiny_data has)."""
    act = act or nn.ReLU()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), act, ChannelGate(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)
    )


class _Net(nn.Module):
    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.body = head(act)

    def forward(self, x):
        return self.body(x)


def _local_class():
    @rebuildable
    class Local(_Net):
        pass

    return Local()


@rebuildable
class TakesALayer(_Net):
    pass


class InMain(_Net):
    pass


InMain.__module__ = "__main__"  # as a class defined in the script being run
rebuildable(InMain)


@pytest.mark.parametrize(
    "net, message",
    [
        (
            head,
            r"Sequential was not built by .* wrap the Sequential in your own nn.Module class decorated with "
            r"@sss_lightning.rebuildable; build it in build_network\(\) of an SSSModule subclass",
        ),
        (persist_models.UnrecordedSubclass, "decorate class UnrecordedSubclass with @sss_lightning.rebuildable"),
        (_local_class, r"Local is defined inside a function .* define Local at the top level of an importable module"),
        (InMain, r"InMain is defined in __main__ .* move InMain into a module"),
        (lambda: TakesALayer(nn.ReLU()), r"argument act = ReLU\(\), a ReLU, which a pickle-free file cannot record"),
        (
            lambda: add_gates(__import__("torchvision").models.resnet18(num_classes=3), ["block"]),
            r"gated by add_gates\(model, kinds=\['block'\]\).*add_gates\('<torchvision builder, e.g. resnet18>'",
        ),
    ],
    ids=["inline-sequential", "undecorated-subclass", "local-class", "main-class", "non-plain-argument", "add-gates"],
)
def test_networks_that_cannot_be_rebuilt_are_refused_before_training_with_the_fix(
    tmp_path, net, message, quiet_trainer, tiny_data
):
    started = []

    class Started(L.Callback):
        def on_train_batch_start(self, *args):
            started.append(1)

    for callback in (PruningSnapshot(), StructuralSurgery()):
        trainer = quiet_trainer(tmp_path, [Started(), callback], max_epochs=1)
        with pytest.raises(ValueError, match=message):
            trainer.fit(SSSModule(net=net()), datamodule=tiny_data())
        assert not started and trainer.global_step == 0
    with pytest.raises(PrunedFileError, match=message):
        save_pruned(prune(net()), tmp_path / "m.pt")


def test_surgery_without_a_file_needs_no_record(tmp_path, quiet_trainer, tiny_data):
    net = head()
    with torch.no_grad():
        net[2].scale[::2] = 0
    with pytest.raises(ValueError, match="Or pass filename=None to keep the pruned network in memory"):
        quiet_trainer(tmp_path, [StructuralSurgery()], max_steps=1).fit(SSSModule(net=net), datamodule=tiny_data())
    module = SSSModule(net=net, freeze_gates=True)
    surgery = StructuralSurgery(filename=None)
    quiet_trainer(tmp_path, [surgery], max_steps=1).fit(module, datamodule=tiny_data())
    assert surgery.saved_path is None and not list(tmp_path.rglob("*.pt"))
    assert not list(iter_gates(module.net)) and module.net[0].out_channels == 2


def test_checkpoints_after_shrink_and_surgery_of_an_unrecorded_network_reload_into_it(
    tmp_path, quiet_trainer, tiny_data
):
    """Checkpoints need no construction record: the reshaping is recorded against the network as built, so
    the module built again with the same ``net=`` takes it (before: size mismatch, then Missing key scale)."""

    def net():
        torch.manual_seed(0)
        seq = head()
        with torch.no_grad():
            seq[2].scale[::2] = 0
        return seq

    module = SSSModule(net=net())
    trainer = quiet_trainer(tmp_path, [InTrainingShrink(when_frozen=False, epochs=[2])], max_epochs=2)
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(tmp_path / "shrunk.ckpt")
    module.replace_network(prune(module.net))  # what StructuralSurgery does at the end of a fit
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    x = torch.randn(2, 3, 8, 8)
    for ckpt, gates in (("shrunk.ckpt", 1), ("pruned.ckpt", 0)):
        reloaded = SSSModule.load_from_checkpoint(tmp_path / ckpt, net=net())
        assert len(list(iter_gates(reloaded.net))) == gates and reloaded.net[0].out_channels == 2
    assert torch.equal(reloaded.eval()(x), module.eval()(x))


def test_the_record_of_an_add_gates_model_is_json_and_reloads_pickle_free(tmp_path):
    net = persist_models.torchvision_net()
    random_gate_pattern(net, 0.5, seed=0)
    pruned = prune(net).eval()
    payload = read_pruned(save_pruned(pruned, tmp_path / "m.pt"))
    assert payload["arch"]["name"] == "sss_lightning.models.add_gates:gated_model"
    json.dumps(payload["arch"])  # the construction record is JSON
    x = torch.randn(1, *SIZE)
    assert torch.equal(load_pruned(tmp_path / "m.pt")(x), pruned(x))
