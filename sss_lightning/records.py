"""Construction records and the name -> builder registry: how a network is rebuilt in a fresh process.

Nothing here knows an architecture, so pruned-file loading (:mod:`sss_lightning.io`) uses it without
importing any network; the built-in networks register themselves when :mod:`sss_lightning.models` is
imported (``import sss_lightning`` does), and every name here is importable from
:mod:`sss_lightning.models.registry` too.

``build_model("resnet56", num_classes=10)`` works like torchvision's model builders and records the name
and keyword arguments on the model (``model.sss_arch``), so a pruned model can be saved as an
architecture spec plus a state dict and rebuilt without pickling. The same record, ``{"name": ...,
"kwargs": {...}}``, serves networks from outside the registry: its ``name`` is then the import path
``"package.module:Qualified.name"`` of a callable that returns the network (a class or a builder
function) and ``kwargs`` the plain-data arguments it is called with. :func:`rebuildable` writes such a
record for a user's own ``nn.Module`` class; ``add_gates`` and ``SSSModule.build_network`` write their own.
:func:`record_problem` says, before any training, what is missing when a network cannot be rebuilt.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "register_model",
    "build_model",
    "list_models",
    "default_input_size",
    "rebuildable",
    "import_path",
    "resolve_import_path",
    "build_from_record",
    "record_problem",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZES: dict[str, tuple[int, int, int]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str, input_size: tuple[int, int, int] = (3, 32, 32)) -> Callable[[F], F]:
    """Decorator registering a builder function under ``name``; ``input_size`` is its usual (C, H, W)."""

    def decorator(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        _INPUT_SIZES[name] = tuple(input_size)
        return fn

    return decorator


def default_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) a registered model is usually trained at (CIFAR 32x32, ImageNet 224x224)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _INPUT_SIZES[name]


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    builder = _REGISTRY[name]
    model = builder(**kwargs)
    # A builder registered by the user's own module is recorded by its import path: a fresh process loading
    # the pruned file imports it, where the registry name stays unknown until that module registers it.
    own = builder.__module__.split(".")[0] != "sss_lightning"
    portable = own and builder.__module__ != "__main__" and "<locals>" not in builder.__qualname__
    model.sss_arch = {"name": import_path(builder) if portable else name, "kwargs": dict(kwargs)}
    return model


# --------------------------------------------------------------------------------------------------
# Construction records beyond the registry
# --------------------------------------------------------------------------------------------------

M = TypeVar("M", bound=type)
_PLAIN = (str, int, float, bool, type(None))
_RECORD = "sss_arch"  # the attribute holding a network's construction record
_PROBLEM = "sss_arch_problem"  # why a network has none (set where the missing piece is known)


def import_path(obj: Any) -> str:
    """``"module:Qualified.name"`` of a class or function (what :func:`build_from_record` imports)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def resolve_import_path(path: str) -> Any:
    """The object ``"module:Qualified.name"`` names (importing the module)."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _not_plain(value: Any, where: str) -> tuple[str, Any] | None:
    """``(where, value)`` of the first entry of ``value`` that is not plain data, or ``None``."""
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, (list, tuple)):
        return next((bad for i, v in enumerate(value) if (bad := _not_plain(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, v in value.items():
            if not isinstance(key, str):
                return f"{where} (key {key!r})", key
            if bad := _not_plain(v, f"{where}[{key!r}]"):
                return bad
        return None
    return where, value


def _nested_records(record: dict[str, Any]) -> list[dict[str, Any]]:
    """``record`` and every record nested in its arguments (a dict of exactly ``name`` and ``kwargs``)."""
    found = [record]
    stack = list(record.get("kwargs", {}).values())
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if set(value) == {"name", "kwargs"} and isinstance(value["name"], str):
                found += _nested_records(value)
            else:
                stack += list(value.values())
        elif isinstance(value, (list, tuple)):
            stack += list(value)
    return found


def _may_build(obj: Any) -> bool:
    """Whether a record may call ``obj``: an nn.Module class, a registered builder, a function of the model
    packages, or one marked ``sss_builder = True`` in code (whatever a pruned file names is called, so nothing
    else may be reached through one)."""
    if isinstance(obj, type):
        return issubclass(obj, nn.Module)
    if any(obj is fn for fn in _REGISTRY.values()) or getattr(obj, "sss_builder", False) is True:
        return True
    module = getattr(obj, "__module__", None) or ""
    trusted = ("sss_lightning.models", "torchvision.models")
    return inspect.isfunction(obj) and any(module == t or module.startswith(t + ".") for t in trusted)


def build_from_record(record: dict[str, Any]) -> nn.Module:
    """The network a construction record describes, freshly built (its weights are the builder's init).

    A ``name`` without ``:`` is a registry name; one with it is an import path whose object is called
    with ``kwargs``. The result carries the record again, so it can be saved in turn.
    """
    name, kwargs = record["name"], dict(record["kwargs"])
    if ":" not in name:
        return build_model(name, **kwargs)
    builder = resolve_import_path(name)
    if not _may_build(builder):
        raise TypeError(
            f"{name} is not a network builder: a record may name an nn.Module class, a registered builder, or a "
            "model builder of sss_lightning.models / torchvision.models, so a file cannot make the loader call "
            "anything else. Fix: register the builder with @register_model, or decorate the class with "
            "@sss_lightning.rebuildable"
        )
    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}(**{kwargs}) returned a {type(model).__name__}, not an nn.Module")
    setattr(model, _RECORD, {"name": name, "kwargs": kwargs})
    return model


def _no_record(model: nn.Module) -> str:
    cls = type(model)
    what = f"{cls.__name__} was not built by sss_lightning.build_model or any recorded builder"
    own_class = not cls.__module__.startswith(("torch.", "torchvision."))
    decorate = (
        f"decorate class {cls.__name__} with @sss_lightning.rebuildable (it records the constructor's keyword "
        "arguments; the class must be defined at the top level of an importable module and take plain-data "
        "arguments)"
        if own_class
        else f"wrap the {cls.__name__} in your own nn.Module class decorated with @sss_lightning.rebuildable"
    )
    return (
        f"{what}, so there is no architecture to rebuild it from in a fresh process (load_pruned). Fix, one of: "
        f"{decorate}; build it in build_network() of an SSSModule subclass defined in an importable module; or "
        'register its builder with @register_model("name") and build it with build_model("name", ...)'
    )


def record_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be rebuilt in a fresh process from its construction record, with the fix to
    apply; ``None`` when it can. Cheap (imports, no build): callbacks call it when they are set up."""
    record = getattr(model, _RECORD, None)
    if record is None:
        return getattr(model, _PROBLEM, None) or _no_record(model)
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        return f"{type(model).__name__}.{_RECORD} must be {{'name': str, 'kwargs': dict}}, got {record!r}"
    bad = _not_plain(record.get("kwargs"), "kwargs")
    if bad is not None:
        where, value = bad
        return (
            f"the construction record of {type(model).__name__} ({record['name']}) holds {where} = {value!r}, "
            f"a {type(value).__name__}, which a pickle-free file cannot store. Fix: pass plain data "
            "(str, int, float, bool, None, lists and dicts of them) to the constructor, e.g. a layer's name "
            "instead of the layer, and build the object inside it"
        )
    for rec in _nested_records(record):
        name = rec["name"]
        if ":" not in name:
            if name not in _REGISTRY:
                return f"the construction record of {type(model).__name__} names an unknown model {name!r}"
            builder_module = _REGISTRY[name].__module__
            if builder_module == "__main__":
                return (
                    f"model {name!r} is registered from __main__ (the script being run), which a fresh process "
                    f"cannot import. Fix: move its @register_model builder into a module and import it from there"
                )
            continue
        module, _, qualname = name.partition(":")
        short = qualname.rpartition(".")[2]
        if module in ("__main__", "builtins", "__mp_main__"):
            return (
                f"{short} is defined in {module} (the script or notebook being run), so a fresh process cannot "
                f"import it to rebuild the network. Fix: move {short} into a module (e.g. my_models.py next to "
                "the script) and import it from there"
            )
        if "<locals>" in qualname:
            return (
                f"{short} is defined inside a function ({name}), so a fresh process cannot import it to rebuild "
                f"the network. Fix: define {short} at the top level of an importable module"
            )
        try:
            resolve_import_path(name)
        except (ImportError, AttributeError) as err:
            return f"{name} (the builder of {type(model).__name__}) cannot be imported: {err}"
    return None


def _record_call(self: nn.Module, cls: type, signature: inspect.Signature, args: tuple, kwargs: dict) -> None:
    """Set ``self``'s construction record (or, when it cannot have one, why) after ``cls.__init__`` ran."""
    bound = signature.bind(self, *args, **kwargs)
    arguments: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:  # [0] is self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                setattr(
                    self,
                    _PROBLEM,
                    f"{cls.__name__} was built with positional *{name} arguments {value!r}, which "
                    f"@rebuildable cannot record by name. Fix: give {cls.__name__}.__init__ named parameters",
                )
                return
        elif kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    bad = next((b for name, value in arguments.items() if (b := _not_plain(value, name))), None)
    if bad is not None:
        where, value = bad
        setattr(
            self,
            _PROBLEM,
            f"{cls.__name__} was built with argument {where} = {value!r}, a {type(value).__name__}, "
            "which a pickle-free file cannot record. Fix: pass plain data (str, int, float, bool, None, lists "
            "and dicts of them), e.g. a layer's name instead of the layer, and build the object in __init__",
        )
        return
    setattr(self, _RECORD, {"name": import_path(cls), "kwargs": arguments})


def rebuildable(cls: M) -> M:
    """Class decorator: every instance records its import path and constructor arguments
    (``instance.sss_arch``), so its pruned form can be saved and reloaded in a fresh process.

    The class must live at the top level of an importable module and be called with plain-data
    arguments; otherwise nothing fails at construction, and the callbacks that save files say what to
    change when they are set up. A subclass records itself only when it is decorated too.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"@rebuildable decorates nn.Module classes, got {cls!r}")
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:  # a parent's decorated __init__ leaves the record to the class being built
            _record_call(self, cls, signature, args, kwargs)

    cls.__init__ = __init__
    return cls
