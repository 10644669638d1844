"""State keys that carry a callback's arguments, and the key its checkpoints had before they did."""

from __future__ import annotations


class ClassNamedLegacyKey:
    """Mixin (put it before ``Callback``): checkpoints written when the callback's state key was its bare
    class name still restore its state, through Lightning's ``_legacy_state_key`` fallback."""

    @property
    def _legacy_state_key(self) -> str:
        return type(self).__qualname__
