"""Figures of the break-even point from records (paper Figs. 1-5, 7, 9-26, and Eq. 1's
stability): matplotlib figures of run and sweep directories, never a model or torch.

Each ``plot_*`` function takes a :class:`breakeven.analysis.Runs` or run/sweep directories
and returns a :class:`matplotlib.figure.Figure`; :func:`plot` writes a figure kind to a
PNG/PDF/SVG file (``breakeven plot``), :func:`available_figures` says which kinds the
records allow and why not the others, :func:`caption` describes a drawn figure from what
it holds, and :func:`report` writes one self-contained HTML page of them all
(``breakeven report``). The embedding needs umap-learn
(``pip install 'breakeven[plot]'``).
"""

try:
    import matplotlib  # noqa: F401
except ImportError as e:  # pragma: no cover - matplotlib is an optional dependency
    raise ImportError("breakeven.plotting needs matplotlib: pip install 'breakeven[plot]'") from e

from .api import FIGURES, FORMATS, available_figures, plot
from .captions import caption
from .embedding import embed_predictions, exact_knn, plot_embedding
from .figures import (
    DEFAULT_KEYS,
    label_of,
    plot_adaptive_edge_of_stability,
    plot_batchnorm,
    plot_edge_of_stability,
    plot_hessian_vs_covariance,
    plot_loss_change_vs_covariance,
    plot_m1_vs_m128,
    plot_spectra,
    plot_stability,
    plot_trajectories,
    plot_trajectory,
    spectral_density,
)
from .report import report

__all__ = [
    "DEFAULT_KEYS",
    "FIGURES",
    "FORMATS",
    "available_figures",
    "caption",
    "embed_predictions",
    "exact_knn",
    "label_of",
    "plot",
    "plot_adaptive_edge_of_stability",
    "plot_batchnorm",
    "plot_edge_of_stability",
    "plot_embedding",
    "plot_hessian_vs_covariance",
    "plot_loss_change_vs_covariance",
    "plot_m1_vs_m128",
    "plot_spectra",
    "plot_stability",
    "plot_trajectories",
    "plot_trajectory",
    "report",
    "spectral_density",
]
