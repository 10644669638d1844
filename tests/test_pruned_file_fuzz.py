"""Corrupted pruned files: every damage is a PrunedFileError that names the file and what is wrong.

Never a bare KeyError / TypeError / IndexError / EOFError from deep inside torch or our rebuild code, and
never a silently different model. One real pruned file (a ResNet-20 with cut channels, a branch reduced
to a constant and a branch removed) is damaged byte by byte (truncations, 0 bytes, garbage bytes) and
field by field (deleted keys, wrong types, wrong shapes, wrong version or format).
"""

from __future__ import annotations

import copy
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sss_lightning.io import PrunedFileError, load_pruned, save_pruned
from sss_lightning.models.registry import build_from_record

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good(tmp_path_factory, pruned_resnet) -> tuple[Path, bytes, dict[str, Any]]:
    """A real pruned file, its bytes and its payload (weights_only)."""
    _, pruned = pruned_resnet()
    path = save_pruned(pruned, tmp_path_factory.mktemp("good") / "model.pt", metadata={"val/acc": 0.5})
    return path, path.read_bytes(), torch.load(path, weights_only=True)


def refused(path: Path, match: str) -> PrunedFileError:
    """load_pruned(path) raises PrunedFileError naming the file and matching ``match``."""
    with pytest.raises(PrunedFileError, match=match) as info:
        load_pruned(path)
    assert str(path) in str(info.value), str(info.value)
    fixes = ("Re-create it", "upgrade sss-lightning", "sss-lightning prune --ckpt")
    assert any(fix in str(info.value) for fix in fixes), str(info.value)  # and what to do about it
    return info.value


def test_the_good_file_loads(good):
    path, _, _ = good
    assert load_pruned(path).sss_metadata == {"val/acc": 0.5}


# --- bytes ------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    """The error handler itself must not fail here (an IndexError on EOFError's empty message)."""
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    refused(path, r"is empty \(0 bytes\)")


@pytest.mark.parametrize("where", [1, 2, 4, 30, 64, 1000, 0.25, 0.5, 0.9, -22, -1])
def test_truncated(good, tmp_path, where):
    _, data, _ = good
    if isinstance(where, float):
        cut = int(len(data) * where)
    else:
        cut = where if where > 0 else len(data) + where
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:cut])
    refused(path, rf"its {cut} bytes hold no complete zip archive .* truncated, or not a torch file")


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_anywhere(good, tmp_path, fraction):
    _, data, _ = good
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    refused(path, r"empty|truncated")


def _entry_offset(data: bytes, suffix: str) -> int:
    """Where the bytes of the zip entry ending in ``suffix`` start."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    # local header: 30 bytes + name + extra field (torch pads the extra field to align tensors)
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _overwrite(data: bytes, offset: int, junk: bytes) -> bytes:
    return data[:offset] + junk + data[offset + len(junk) :]


@pytest.mark.parametrize(
    "region, match",
    [
        ("zip magic", r"no complete zip archive|damaged zip archive|corrupted"),
        ("pickled spec", r"checksum of its entry '.*data\.pkl' does not match"),
        ("tensor bytes", r"checksum of its entry '.*data/0' does not match"),
        ("last tensor", r"checksum of its entry '.*data/\d+' does not match"),
        ("central directory", r"no complete zip archive|damaged zip archive|corrupted"),
    ],
)
def test_garbage_bytes(good, tmp_path, region, match):
    _, data, _ = good
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        tensors = [i.filename for i in archive.infolist() if "/data/" in i.filename]
    offset = {
        "zip magic": 0,
        "pickled spec": _entry_offset(data, "data.pkl") + 40,
        "tensor bytes": _entry_offset(data, "/data/0"),
        "last tensor": _entry_offset(data, tensors[-1].split("/", 1)[1]),
        "central directory": data.rindex(b"PK\x01\x02"),
    }[region]
    path = tmp_path / "garbage.pt"
    path.write_bytes(_overwrite(data, offset, b"\xa5\x5a\xff\x00"))
    refused(path, match)


@FUZZ
@given(offset=st.integers(0, 10**9), junk=st.binary(min_size=1, max_size=16))
def test_garbage_anywhere_is_refused_or_changes_nothing(good, tmp_path, offset, junk):
    """A damaged byte is refused; the only bytes that may change silently are ones the model never reads
    (torch's alignment padding, zip fields that are not checked), and then the model is bit-identical."""
    path0, data, payload = good
    offset %= len(data)
    damaged = _overwrite(data, offset, junk)[: len(data)]
    path = tmp_path / "garbage.pt"
    path.write_bytes(damaged)
    try:
        model = load_pruned(path)
    except PrunedFileError as err:
        assert str(path) in str(err)
        return
    loaded = model.state_dict()
    assert loaded.keys() == payload["state_dict"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in payload["state_dict"].items())


@pytest.mark.parametrize(
    "content, match",
    [
        (bytes(range(256)) * 4, r"no complete zip archive"),
        (b"model: resnet20\nweights: somewhere else\n", r"no complete zip archive"),
    ],
    ids=["random bytes", "text file"],
)
def test_not_a_torch_file(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    refused(path, match)


def test_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    refused(path, r"cannot read .*model\.pt")


def test_pickled_module_is_refused_not_executed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: weights_only loading must refuse it
    refused(path, r"objects that weights_only loading refuses .* plain data and tensors")


def test_legacy_non_zip_torch_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "sss-lightning/pruned"}, path, _use_new_zipfile_serialization=False)
    refused(path, r"no complete zip archive")


def test_a_directory(tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(PrunedFileError, match=r"model\.pt is a directory, not a pruned model file"):
        load_pruned(tmp_path / "model.pt")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no pruned model file at .*nothing\.pt"):
        load_pruned(tmp_path / "nothing.pt")


# --- fields -------------------------------------------------------------------------------------------


def _first_recipe(payload: dict[str, Any], kind: str) -> str:
    return next(path for path, recipe in payload["modules"].items() if recipe["type"] == kind)


def _first_weight(payload: dict[str, Any]) -> str:
    return next(k for k in payload["state_dict"] if k.endswith("conv1.weight") or k.endswith(".weight"))


def _edit(payload: dict[str, Any], change: str) -> Any:
    """A deep copy of the payload with one damage applied."""
    p = copy.deepcopy(payload)
    conv = _first_recipe(p, "Conv2d")
    weight = _first_weight(p)
    if change.startswith("del "):
        keys = change[4:].split(".")
        target = p
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    elif change == "payload is a list":
        return [p]
    elif change == "payload is a tensor":
        return torch.zeros(3)
    elif change == "format other":
        p["format"] = "sss-lightning/other"
    elif change == "format is bytes":
        p["format"] = b"sss-lightning/pruned"
    elif change == "version 2":
        p["version"] = 2
    elif change == "version 0":
        p["version"] = 0
    elif change == "version str":
        p["version"] = "1"
    elif change == "version bool":
        p["version"] = True
    elif change == "arch is a str":
        p["arch"] = "resnet20"
    elif change == "arch name is int":
        p["arch"]["name"] = 20
    elif change == "arch kwargs is a list":
        p["arch"]["kwargs"] = [4]
    elif change == "unknown arch":
        p["arch"]["name"] = "resnet9000"
    elif change == "unknown build kwarg":
        p["arch"]["kwargs"]["colour"] = "blue"
    elif change == "modules is a list":
        p["modules"] = list(p["modules"])
    elif change == "recipe is a str":
        p["modules"][conv] = "Conv2d"
    elif change == "recipe without type":
        del p["modules"][conv]["type"]
    elif change == "recipe of unknown type":
        p["modules"][conv]["type"] = "Conv3d"
    elif change == "out_channels is a str":
        p["modules"][conv]["out_channels"] = "8"
    elif change == "out_channels negative":
        p["modules"][conv]["out_channels"] = -1
    elif change == "out_channels float":
        p["modules"][conv]["out_channels"] = 2.5
    elif change == "kernel_size is a str":
        p["modules"][conv]["kernel_size"] = "3"
    elif change == "bias is a str":
        p["modules"][conv]["bias"] = "yes"
    elif change == "branch is an int":
        p["modules"][_first_recipe(p, "GatedResidual")]["branch"] = 0
    elif change == "gate n is zero":
        p["modules"][conv] = {"type": "ChannelGate", "n": 0}
    elif change == "state_dict is a list":
        p["state_dict"] = list(p["state_dict"].values())
    elif change == "state_dict value is a number":
        p["state_dict"][weight] = 1.0
    elif change == "tensor of a wrong shape":
        p["state_dict"][weight] = torch.zeros(*p["state_dict"][weight].shape[:-1], 7)
    elif change == "tensor missing":
        del p["state_dict"][weight]
    elif change == "extra tensor":
        p["state_dict"]["fc.extra"] = torch.zeros(1)
    elif change == "metadata is a list":
        p["metadata"] = [("val/acc", 0.5)]
    else:
        raise AssertionError(change)
    return p


FIELD_DAMAGE = [
    ("del format", r"not an sss-lightning pruned model .*got None"),
    ("del version", r"format version None; this build reads version 1"),
    ("del arch", r"lacks the field\(s\) \['arch'\]"),
    ("del modules", r"lacks the field\(s\) \['modules'\]"),
    ("del state_dict", r"lacks the field\(s\) \['state_dict'\]"),
    ("del metadata", r"lacks the field\(s\) \['metadata'\]"),
    ("del arch.name", r"field 'arch' must be \{'name'"),
    ("del arch.kwargs", r"field 'arch' must be \{'name'"),
    ("payload is a list", r"not an sss-lightning pruned model .*got 'a list'"),
    ("payload is a tensor", r"not an sss-lightning pruned model .*got 'a Tensor'"),
    ("format other", r"not an sss-lightning pruned model .*got 'sss-lightning/other'"),
    ("format is bytes", r"not an sss-lightning pruned model"),
    ("version 2", r"format version 2; this build reads version 1: upgrade sss-lightning"),
    ("version 0", r"format version 0; this build reads version 1"),
    ("version str", r"format version '1'; this build reads version 1"),
    ("version bool", r"format version True; this build reads version 1"),
    ("arch is a str", r"field 'arch' must be a dict, got str"),
    ("arch name is int", r"field 'arch' must be \{'name'.*got \{'name': 20"),
    ("arch kwargs is a list", r"field 'arch' must be \{'name'"),
    ("unknown arch", r"cannot rebuild the architecture it records \('resnet9000'.*ValueError.*resnet20"),
    ("unknown build kwarg", r"cannot rebuild the architecture it records .*TypeError.*colour"),
    ("modules is a list", r"field 'modules' must be a dict, got list"),
    ("recipe is a str", r"recipe of module '.*' must be a dict whose 'type' is one of .*got 'Conv2d'"),
    ("recipe without type", r"recipe of module '.*' must be a dict whose 'type' is one of .*got None"),
    ("recipe of unknown type", r"recipe of module '.*' must be a dict whose 'type' is one of .*got 'Conv3d'"),
    ("out_channels is a str", r"field 'out_channels' of module '.*' \(Conv2d\) must be an int >= 1, got '8' \(str\)"),
    ("out_channels negative", r"field 'out_channels' of module '.*' \(Conv2d\) must be an int >= 1, got -1"),
    ("out_channels float", r"field 'out_channels' of module '.*' \(Conv2d\) must be an int >= 1, got 2.5"),
    ("kernel_size is a str", r"field 'kernel_size' of module '.*' \(Conv2d\) must be a list of ints >= 0"),
    ("bias is a str", r"field 'bias' of module '.*' \(Conv2d\) must be a bool, got 'yes'"),
    ("branch is an int", r"field 'branch' of module '.*' \(GatedResidual\) must be a bool, got 0"),
    ("gate n is zero", r"field 'n' of module '.*' \(ChannelGate\) must be an int >= 1, got 0"),
    ("state_dict is a list", r"field 'state_dict' must be a dict, got list"),
    ("state_dict value is a number", r"state_dict entry '.*weight' must map a string to a tensor, got float"),
    ("tensor of a wrong shape", r"(?s)does not match the architecture .*size mismatch.*Re-create it"),
    ("tensor missing", r"(?s)does not match the architecture .*Missing key"),
    ("extra tensor", r"(?s)does not match the architecture .*Unexpected key.*fc\.extra"),
    ("metadata is a list", r"field 'metadata' must be a dict, got list"),
]


@pytest.mark.parametrize("change, match", FIELD_DAMAGE, ids=[c for c, _ in FIELD_DAMAGE])
def test_damaged_field(good, tmp_path, change, match):
    _, _, payload = good
    path = tmp_path / "edited.pt"
    torch.save(_edit(payload, change), path)
    refused(path, match)


def test_damaged_files_through_the_cli_are_one_line_and_exit_2(good, tmp_path, capsys):
    """The same damages through the CLI's export: one line on stderr, exit code 2, no traceback."""
    from sss_lightning.cli import main

    _, _, payload = good
    for change, _ in FIELD_DAMAGE[:6]:
        path = tmp_path / "edited.pt"
        torch.save(_edit(payload, change), path)
        with pytest.raises(SystemExit) as exc:
            main(["export", "--model", str(path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("sss-lightning: error: ") and str(path) in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unpicklable_payload_is_named(tmp_path):
    """Garbage that is a valid zip with a valid checksum but a pickle that is not ours."""
    path = tmp_path / "model.pt"
    buffer = io.BytesIO()
    torch.save({"format": "sss-lightning/pruned"}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps(print)  # a global weights_only must not call
            dst.writestr(info, data)
    refused(path, r"cannot read .*model\.pt")


@pytest.mark.parametrize("name", ["os:system", "subprocess:run", "builtins:eval", "sss_lightning.export:export_model"])
def test_a_record_cannot_make_the_loader_call_anything_but_a_network_builder(tmp_path, name):
    marker = tmp_path / "called"
    kwargs = {"command": f"touch {marker}"} if name == "os:system" else {"args": ["touch", str(marker)]}
    with pytest.raises(TypeError, match="is not a network builder"):
        build_from_record({"name": name, "kwargs": kwargs})
    assert not marker.exists()
