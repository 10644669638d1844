"""Lightning callbacks of sss-lightning (installed as ``sss_lightning.callbacks``)."""

from .budget import MacsBudget
from .freeze import FreezeGates
from .gate_monitor import GateMonitor
from .magnitude import MagnitudePruning
from .shrink import InTrainingShrink
from .snapshot import PruningSnapshot
from .summary import FitSummary
from .surgery import StructuralSurgery

__all__ = [
    "FitSummary",
    "FreezeGates",
    "GateMonitor",
    "InTrainingShrink",
    "MacsBudget",
    "MagnitudePruning",
    "PruningSnapshot",
    "StructuralSurgery",
]
