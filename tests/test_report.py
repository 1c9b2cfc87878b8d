"""The HTML report: its tables equal the analysis, its images are the figures of the records,
it says what was not measured, and it renders in headless Chromium with every image loaded."""

import base64
import html
import io
import re
import shutil
import subprocess

import numpy as np
import pytest

from breakeven.analysis import BREAK_EVEN_NOTE, break_even_points, read_runs, verdicts
from breakeven.cli import main
from breakeven.plotting import FIGURES, api, available_figures
from breakeven.plotting.captions import caption
from breakeven.plotting.report import report
from test_plotting import ALL, cache_files, count_fits, known_run, known_sweep

# no UMAP here: it is slow to start; no Adam measure (an SGD sweep: tests/test_adam.py has it)
MEASURES = tuple(m for m in ALL if m not in ("predictions", "preconditioned_sharpness"))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    known_sweep(root, measures=MEASURES)
    out = report(root, root / "report.html", thresholds=(0.5, 0.65))
    return root, out.read_text()


def images(page):
    return dict(
        re.findall(
            r'<figure id="fig-([\w-]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page
        )
    )


def test_tables_are_the_analysis(made):
    root, page = made
    runs = read_runs(root)
    table = verdicts(runs)
    assert len(table) == 4
    for row in table.itertuples():
        assert html.escape(row.max_after_0) in page and html.escape(row.prediction) in page
        assert f'class="text {row.verdict}">{row.verdict}<' in page
    assert html.escape(table["rule"].iloc[0]) in page
    points = break_even_points(runs, (0.5, 0.65))
    for run, step in zip(points["run"], points["max_lambda_K_1_after_0_step"], strict=True):
        assert f'<td class="text">{run}</td>' in page
        assert f"<td>{step:.4g}</td>" in page
    assert "Sweep of preset <b>p</b>" in page


def test_every_possible_figure_is_embedded_and_equals_the_figure_of_the_records(made):
    import matplotlib.pyplot as plt

    root, page = made
    runs = read_runs(root)
    reasons = available_figures(runs)
    found = images(page)
    assert set(found) == {k for k, r in reasons.items() if not r}
    assert {"trajectories", "stability", "spectra", "m1-vs-m128"} <= set(found)
    for kind, data in found.items():
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        options = {"thresholds": [0.5, 0.65]} if kind == "trajectories" else {}
        fig = FIGURES[kind](runs, **options)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        assert buf.getvalue() == png, kind  # the figures' data are checked in test_plotting


def test_what_was_not_measured_is_said_with_the_reason(made):
    root, page = made
    reason = available_figures(read_runs(root))["embedding"]
    assert reason and "<h2>Not measured</h2>" in page
    assert f"<li><b>embedding</b>: {html.escape(reason)}</li>" in page


def test_cli_report_default_path(made, tmp_path, capsys):
    root, _ = made
    out = tmp_path / "r.html"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow  # multi-process or browser: make test-slow (CI runs it)
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make test installs it)")
def test_renders_in_headless_chromium_with_every_image_loaded(made, tmp_path):
    from PIL import Image

    root, page = made
    n = len(images(page))
    check = (
        "<script>window.addEventListener('load', () => { const i = [...document.images];"
        " const ok = i.filter(x => x.complete && x.naturalWidth > 0).length;"
        " document.body.insertAdjacentHTML('beforeend',"
        ' `<div id="loaded">${ok}/${i.length}</div>`); });</script>'
    )
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", check + "</body>"))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=10000"]
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert f'<div id="loaded">{n}/{n}</div>' in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            *flags,
            "--window-size=1280,3000",
            f"--screenshot={shot}",
            (root / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (3000, 1280)
    assert img.std() > 10  # text, tables and plots, not a blank page
    assert (img < 100).mean() > 0.005  # dark pixels: text and plotted lines


LAYOUT_PROBE = """<script>window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const scrolled = el => el.parentElement && el.parentElement.closest('.scroll');
  const over = [...document.body.querySelectorAll('*')]
    .filter(el => !scrolled(el) && el.getBoundingClientRect().right > width + 0.5)
    .map(el => `${el.tagName}.${el.className}`);
  const wide = [...document.querySelectorAll('.scroll')]
    .filter(el => el.scrollWidth > el.clientWidth).length;
  const img = document.querySelector('#fig-trajectories img');
  const fitted = img.getBoundingClientRect().width;
  const column = img.closest('figure').getBoundingClientRect().width;
  img.click();
  const zoomed = img.closest('figure').classList.contains('zoom');
  const full = img.getBoundingClientRect().width;
  const report = {width, scrollWidth: document.documentElement.scrollWidth, over, wide,
    fitted, column, natural: img.naturalWidth, zoomed, full};
  document.body.insertAdjacentHTML('beforeend',
    `<pre id="layout">${JSON.stringify(report)}</pre>`);
});</script>"""


@pytest.mark.slow  # browser: make test-slow (CI runs it)
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make test installs it)")
def test_nothing_overflows_a_1280_px_window_and_figures_open_full_size(made, tmp_path):
    import json

    _, page = made
    probe = tmp_path / "layout.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--virtual-time-budget=10000", "--window-size=1280,2000"]
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    found = re.findall(r'<pre id="layout">(\{.*?)</pre>', dom)  # not the probe's own text
    assert found, dom[-2000:]
    layout = json.loads(html.unescape(found[-1]))
    assert layout["width"] == 1280
    assert layout["scrollWidth"] <= 1280 and layout["over"] == [], layout
    assert layout["wide"] >= 1  # the break-even table is wider than the page: it scrolls
    # the four-panel figure takes the page width, and a click shows it at its full size
    assert layout["natural"] > layout["column"] > 1100
    assert abs(layout["fitted"] - layout["column"]) <= 1
    assert layout["zoomed"] and 0 <= layout["full"] - layout["natural"] <= 2  # + its border


def test_tables_scroll_and_figures_enlarge_on_a_click(made):
    _, page = made
    tables = page.count("<table>")
    assert tables >= 3 and page.count('<div class="scroll"><table>') == tables
    assert ".scroll { overflow-x: auto;" in page and "figure.zoom img { max-width: none;" in page
    assert "classList.toggle('zoom')" in page.split("<script>")[-1]
    assert page.count('title="click to enlarge"') == len(images(page))


def _html_table(page, heading):
    """The header and rows (cell texts) of the first table after ``<h2>heading</h2>``."""
    part = page.split(f"<h2>{heading}</h2>", 1)[1].split("</table>", 1)[0]
    rows = [
        re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in re.findall(r"<tr>(.*?)</tr>", part)
    ]
    return rows[0], rows[1:]


def test_tables_name_the_maxima_convention_and_the_break_even_crossing(made):
    root, page = made
    runs = read_runs(root)
    points = break_even_points(runs, (0.5, 0.65))
    header, rows = _html_table(page, "Break-even points")
    assert header == list(points.columns)
    for column in ("unstable_at_init", "first_stable_step", "break_even_after_step"):
        assert column in header
    assert "max_lambda_K_1_after_0" in header and "max_lambda_H_1_after_0_step" in header
    for row, want in zip(rows, points.itertuples(index=False), strict=True):
        for cell, value in zip(row, want, strict=True):  # every cell is the analysis'
            if isinstance(value, float):
                assert cell == ("-" if value != value else f"{value:.4g}")
            else:
                assert cell == html.escape("-" if value is None else str(value))
    assert html.escape(BREAK_EVEN_NOTE) in page
    assert "include the initial point" not in page
    header, rows = _html_table(page, "Conjecture verdicts")
    for column in ("max_after_0", "pairs", "ties", "ties_within_noise", "at_end", "verdict"):
        assert column in header
    assert len(rows) == len(verdicts(runs))


def captions(page):
    return dict(re.findall(r"<figcaption><b>([\w-]+)</b>: ([^<]*)</figcaption>", page))


def test_captions_state_what_the_figures_draw(made):
    _, page = made
    found = captions(page)
    assert set(found) == set(images(page))
    # 10 records a run: a window of 5 needs 15, so nothing is smoothed
    assert "unsmoothed: no series has the 15 records" in found["trajectories"]
    assert "moving average" not in found["trajectories"].replace("a moving average over", "")
    assert "first evaluation with training accuracy ≥ 0.5, 0.65" in found["trajectories"]
    assert "no run reached 1: no break-even point" in found["stability"]  # stays at 0.5
    assert "star" not in found["stability"]
    assert (
        html.escape("The eigenvalues of K by rank and the SLQ spectral density of H")
        in (found["spectra"])
    )
    assert "M = 1 against M = 64" in found["m1-vs-m128"]
    assert "(2 + 2 beta)/eta" in found["edge-of-stability"]  # momentum not in the configs


def test_captions_of_records_without_h_or_a_break_even_point(tmp_path):
    known_run(tmp_path / "k", measures=("evaluation", "covariance"))
    runs = read_runs(tmp_path / "k")
    fig = FIGURES["spectra"](runs)
    text = caption("spectra", fig, runs)
    assert text.startswith("The eigenvalues of K by rank,") and " H" not in text
    known_run(tmp_path / "h", measures=("hessian",))
    runs = read_runs(tmp_path / "h")
    text = caption("spectra", FIGURES["spectra"](runs), runs)
    assert text.startswith("The top eigenvalues of H") and " K" not in text
    # stability reached by one run of two; trajectories smoothed; thresholds never reached
    known_run(tmp_path / "s", stability=[0.5, 1.2] + [0.8] * 8)
    known_run(tmp_path / "n", stability=[0.5] * 10, acc=[0.1] * 10)
    runs = read_runs([tmp_path / "s", tmp_path / "n"])
    text = caption("stability", FIGURES["stability"](runs), runs)
    assert "break-even point (as in the table above) of 1 of 2 runs" in text
    options = {"smooth": 3, "thresholds": [0.65, 0.99]}
    text = caption("trajectories", FIGURES["trajectories"](runs, **options), runs, options)
    assert "bold: the centred moving average over 3 records of each series of at least 9" in text
    assert "shorter series: their recorded values alone, with markers" in text  # lambda_H_1
    assert "training accuracy ≥ 0.65" in text and "no run reached training accuracy 0.99" in text
    runs = read_runs(tmp_path / "k")
    text = caption("trajectories", FIGURES["trajectories"](runs, smooth=1), runs, {"smooth": 1})
    assert "the recorded values, unsmoothed" in text
    known_run(tmp_path / "noacc", measures=("covariance",))
    runs = read_runs(tmp_path / "noacc")
    assert "no training accuracy recorded" in caption(
        "trajectories", FIGURES["trajectories"](runs), runs
    )


def test_report_embeds_fig1_until_65_percent_training_accuracy(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    calls = []

    def fake_embedding(runs, color="lambda_K_1", **options):  # UMAP is slow; the figure's
        calls.append(options)  # cut-off is tested in test_plotting
        return Figure(figsize=(1, 1))

    monkeypatch.setitem(FIGURES, "embedding", fake_embedding)
    monkeypatch.setitem(api._CHECKS, "embedding", lambda runs: None)
    known_sweep(tmp_path / "acc", lrs=(0.1,), seeds=(0,), measures=("evaluation", "covariance"))
    known_run(tmp_path / "slow", acc=[0.1] * 10, measures=("evaluation", "covariance"))
    page = report([tmp_path / "acc", tmp_path / "slow"], tmp_path / "a.html").read_text()
    assert calls == [{"until_accuracy": 0.65}]
    text = captions(page)["embedding"]
    assert "steps up to its first evaluation with training accuracy ≥ 0.65" in text
    assert "1 of 2 runs never reached it: all their steps" in text
    known_run(tmp_path / "noacc", measures=("covariance",))
    page = report(tmp_path / "noacc", tmp_path / "n.html").read_text()
    assert calls[-1] == {}
    text = captions(page)["embedding"]
    assert "every step with recorded predictions (no training accuracy recorded" in text


def test_report_progress_names_each_figure_and_the_umap_step(tmp_path, monkeypatch, capsys):
    fits = count_fits(monkeypatch, fake=True)
    known_sweep(tmp_path, lrs=(0.1, 0.01), seeds=(0,), measures=("evaluation", "covariance"))
    known_run(tmp_path / "p", measures=("evaluation", "covariance", "predictions"))
    paths = [tmp_path, tmp_path / "p"]
    drawn = [kind for kind, reason in available_figures(read_runs(paths)).items() if not reason]
    assert drawn == ["trajectories", "spectra", "embedding"]
    # Fig. 1: each run until step 50; the second report reuses the first one's embedding
    for step in ("embedding: UMAP on 3 points", "embedding: reusing the cached UMAP of 3 points"):
        with pytest.warns(UserWarning, match="n_neighbors lowered"):
            page = report(paths, tmp_path / "r.html", progress=True).read_text()
        err = capsys.readouterr().err
        assert set(images(page)) == set(drawn) and fits == [3]
        for kind in drawn:
            assert f"{kind}:" in err
        assert f"{len(drawn)}/{len(drawn)}" in err and "figure" in err and step in err
    assert len(cache_files(tmp_path)) == 1  # in the first directory read
    for progress in (False, None):  # None: only on a terminal (pytest's stderr is not)
        with pytest.warns(UserWarning):
            report(paths, tmp_path / "r.html", progress=progress)
        assert capsys.readouterr().err == ""


def _report_cli(args, terminal):
    """``breakeven report ARGS`` through the real command line, its stderr a terminal (a
    pseudo-terminal 100 columns wide) or a pipe: (exit code, stdout, stderr)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios

    cmd = [sys.executable, "-m", "breakeven.cli", "report", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not terminal:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    err = b""
    while True:
        if not select.select([master], [], [], 120)[0]:  # a hung report must not hang the test
            proc.kill()
            pytest.fail(f"breakeven report wrote nothing for 120 s; so far: {err!r}")
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=120), out.decode(), err.decode(errors="replace")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    known_sweep(root, lrs=(0.1,), seeds=(0,), measures=("evaluation", "covariance"))
    return root


@pytest.mark.parametrize(
    "terminal, flag, shown",
    [
        (True, None, True),
        (False, None, False),
        (False, "--progress", True),
        (True, "--no-progress", False),
    ],
)
def test_cli_report_shows_its_bar_on_a_terminal_or_when_asked(
    small, tmp_path, terminal, flag, shown
):
    out = tmp_path / "r.html"
    rc, stdout, stderr = _report_cli(
        [str(small), "--out", str(out), *([flag] if flag else [])], terminal
    )
    assert rc == 0 and stdout.strip() == str(out) and out.exists(), stderr
    if shown:  # trajectories and spectra
        assert "trajectories:" in stderr and "spectra:" in stderr and "2/2" in stderr
    else:
        assert stderr == ""
