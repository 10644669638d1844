"""Model registry: ``@register_model`` builders and ``build_model(name, **kwargs)``, as torchvision's.

``build_model("resnet56", num_classes=10)`` builds a registered network and records the name and keyword
arguments on it (``model.sss_arch``), so its pruned form can be saved as an architecture spec plus a state
dict and rebuilt without pickling. Importing :mod:`sss_lightning.models` registers every built-in builder.

The registry and the construction records it writes know no architecture, so they live in
:mod:`sss_lightning.records`, where pruned-file loading reaches them; every name is importable from here
as well (:func:`rebuildable`, :func:`import_path`, :func:`resolve_import_path`, :func:`build_from_record`,
:func:`record_problem`).
"""

from __future__ import annotations

from ..records import (  # noqa: F401  (the private store and allow-list too, for code that reached them here)
    _INPUT_SIZES,
    _REGISTRY,
    __all__,  # the same public names
    _may_build,
    build_from_record,
    build_model,
    default_input_size,
    import_path,
    list_models,
    rebuildable,
    record_problem,
    register_model,
    resolve_import_path,
)
