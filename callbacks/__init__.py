"""Lightning callbacks of sss-lightning (installed as ``sss_lightning.callbacks``)."""

from .summary import FitSummary

__all__ = ["FitSummary"]
