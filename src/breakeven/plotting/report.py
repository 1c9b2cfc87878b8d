"""One self-contained HTML report of runs and sweeps (``breakeven report``): the configs, the
conjecture verdicts, the break-even points, every figure the records allow (PNG embedded as
base64, so the file opens offline and can be mailed), and what was not measured and why."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._core.formatting import package_version
from ..analysis import (
    BREAK_EVEN_NOTE,
    DEFAULT_THRESHOLDS,
    VERDICTS,
    Runs,
    break_even_points,
    verdicts,
)
from ..records import atomic_write
from ._data import RunsLike, as_runs, has_key
from ._progress import listening
from .api import FIGURES, available_figures
from .captions import caption
from .embedding import FIG1_UNTIL_ACCURACY

__all__ = ["report"]

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
h1, h2, p, ul, figcaption { max-width: 75em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
.supported { background: #d9f2d9; } .contradicted { background: #f7d4d4; }
.inconclusive { background: #f5f0d0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; box-sizing: border-box; border: 1px solid #eee;
  cursor: zoom-in; }
figure.zoom { position: fixed; inset: 0; margin: 0; padding: 1em; overflow: auto; z-index: 1;
  background: #fff; cursor: zoom-out; }
figure.zoom img { max-width: none; cursor: zoom-out; }
figcaption { font-size: 0.9em; color: #555; } .note { color: #555; font-size: 0.9em; }
"""

#: Click a figure to see it at its full size (click again, or Esc, to close).
SCRIPT = """
document.addEventListener('click', e => {
  const f = e.target.closest('figure');
  if (f && (e.target.tagName === 'IMG' || f.classList.contains('zoom'))) f.classList.toggle('zoom');
});
document.addEventListener('keydown', e => {
  if (e.key !== 'Escape') return;
  document.querySelectorAll('figure.zoom').forEach(f => f.classList.remove('zoom'));
});
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        text = "-" if v != v else f"{v:.4g}"
        return f"<td>{text}</td>"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"<td>{v}</td>"
    cls = f' class="text {v}"' if v in VERDICTS else ' class="text"'
    return f"<td{cls}>{html.escape('-' if v is None else str(v))}</td>"


def _table(df: Any) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False)
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="scroll">{table}</div>'  # a wide table scrolls, not the page


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def figure_options(kind: str, runs: Runs, thresholds: Sequence[float]) -> dict[str, Any]:
    """The options the report draws the figure ``kind`` with: the report's accuracy
    thresholds for the trajectories; for the embedding, each run's steps up to 65% training
    accuracy (:data:`FIG1_UNTIL_ACCURACY`, as the paper's Fig. 1) when ``train_acc`` was
    recorded (by the evaluation or the ``train_accuracy`` measure)."""
    if kind == "trajectories":
        return {"thresholds": list(thresholds)}
    if kind == "embedding" and has_key(runs, None, "train_acc"):
        return {"until_accuracy": FIG1_UNTIL_ACCURACY}
    return {}


def _bar(total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="figure",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if progress is None else not progress,
    )


def report(
    paths: RunsLike,
    out: str | os.PathLike,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    title: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Write the HTML report of run and sweep directories (or a :class:`~breakeven.analysis.Runs`)
    to ``out`` (atomically, never through a symbolic link: see
    :func:`breakeven.records.atomic_write`) and return its path. Figures that the records do
    not allow are listed with the reason and the setting that would measure them; a figure
    that fails to draw is listed with its error instead of stopping the report.

    ``progress``: a tqdm bar on stderr over the figures drawn, naming the figure being drawn
    and what a long step inside it is doing (``embedding: UMAP on N points``); ``None``
    (default): shown when stderr is a terminal, ``True``: always, ``False``: never. The
    embedding reuses the coordinates kept in the first directory read when its records are
    unchanged (:func:`~breakeven.plotting.embed_predictions`)."""
    runs = as_runs(paths)
    names = ", ".join(sorted({str(s.get("preset")) for s in runs.sweeps})) or ", ".join(
        runs.table["run"]
    )
    title = title or f"breakeven report: {names}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(runs.table)} run(s); breakeven {package_version()}; written '
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
    ]
    parts.append("<h2>Configuration</h2>")
    for spec in runs.sweeps:
        grid = "; ".join(f"{k} = {v}" for k, v in spec.get("grid", {}).items())
        parts.append(
            f"<p>Sweep of preset <b>{html.escape(str(spec.get('preset')))}</b> at scale "
            f"<b>{html.escape(str(spec.get('scale')))}</b>: {html.escape(grid)}; seeds "
            f"{html.escape(str(spec.get('seeds')))}.</p>"
        )
        for note in spec.get("notes", []):
            parts.append(f'<p class="note">{html.escape(note)}</p>')
    parts.append(_table(runs.table.drop(columns=["path"])))

    table = verdicts(runs)
    parts.append("<h2>Conjecture verdicts</h2>")
    if table.empty:
        parts.append(
            "<p>No verdict: these runs vary no key with a predicted direction "
            "(learning rate, batch size, momentum).</p>"
        )
    else:
        parts.append(_table(table.drop(columns=["rule", "left_out"])))
        parts.append(f'<p class="note">Rule: {html.escape(table["rule"].iloc[0])}.</p>')
        if table["left_out"].iloc[0]:
            parts.append(f'<p class="note">Left out: {html.escape(table["left_out"].iloc[0])}.</p>')

    parts.append("<h2>Break-even points</h2>")
    parts.append(
        '<p class="note">Steps; the training accuracy there is interpolated between '
        f"evaluations. {html.escape(BREAK_EVEN_NOTE)}.</p>"
    )
    parts.append(_table(break_even_points(runs, thresholds)))

    parts.append("<h2>Figures</h2>")
    parts.append(
        '<p class="note">Each figure takes the page width; click it to see it at full size '
        "(click again or press Esc to close).</p>"
    )
    available = available_figures(runs)
    missing = [(kind, reason) for kind, reason in available.items() if reason]
    drawn = [kind for kind, reason in available.items() if not reason]
    with _bar(len(drawn), progress) as bar, listening(bar.set_postfix_str):
        for kind in drawn:
            bar.set_description_str(kind, refresh=False)
            bar.set_postfix_str("")
            try:
                options = figure_options(kind, runs, thresholds)
                fig = FIGURES[kind](runs, **options)
                text = html.escape(caption(kind, fig, runs, options))
                data = _png(fig)
            except Exception as e:  # one broken figure must not lose the report
                missing.append((kind, f"could not be drawn: {type(e).__name__}: {e}"))
                continue
            finally:
                bar.update(1)
            parts.append(
                f'<figure id="fig-{kind}"><img alt="{kind}" src="data:image/png;base64,{data}" '
                'title="click to enlarge">'
                f"<figcaption><b>{kind}</b>: {text}</figcaption></figure>"
            )
    if missing:
        missing.sort(key=lambda item: list(available).index(item[0]))  # in figure order
        parts.append("<h2>Not measured</h2><ul>")
        parts.extend(f"<li><b>{kind}</b>: {html.escape(reason)}</li>" for kind, reason in missing)
        parts.append("</ul>")
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: f.write(page.encode("utf-8")))
