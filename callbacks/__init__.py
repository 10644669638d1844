"""Lightning callbacks of sss-lightning (installed as ``sss_lightning.callbacks``)."""

from .summary import FitSummary
from .surgery import StructuralSurgery

__all__ = ["FitSummary", "StructuralSurgery"]
