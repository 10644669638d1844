"""sss-lightning: Sparse Structure Selection (Huang & Wang, ECCV 2018) for PyTorch Lightning."""

from .flops import count_flops
from .gates import BlockGate, ChannelGate, Gate, GroupGate, StreamGate, gate_parameters, iter_gates, sparsity
from .io import load_pruned, save_pruned
from .models import add_gates, build_model, list_models, rebuildable, register_model
from .module import SSSClassifier, SSSModule
from .optim import APG
from .streams import Stream, check_streams
from .surgery import prune

__version__ = "0.1.0"

__all__ = [
    "APG",
    "add_gates",
    "BlockGate",
    "ChannelGate",
    "Gate",
    "GroupGate",
    "SSSClassifier",
    "SSSModule",
    "Stream",
    "StreamGate",
    "check_streams",
    "build_model",
    "count_flops",
    "load_pruned",
    "prune",
    "rebuildable",
    "save_pruned",
    "gate_parameters",
    "iter_gates",
    "list_models",
    "register_model",
    "sparsity",
]
