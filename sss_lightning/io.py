"""Save and reload pruned models as an architecture spec plus a state dict: no pickled modules.

The file holds the construction record of the original model (a registry name, or the import path of a
class or builder, with its plain-data arguments), the recipe of every module surgery changed (new
conv/BN/linear shapes, gates turned into ``Identity``, removed branches; each layer type's entry in
:mod:`sss_lightning.layers` says what it records and how it is built again), and the state dict. Loading
rebuilds the original from its record, applies the recipes (as timm's
``adapt_model_from_string`` does for its pruned models) and loads the weights strictly, so
``torch.load(weights_only=True)`` is all it takes and a fresh process gets identical outputs.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import COUNT, FLAG, SIZES, layer_kind, recorded_kind, recorded_types
from .records import build_from_record, record_problem

__all__ = [
    "FORMAT",
    "save_pruned",
    "load_pruned",
    "architecture_spec",
    "apply_spec",
    "rebuild_problem",
    "PrunedFileError",
]

FORMAT = "sss-lightning/pruned"
VERSION = 1


class PrunedFileError(ValueError):
    """A pruned-model file that cannot be loaded; the message says why and what to do."""


def _recipe(m: nn.Module) -> dict[str, Any]:
    """The constructor arguments that define ``m``'s shape, as its layer-table entry records them (type
    name only for other modules)."""
    record = layer_kind(m).record
    return {"type": type(m).__name__, **(record(m) if record is not None else {})}


def architecture_spec(pruned: nn.Module, base: nn.Module | None = None) -> dict[str, Any]:
    """What distinguishes ``pruned`` from ``base``: the one description of a shrunk or pruned structure,
    written into pruned files and into checkpoints alike.

    ``base`` defaults to a fresh build from ``pruned``'s construction record (``pruned.sss_arch``: a
    registry name, or the import path of a class or builder, with its arguments), which is what a fresh
    process can rebuild: a network without a usable record raises :class:`PrunedFileError` saying what to
    add. A checkpoint passes the network as it was built instead, so any network can be resumed.
    """
    arch = getattr(pruned, "sss_arch", None)
    if base is None:
        problem = record_problem(pruned)
        if problem is not None:
            raise PrunedFileError(problem)
        with torch.random.fork_rng(devices=[]):  # a reference build must not move the caller's RNG
            base = build_from_record(arch)
    # every path of a module shared by several (a stream gate), so each is rebuilt where it sits
    reference = {path: _recipe(module) for path, module in base.named_modules(remove_duplicate=False)}
    changed: dict[str, dict[str, Any]] = {}
    for path, module in pruned.named_modules(remove_duplicate=False):
        recipe = _recipe(module)
        if recipe != reference.get(path):
            if recorded_kind(recipe["type"]) is None:
                raise PrunedFileError(
                    f"cannot record module {path!r} of type {recipe['type']} in a pruned spec: it is not in the "
                    f"network as built (a {reference.get(path, {}).get('type', 'missing module')} there), and "
                    f"only {recorded_types()} can be rebuilt from a recipe (sss_lightning.layers.register_layer "
                    "adds a type)"
                )
            changed[path] = recipe
    return {"arch": copy.deepcopy(arch), "modules": changed}


def apply_spec(spec: dict[str, Any], base: nn.Module | None = None) -> nn.Module:
    """Reshape ``base`` in place as ``spec`` records, or, by default, a fresh build of ``spec["arch"]``
    (weights of reshaped modules uninitialised: a state dict fills them). Leaves the global RNG alone."""
    with torch.random.fork_rng(devices=[]):  # its weights are overwritten; leave the caller's RNG alone
        model = build_from_record(spec["arch"]) if base is None else base
        built: dict[int, nn.Module] = {}  # one module shared by several paths (a stream gate) stays shared
        for path, recipe in sorted(spec["modules"].items(), key=lambda item: item[0].count(".")):
            kind = recorded_kind(recipe["type"])
            if kind is None:
                raise PrunedFileError(
                    f"cannot re-create module {path!r}: no layer type {recipe['type']!r} is registered; only "
                    f"{recorded_types()} are (sss_lightning.layers.register_layer adds a type)"
                )
            fields = {key: value for key, value in recipe.items() if key != "type"}
            if kind.reshape is not None:  # changes the module as built, in place
                kind.reshape(model.get_submodule(path), fields)
                continue
            try:
                before = model.get_submodule(path)
            except AttributeError:
                continue  # inside a branch removed above
            if id(before) not in built:
                built[id(before)] = kind.rebuild(fields)
            model.set_submodule(path, built[id(before)])
    return model


def rebuild_problem(model: nn.Module) -> str | None:
    """Why a pruned form of ``model`` could not be saved and reloaded in a fresh process (what to add to
    make it possible), or ``None`` when it can: the callbacks that write pruned files ask before training."""
    return record_problem(model)


def save_pruned(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a pruned registry model) as spec + state dict; ``metadata`` must be plain data."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"save_pruned: {path} is a directory; pass a file path such as {path / 'pruned.pt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        **architecture_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # never leave a half-written file under the real name
    finally:
        tmp.unlink(missing_ok=True)  # nor a temporary one when writing or renaming failed
    return path


_RECREATE = "Re-create it with save_pruned or `sss-lightning prune --ckpt <checkpoint> --out <file>`"
# How the fields a layer-table entry declares (LayerKind.record_fields) are checked before anything is built
# (a wrong type there would otherwise surface as a bare TypeError deep inside torch.nn); other fields are
# left to the builders.
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    COUNT: (lambda v: type(v) is int and v >= 1, "an int >= 1"),
    SIZES: (
        lambda v: isinstance(v, (list, tuple)) and all(type(i) is int and i >= 0 for i in v),
        "a list of ints >= 0",
    ),
    FLAG: (lambda v: type(v) is bool, "a bool"),
}
_TOP_LEVEL = {"arch": dict, "modules": dict, "state_dict": dict, "metadata": dict}


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (EOFError(''))."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_file(path: Path) -> None:
    """Refuse what cannot be a torch.save file before torch looks at it: a folder, 0 bytes, no zip archive."""
    if path.is_dir():
        raise PrunedFileError(f"{path} is a directory, not a pruned model file; pass the file save_pruned wrote")
    if not path.exists():
        raise FileNotFoundError(f"no pruned model file at {path}; write one with save_pruned or `sss-lightning prune`")
    size = path.stat().st_size
    if size == 0:
        raise PrunedFileError(f"{path} is empty (0 bytes): an interrupted write or copy. {_RECREATE}")
    if not zipfile.is_zipfile(path):
        raise PrunedFileError(
            f"cannot read {path}: its {size} bytes hold no complete zip archive (torch.save writes one), so it is "
            f"truncated, or not a torch file. {_RECREATE}"
        )


def _check_checksums(path: Path) -> None:
    """torch.load does not verify the CRC-32 that torch.save records per entry; a flipped byte in a tensor
    would load as a silently different model, so check them here."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(info.CRC for info in archive.infolist()):
                return  # written with torch.serialization.set_crc32_options(False): nothing to check against
            bad = archive.testzip()
    except Exception as err:  # zipfile raises several types for damaged headers
        raise PrunedFileError(f"cannot read {path}: damaged zip archive ({_first_line(err)}). {_RECREATE}") from err
    if bad is not None:
        raise PrunedFileError(
            f"{path} is corrupted: the checksum of its entry {bad!r} does not match its bytes (changed after it was "
            f"written: a bad disk, copy or download). {_RECREATE}"
        )


def _check_recipe(path: Path, where: str, recipe: Any) -> None:
    kind_name = recipe.get("type") if isinstance(recipe, dict) else None
    kind = recorded_kind(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        got = kind_name if isinstance(recipe, dict) else recipe
        raise PrunedFileError(
            f"{path}: the recipe of module {where!r} must be a dict whose 'type' is one of {recorded_types()}, got "
            f"{got!r}. The file is damaged or was edited by hand; {_RECREATE}"
        )
    for field, value in recipe.items():
        check = kind.record_fields.get(field)
        if check is None:
            continue
        accepts, want = _FIELD_CHECKS[check]
        if not accepts(value):
            raise PrunedFileError(
                f"{path}: field {field!r} of module {where!r} ({recipe['type']}) must be {want}, got {value!r} "
                f"({_type_name(value)}). The file is damaged or was edited by hand; {_RECREATE}"
            )


def _check_payload(path: Path, payload: Any) -> None:
    """The payload is one save_pruned writes: marker, version, every field with its type, tensors only."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else f"a {_type_name(payload)}"
        raise PrunedFileError(
            f"{path} is not an sss-lightning pruned model (no format={FORMAT!r} marker, got {got!r}); a Lightning "
            "checkpoint is turned into one with `sss-lightning prune --ckpt <file> --out <file>`"
        )
    version = payload.get("version")
    if type(version) is not int or version != VERSION:
        newer = type(version) is int and version > VERSION
        fix = "upgrade sss-lightning to read it" if newer else _RECREATE
        raise PrunedFileError(f"{path} has format version {version!r}; this build reads version {VERSION}: {fix}")
    missing = [key for key in _TOP_LEVEL if key not in payload]
    if missing:
        raise PrunedFileError(
            f"{path} lacks the field(s) {missing} that every pruned file has: damaged or edited by hand. {_RECREATE}"
        )
    for key, kind in _TOP_LEVEL.items():
        if not isinstance(payload[key], kind):
            raise PrunedFileError(
                f"{path}: field {key!r} must be a {kind.__name__}, got {_type_name(payload[key])}. {_RECREATE}"
            )
    arch = payload["arch"]
    if not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs"), dict):
        raise PrunedFileError(
            f"{path}: field 'arch' must be {{'name': <registry name>, 'kwargs': {{...}}}}, got {arch!r}. {_RECREATE}"
        )
    for where, recipe in payload["modules"].items():
        if not isinstance(where, str):
            raise PrunedFileError(f"{path}: module paths must be strings, got {where!r}. {_RECREATE}")
        _check_recipe(path, where, recipe)
    for key, value in payload["state_dict"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise PrunedFileError(
                f"{path}: state_dict entry {key!r} must map a string to a tensor, got {_type_name(value)}. {_RECREATE}"
            )


def read_pruned(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of a pruned-model file, checked to be ours and complete (``weights_only`` loading).

    Every way a file can be damaged (empty, truncated, flipped bytes, missing or mistyped fields, another
    format or version) raises :class:`PrunedFileError` naming the file and what is wrong;
    a path with no file raises ``FileNotFoundError``.
    """
    path = Path(path)
    _check_file(path)
    _check_checksums(path)  # first: a flipped byte is named as such, not as whatever torch makes of it
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:
        raise PrunedFileError(
            f"cannot read {path}: it holds objects that weights_only loading refuses (e.g. a whole nn.Module "
            f"saved with torch.save(model)); a pruned file holds only plain data and tensors. {_RECREATE}"
        ) from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise PrunedFileError(
            f"cannot read {path}: {_first_line(err)} (truncated, or not a torch file). {_RECREATE}"
        ) from err
    _check_payload(path, payload)
    return payload


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned`, in eval mode, with its metadata attached."""
    payload = read_pruned(path)
    arch = payload["arch"]
    try:
        model = apply_spec(payload)
    except PrunedFileError:
        raise
    except Exception as err:  # an unknown registry name, build kwargs or recipe fields this build rejects
        raise PrunedFileError(
            f"{path}: cannot rebuild the architecture it records ({arch['name']!r} with {arch['kwargs']}): "
            f"{type(err).__name__}: {_first_line(err)}. A file written by another sss-lightning version or with a "
            f"custom @register_model needs that code importable; otherwise {_RECREATE}"
        ) from err
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:  # torch's message lists every missing/unexpected key and size mismatch
        raise PrunedFileError(
            f"{path} does not match the architecture its spec describes ({payload['arch']['name']}): {err}\n"
            f"The weights belong to another architecture, or the file was edited. {_RECREATE}"
        ) from err
    model.sss_arch = payload["arch"]
    model.sss_metadata = payload["metadata"]
    model.sss_pruned = True  # a pruned file's model: prune() of it is a copy, not a "no gates" error
    return model.eval()
