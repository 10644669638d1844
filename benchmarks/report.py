"""How every benchmark script hands over its results: the table printed, and written as .md plus .json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def png_figure(path: str | Path, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.4)) -> Iterator[Any]:
    """The axes of a new figure (one, or an array of ``ncols`` to unpack), drawn without a display and saved as the PNG
    ``path`` (120 dpi) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
