"""Numbers from a matrix: pure functions of a dense tensor or a linear operator."""

from .lanczos import LanczosResult, SpectralDensity, lanczos, slq
from .trace import TraceResult, hutchinson

__all__ = ["LanczosResult", "SpectralDensity", "TraceResult", "hutchinson", "lanczos", "slq"]
