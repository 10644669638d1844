"""How every benchmark script hands over its results: the table printed, and written as .md plus .json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out: str | Path, table: str, result: Any) -> Path:
    """Print ``table``; write it to ``<out>.md`` and ``result`` to ``<out>.json``; return ``out`` as a Path."""
    print(table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return out
