"""AReAM weakly supervised semantic segmentation: the importable library behind the DVC stages."""

__version__ = "0.1.0"
