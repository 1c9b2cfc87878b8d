"""Reading a run directory; no torch, so that ``analysis`` and ``plotting`` can use it.

The layout of a run directory and the format of a record are described in
:mod:`breakeven.tracking.store`, which writes them. :func:`load_run` returns the records as
a tidy pandas DataFrame; :func:`export_run` writes it to TensorBoard event files (needs the
``tensorboard`` package), Parquet (needs pyarrow) or CSV, and :func:`write_records` writes any
such table (e.g. a sweep's, from :func:`breakeven.analysis.read_runs`).

:data:`KEYS` is the one catalogue of record keys: which measures emit each key, its label, and
its legacy names (:func:`load_run` reads ``val_accuracy`` as ``val_acc``, ``probe_accuracy``
as ``probe_acc``). :func:`slq_density` is the one Gaussian broadening of an SLQ quadrature
(the ``hessian_density`` records, and :meth:`breakeven.spectra.SpectralDensity.density`).

Every reader here (:func:`read_records`, :func:`read_config`, :func:`read_summary`,
:func:`read_status`, :func:`read_sweep_spec`, :func:`load_run`) raises
:class:`RunFileError` naming the file (and the line of ``records.jsonl``) when a file is not
a regular file (a FIFO or a device is refused without blocking), not UTF-8, not JSON, or JSON
of the wrong shape; a missing run directory is a ``FileNotFoundError``.

Every file the tool writes goes through the helpers of the section "safe files": paths made
with :func:`inside` (one plain name per part, no symbolic link on the way), files opened with
:func:`open_for_writing` (never through a symbolic link) and replaced with
:func:`atomic_write`, JSON written with :func:`to_json` (strict JSON: no bare ``NaN``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

__all__ = [
    "COLUMNS",
    "EVAL_MEASURE",
    "EXPORT_FORMATS",
    "KEYS",
    "LEGACY_KEYS",
    "MAX_NAME_BYTES",
    "SLQ_SIGMA2",
    "SWEEP_FILE",
    "KeyInfo",
    "RunFileError",
    "RunStoreError",
    "UnsafePathError",
    "atomic_write",
    "canonical_key",
    "decode_array",
    "default_export_path",
    "export_run",
    "inside",
    "key_info",
    "key_label",
    "key_symbol",
    "load_run",
    "name_problem",
    "open_for_reading",
    "open_for_writing",
    "preferred_measure",
    "read_config",
    "read_records",
    "read_status",
    "read_summary",
    "read_sweep_spec",
    "short_key",
    "slq_density",
    "to_json",
    "write_records",
]

CONFIG, RECORDS, STATUS, CHECKPOINT, SUMMARY, MODEL = (
    "config.json",
    "records.jsonl",
    "status",
    "checkpoint.pt",
    "summary.json",
    "model.pt",
)
SWEEP_FILE = "sweep.json"  # a sweep directory's plan (see breakeven.experiments.sweep)
EVAL_MEASURE = "evaluation"  # the measure name of the training loop's evaluation records
COLUMNS = ["run", "step", "epoch", "measure", "key", "value", "seconds", "matvecs"]


def short_key(key: str) -> str:
    """The name of a dotted config key in run names and tables: its last part
    (``train.lr`` -> ``lr``)."""
    return key.rsplit(".", 1)[-1]


# ------------------------------------------------------------------ record keys


class KeyInfo(NamedTuple):
    """What one record key (or ``fnmatch`` pattern of keys) means.

    ``measures``: the registered measures that emit it (``evaluation``: the training loop's
    evaluation records, :data:`EVAL_MEASURE`), in the order a bare key is read from them
    when several recorded it (:func:`preferred_measure`). ``label``: its axis label
    (matplotlib mathtext; for a pattern, ``{}`` stands for the part the ``*`` matched); None:
    the key itself. ``symbol``: its name in plain text, for tables and printed rows
    (``lambda_K^1``, ``Tr(K)``); None: the key itself. ``legacy``: older names of the key,
    read as this key by :func:`load_run`."""

    measures: tuple[str, ...]
    label: str | None = None
    symbol: str | None = None
    legacy: tuple[str, ...] = ()


def _k(
    *measures: str, label: str | None = None, symbol: str | None = None, legacy: tuple = ()
) -> KeyInfo:
    return KeyInfo(measures, label, symbol, legacy)


_COV, _H, _ST, _EOS, _SHARP = "covariance", "hessian", "stability", "edge_of_stability", "sharpness"
_EVAL, _TRAIN, _VAL = EVAL_MEASURE, "train_accuracy", "validation"
_PSH, _PK = "preconditioned_sharpness", "preconditioned_covariance"

#: The one catalogue of record keys: ``{key or fnmatch pattern: KeyInfo}`` for every key a
#: built-in measure (``breakeven.MEASURES``) or the training loop's evaluation emits; an exact
#: key is looked up before the patterns (:func:`key_info`). Data only (no torch): the
#: readers, figures, tables and the command line use it; a test checks it against every
#: measure's declared keys.
KEYS: dict[str, KeyInfo] = {
    # covariance: the spectrum of K
    "lambda_K_1": _k(_COV, label=r"$\lambda_K^1$", symbol="lambda_K^1"),
    "lambda_K_star": _k(_COV, label=r"$\lambda_K^*$", symbol="lambda_K^*"),
    "condition_K": _k(_COV, label=r"$\lambda_K^*/\lambda_K^1$", symbol="lambda_K^*/lambda_K^1"),
    "trace_K": _k(_COV, label=r"$\mathrm{Tr}(\mathbf{K})$", symbol="Tr(K)"),
    "per_example_lambda_K_1": _k(_COV, label=r"$M\,\lambda_K^1$"),
    "per_example_trace_K": _k(_COV, label=r"$M\,\mathrm{Tr}(\mathbf{K})$"),
    "rank_K": _k(_COV),
    "resolution_K": _k(_COV),
    "M": _k(_COV),
    "L": _k(_COV),
    "eig_K_*": _k(_COV),  # with spectrum = true
    # alignment, noise_scale
    "alignment": _k("alignment", label=r"$\|g\|/\|g_5\|$"),
    "k": _k("alignment"),
    "noise_scale": _k("noise_scale", label=r"$B_\mathrm{simple}$"),
    "trace_sigma": _k("noise_scale"),
    "grad_norm_sq": _k("noise_scale"),
    # H: top eigenvalues, trace, density, stability
    "lambda_H_1": _k(_H, _ST, _EOS, label=r"$\lambda_H^1$", symbol="lambda_H^1"),
    "lambda_H_*": _k(_H, label=r"$\lambda_H^{{{}}}$"),
    "residual_H_1": _k(_H, _ST),
    "residual_H_*": _k(_H),
    "converged": _k(_H),
    "trace_H": _k("hessian_trace", label=r"$\mathrm{Tr}(\mathbf{H})$", symbol="Tr(H)"),
    "trace_H_stderr": _k("hessian_trace"),
    "node_*": _k("hessian_density"),
    "weight_*": _k("hessian_density"),
    "stability": _k(_ST, label=r"$(1-\eta\lambda_H^1)^2 + s^2\eta^2 (N-S)/(S(N-1))$"),
    "break_even": _k(_ST, label="break-even reached"),
    "s2": _k(_ST, label=r"$s^2$"),
    "eos_ratio": _k(_EOS, _SHARP, label=r"$\lambda_H^1 / (2/\eta)$"),
    "eos_threshold": _k(_EOS, _SHARP, label=r"$2/\eta$"),
    "sharpness": _k(_SHARP, label=r"$\lambda_H^1$ (tracked every step)"),
    "sharpness_residual": _k(_SHARP),
    "sharpness_upper": _k(_SHARP),
    "sharpness_fallback": _k(_SHARP),
    # loss and accuracy
    "delta_loss": _k("loss_change", label=r"$\Delta\mathcal{L}$"),
    "loss_before": _k("loss_change", label=r"$\mathcal{L}$ before the step"),
    "loss_after": _k("loss_change", label=r"$\mathcal{L}$ after the step"),
    "train_loss": _k(_EVAL, _TRAIN, label="training loss"),
    "train_acc": _k(_EVAL, _TRAIN, label="training accuracy"),
    "val_loss": _k(_EVAL, _VAL, label="validation loss"),
    "val_acc": _k(_EVAL, _VAL, label="validation accuracy", legacy=("val_accuracy",)),
    "probe_loss": _k("probe", label="probe loss"),
    "probe_acc": _k("probe", label="probe accuracy", legacy=("probe_accuracy",)),
    # weights, learning rate
    "gamma_norm/*": _k("batchnorm", label=r"$\|\gamma\|$ ({})"),
    "gamma_norm_last": _k("batchnorm", label=r"$\|\gamma\|$ (last BN layer)"),
    "param_norm": _k("param_norm", label=r"$\|\theta\|$"),
    "lr": _k(_EVAL, "lr", label=r"$\eta$"),
    # Adam/AdamW: the preconditioned sharpness and K in Adam's geometry (Cohen et al. 2022)
    "precond_lambda_H_1": _k(_PSH, label=r"$\lambda_1(P^{-1}H)$", symbol="lambda_1(P^-1 H)"),
    "precond_lambda_H_*": _k(_PSH, label=r"$\lambda_{{{}}}(P^{{-1}}H)$"),
    "precond_residual_H_*": _k(_PSH),
    "precond_converged": _k(_PSH),
    "precond_eos_threshold": _k(_PSH, label=r"$(2+2\beta_1)/((1-\beta_1)\eta)$"),
    "precond_eos_ratio": _k(_PSH, label=r"$\lambda_1(P^{-1}H)\,/\,\mathrm{threshold}$"),
    "adam_step": _k(_PSH),
    "precond_lambda_K_1": _k(
        _PK, label=r"$\lambda_1(P^{-1/2}KP^{-1/2})$", symbol="lambda_1(P^-1 K)"
    ),
    "precond_lambda_K_*": _k(_PK, label=r"$\lambda_{{{}}}(P^{{-1/2}}KP^{{-1/2}})$"),
    "precond_residual_K_*": _k(_PK),
    "precond_converged_K": _k(_PK),
}

#: ``{legacy name: key}``: the names older runs wrote, read as today's keys by :func:`load_run`.
LEGACY_KEYS = {old: key for key, info in KEYS.items() for old in info.legacy}


def canonical_key(key: str) -> str:
    """Today's name of a record key: ``key`` itself unless it is a legacy name
    (:data:`LEGACY_KEYS`, e.g. ``val_accuracy`` -> ``val_acc``)."""
    return LEGACY_KEYS.get(key, key)


def key_info(key: str) -> KeyInfo | None:
    """The catalogue entry of ``key`` (:data:`KEYS`): its own, else that of the first
    pattern it matches (``lambda_H_3`` -> ``lambda_H_*``); None for a key no built-in
    measure emits (e.g. a custom measure's, or an integration's evaluation metric)."""
    from fnmatch import fnmatchcase

    key = canonical_key(key)
    if key in KEYS:
        return KEYS[key]
    return next((info for p, info in KEYS.items() if "*" in p and fnmatchcase(key, p)), None)


def key_symbol(key: str) -> str:
    """The plain-text name of ``key`` (its catalogue ``symbol``, e.g. ``lambda_K_1`` ->
    ``lambda_K^1``), else the key itself."""
    info = key_info(key)
    return (info.symbol if info else None) or canonical_key(key)


def key_label(key: str) -> str:
    """The axis label of ``key``: its catalogue label (for a pattern, with the matched part
    filled in: ``gamma_norm/bn1`` -> ``$\\|\\gamma\\|$ (bn1)``), else the key itself."""
    from fnmatch import fnmatchcase

    key = canonical_key(key)
    if key in KEYS:
        return KEYS[key].label or key
    for pattern, info in KEYS.items():
        if "*" in pattern and fnmatchcase(key, pattern):
            head, _, tail = pattern.partition("*")
            part = key[len(head) : len(key) - len(tail)]
            return info.label.format(part) if info.label else key
    return key


def preferred_measure(key: str, present: Iterable[str]) -> str | None:
    """Which of the measures ``present`` (those that recorded ``key``) a bare ``key`` is
    read from: the first of its catalogue ``measures`` that is present (``lambda_H_1``:
    hessian, then stability, then edge_of_stability; ``train_acc``: the evaluation, then the
    ``train_accuracy`` measure), else the first present one alphabetically; None when none
    is present."""
    present = sorted(set(present))
    info = key_info(key)
    for m in info.measures if info else ():
        if m in present:
            return m
    return present[0] if present else None


# ------------------------------------------------------------------ SLQ densities

#: The variance of the Gaussian broadening of an SLQ density, per unit of the nodes' span
#: (PyHessian's ``density_generate``): s^2 = SLQ_SIGMA2 * max(1, span of the nodes).
SLQ_SIGMA2 = 1e-5


def slq_density(
    nodes: Sequence[float],
    weights: Sequence[float],
    grid: Sequence[float],
    var: float | None = None,
) -> Any:
    """The Gaussian-broadened density of an SLQ quadrature on ``grid``: sum_i w_i N(t;
    node_i, s^2), a numpy array (float64) of ``len(grid)``; not normalised (weights summing
    to 1 give a density integrating to 1 over a grid that covers the nodes). ``var`` is
    s^2, default ``SLQ_SIGMA2 * max(1, span of the nodes)``. ``nodes`` and ``weights``
    may be flat or (probes, steps) arrays of the same shape."""
    import numpy as np

    t = np.asarray(nodes, dtype=float).ravel()
    w = np.asarray(weights, dtype=float).ravel()
    grid = np.asarray(grid, dtype=float)
    if var is None:
        var = SLQ_SIGMA2 * max(1.0, float(t.max() - t.min()) if len(t) else 0.0)
    d = np.zeros_like(grid)
    for start in range(0, len(t), 64):
        dt = grid[:, None] - t[None, start : start + 64]
        d += (np.exp(-(dt**2) / (2 * var)) / np.sqrt(2 * np.pi * var)) @ w[start : start + 64]
    return d


# ------------------------------------------------------------------ errors


class RunStoreError(Exception):
    """A run or sweep directory cannot be used (the message names the file, says why and what
    to do)."""


class RunFileError(RunStoreError, ValueError):
    """A file of a run or sweep directory cannot be read: it is not a regular file, cannot be
    opened, is not UTF-8, not JSON, or JSON of the wrong shape. The message names the file
    (and the line of ``records.jsonl``)."""


class UnsafePathError(RunStoreError, ValueError):
    """A path the tool would write is not a plain name inside its directory, or is (or passes
    through) a symbolic link or a file that is not a regular file."""


# ------------------------------------------------------------------ safe files

#: The longest name of a run, a sweep or a file the tool creates from user input (bytes of
#: UTF-8; file systems allow 255, and ``-<hash>`` or ``.tmp`` may be appended).
MAX_NAME_BYTES = 200
NAME_RULE = (
    f"a name is 1 to {MAX_NAME_BYTES} bytes (UTF-8), not '.' or '..', without '/', '\\', "
    "NUL or other control characters"
)


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be one file or directory name that the tool creates (a run name, a
    sweep's name or run names, a part of :func:`inside`), ending with what is allowed; None
    when it can."""
    if not isinstance(name, str) or not name:
        why = f"it is {'empty' if name == '' else 'not a string'}"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        why = f"it is {len(name.encode('utf-8', 'surrogatepass'))} bytes long"
    elif name in (".", ".."):
        why = "it names a directory itself"
    elif bad := sorted({c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127}):
        why = f"it contains {', '.join(map(repr, bad))}"
    else:
        return None
    return f"{why}; {NAME_RULE}"


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root/part/...``, checked to be a path the tool may write inside ``root``: each part is
    one plain name (:func:`name_problem`), and no part that exists is a symbolic link (a link
    planted in a run or sweep directory would send the writes elsewhere). ``root`` itself is
    the user's choice and may be a link. Raises :class:`UnsafePathError`."""
    path = Path(root)
    for part in parts:
        why = name_problem(part)
        if why is not None:
            raise UnsafePathError(
                f"{'/'.join(map(str, parts))!r} does not name a subdirectory or file inside "
                f"{root}: {why}"
            )
        path = path / part
        if path.is_symlink():
            raise UnsafePathError(
                f"{path} is a symbolic link; the tool never writes through links in a run or "
                "sweep directory: remove it, or use another output directory"
            )
    return path


def _refused(path: Path, error: OSError) -> None:
    """Raise UnsafePathError when ``path`` could not be opened because it is a symbolic link
    or not a regular file (a FIFO with no reader, a socket)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafePathError(
            f"{path} is a symbolic link; the tool never writes through links: remove it, or "
            "use another output directory"
        ) from error
    if not stat.S_ISREG(mode):
        raise UnsafePathError(f"{path} is not a regular file: remove it") from error


def open_for_writing(path: str | os.PathLike, *, append: bool = False) -> BinaryIO:
    """``path`` opened for writing, never through a symbolic link and never blocking.

    ``append=False``: a new, empty file, opened write-only: whatever is at ``path`` is removed
    first (``unlink`` removes a link itself, never its target), then the file is created
    exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``). ``append=True``: the file opened to read
    and append (created if missing); a symbolic link, a FIFO, a device or a directory there is
    refused. Either refusal raises :class:`UnsafePathError`."""
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if append:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | nofollow | getattr(os, "O_NONBLOCK", 0)
    else:
        path.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        _refused(path, e)
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path} is not a regular file: remove it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a+b" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def hold_lock(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for appending (:func:`open_for_writing`: never through a link) with an
    exclusive, non-blocking ``flock`` on it, held until the file is closed or the process dies
    (where ``flock`` does not exist: the open file, no lock). Raises ``BlockingIOError`` when
    another process holds it."""
    lock = open_for_writing(path, append=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        lock.close()
        raise BlockingIOError(f"{path} is locked by another process") from e
    return lock


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` through ``write(file)`` on a new ``<path>.tmp``
    (:func:`open_for_writing`), fsync, then rename it over ``path`` (which replaces a symbolic
    link at ``path`` itself, never its target): a reader sees the old or the new file, never a
    mix. On an error the temporary file is removed and the error raised. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open_for_writing(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _encode(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    return x


def to_json(obj: Any, **kwargs: Any) -> str:
    """``obj`` as strict JSON (``json.dumps(..., allow_nan=False)`` with ``kwargs``): a NaN
    float is written ``null``, +inf and -inf the strings ``"inf"`` and ``"-inf"`` (the
    readers turn them back into floats where numbers belong)."""
    return json.dumps(_encode(obj), allow_nan=False, **kwargs)


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf}  # how to_json writes them


def open_for_reading(path: str | os.PathLike) -> BinaryIO | None:
    """``path`` opened to read (symbolic links followed), or None when there is no such file;
    never blocks: a FIFO, a device or a directory raises :class:`RunFileError`, as does a
    file that cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise RunFileError(f"{path} cannot be read: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFileError(
                f"{path} is not a regular file (a FIFO, a device or a directory): remove it"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_bytes(path: Path) -> bytes | None:
    f = open_for_reading(path)
    if f is None:
        return None
    with f:
        try:
            return f.read()
        except OSError as e:
            raise RunFileError(f"{path} cannot be read: {e.strerror or e}") from e


def _decode_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RunFileError(f"{where}, line {line}: not UTF-8 text ({e.reason})") from e


def _parse_json(text: str, where: str) -> Any:
    """JSON (bare NaN and Infinity of older runs accepted) or a RunFileError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{where}, line {e.lineno}: not valid JSON ({e.msg})") from e
    except RecursionError as e:
        raise RunFileError(f"{where}: JSON nested too deeply to read") from e


def _read_json(path: Path) -> Any:
    """The JSON content of ``path`` (None when there is no such file)."""
    data = _read_bytes(path)
    return None if data is None else _parse_json(_decode_text(data, str(path)), str(path))


_KINDS = {  # JSON kind: (how messages name it, test)
    "null": ("null", lambda x: x is None),
    "boolean": ("a boolean", lambda x: isinstance(x, bool)),
    "integer": ("an integer", lambda x: isinstance(x, int) and not isinstance(x, bool)),
    "number": ("a number", lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)),
    "string": ("a string", lambda x: isinstance(x, str)),
    "list": ("a list", lambda x: isinstance(x, list)),
    "object": ("an object", lambda x: isinstance(x, dict)),
}


def _checked(where: str, what: str, x: Any, allowed: str) -> Any:
    """``x`` when it is of one of the ``allowed`` kinds (keys of ``_KINDS`` joined by "|"; a
    number may be encoded as "inf" or "-inf", returned as a float), else a RunFileError
    naming ``where`` and ``what``."""
    kinds = allowed.split("|")
    if "number" in kinds and isinstance(x, str) and x in _NON_FINITE:
        return _NON_FINITE[x]
    if any(_KINDS[k][1](x) for k in kinds):
        return x
    names = [_KINDS[k][0] for k in kinds]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    found = next(name for name, test in _KINDS.values() if test(x))
    raise RunFileError(f"{where}: {what} must be {expected}, not {found}")


def _fields(
    where: str, obj: Any, fields: dict[str, str], what: str = "the content", prefix: str = ""
) -> dict:
    """``obj`` checked to be an object whose ``fields`` (name: allowed kinds), where present,
    are of those kinds, with encoded non-finite numbers decoded; errors name ``where`` and
    ``what`` (or ``prefix`` + the field)."""
    _checked(where, what, obj, "object")
    for name, allowed in fields.items():
        if name in obj:
            obj[name] = _checked(where, prefix + name, obj[name], allowed)
    return obj


def read_status(path: str | os.PathLike) -> str | None:
    """The status of the run in ``path`` (None if it has none)."""
    p = Path(path) / STATUS
    data = _read_bytes(p)
    return None if data is None else _decode_text(data, str(p)).strip()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The resolved config of the run in ``path``: a JSON object whose ``train``, ``track`` and
    ``run``, where present, are objects."""
    p = Path(path) / CONFIG
    config = _read_json(p)
    if config is None:
        raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG}")
    tables = {"name": "string", "train": "object", "track": "object", "run": "object"}
    return _fields(str(p), config, tables)


#: The fields of summary.json that readers use, and their kinds.
SUMMARY_FIELDS = {
    "status": "string|null",
    "steps": "integer|null",
    "seconds": "number|null",
    "last_loss": "number|null",
    "final": "object|null",
}


def read_summary(path: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json of a run that ended, else None. ``seconds`` and ``last_loss`` are floats
    or None (a NaN loss was written as ``null``)."""
    p = Path(path) / SUMMARY
    summary = _read_json(p)
    return None if summary is None else _fields(str(p), summary, SUMMARY_FIELDS)


def read_sweep_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The ``sweep.json`` of a sweep directory (see :mod:`breakeven.analysis.runs`): ``grid``
    an object, ``seeds``, ``notes`` and ``runs`` lists, each run an object whose ``name`` is
    one plain name (:func:`name_problem`) and ``params`` an object."""
    p = Path(path) / SWEEP_FILE
    spec = _read_json(p)
    if spec is None:
        raise FileNotFoundError(f"{path} is not a sweep directory: it has no {SWEEP_FILE}")
    where = str(p)
    _fields(where, spec, {"grid": "object", "seeds": "list", "notes": "list", "runs": "list"})
    for note in spec.get("notes", []):
        _checked(where, "each of notes", note, "string")
    for i, run in enumerate(spec.get("runs", [])):
        what = f"runs[{i}]"
        _fields(where, run, {"params": "object", "seed": "integer|null"}, what, f"{what}.")
        why = name_problem(run.get("name"))
        if why is not None:
            raise RunFileError(f"{where}: {what}.name={run.get('name')!r} is invalid: {why}")
    return spec


#: The fields of a record and their kinds (``values`` is checked entry by entry).
RECORD_FIELDS = {
    "step": "integer",
    "epoch": "number|null",
    "measure": "string",
    "values": "object",
    "seconds": "number|null",
    "matvecs": "integer|null",
    "arrays": "object|null",
}


def _value(x: Any, where: str, key: str) -> Any:
    """A record's value: numbers and booleans as they are, null as NaN, "inf"/"-inf" as
    floats, lists element by element."""
    if isinstance(x, list):
        return [_value(v, where, key) for v in x]
    if isinstance(x, bool):
        return x
    x = _checked(where, f"values[{key!r}]", x, "number|null|list")
    return math.nan if x is None else x


def _record(r: Any, where: str) -> dict[str, Any]:
    _fields(where, r, RECORD_FIELDS, "a record")
    for name in ("step", "measure", "values"):
        if name not in r:
            raise RunFileError(f"{where}: a record must have {name!r}")
    r["values"] = {k: _value(v, where, k) for k, v in r["values"].items()}
    return r


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of the run in ``path``, in order. An incomplete last line (a
    kill or a full disk during a write) is ignored; a malformed complete line raises
    :class:`RunFileError` (a ``ValueError``) naming the file and the line.

    Values read back as numbers (``null`` as NaN, ``"inf"``/``"-inf"`` as +/-inf; bare
    ``NaN``/``Infinity`` of older runs are accepted), booleans, or lists of them."""
    p = Path(path) / RECORDS
    data = _read_bytes(p)
    if data is None:
        if not (Path(path) / CONFIG).exists():
            raise FileNotFoundError(f"{path} is not a run directory: it has no {CONFIG}")
        return []
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is incomplete or empty
    out = []
    for i, line in enumerate(lines, 1):
        where = f"{p}, line {i}"
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RunFileError(f"{where}: not UTF-8 text ({e.reason})") from e
        except json.JSONDecodeError as e:
            raise RunFileError(f"{where}: not a JSON record ({e})") from e
        except RecursionError as e:
            raise RunFileError(f"{where}: not a JSON record (nested too deeply)") from e
        out.append(_record(record, where))
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if v is None:
        return math.nan
    return None  # lists, strings: not a scalar


def load_run(path: str | os.PathLike | Any | Iterable[str | os.PathLike | Any]) -> Any:
    """The records of one run directory (or several) as a tidy pandas DataFrame.

    One row per scalar value: columns ``run`` (the directory name), ``step``, ``epoch``,
    ``measure``, ``key``, ``value`` (float; booleans as 0/1, None as NaN), and the record's
    cost ``seconds`` and ``matvecs`` (repeated on each of its rows). Non-scalar values
    (lists) are left out. Incomplete last lines are ignored (see :func:`read_records`).
    Legacy key names of older runs are read as today's (:data:`LEGACY_KEYS`:
    ``val_accuracy`` as ``val_acc``, ``probe_accuracy`` as ``probe_acc``).

    A :class:`~breakeven.Tracker` (anything with ``records_``) in place of a directory gives
    its records in memory, named by its ``name`` (its ``out_dir``'s name, else
    ``"tracker"``): the same table as ``load_run(out_dir)`` of the directory it writes.
    """
    import pandas as pd

    single = isinstance(path, (str, os.PathLike)) or hasattr(path, "records_")
    paths = [path] if single else list(path)
    rows = []
    for p in paths:
        if hasattr(p, "records_"):
            run, records = str(getattr(p, "name", "tracker")), p.records_
        else:
            run, records = Path(p).resolve().name, read_records(p)
        for r in records:
            for key, v in sorted(r.get("values", {}).items()):  # as records.jsonl has them
                x = _number(v)
                if x is not None:
                    rows.append(
                        (
                            run,
                            r.get("step"),
                            r.get("epoch"),
                            r.get("measure"),
                            LEGACY_KEYS.get(key, key),
                            x,
                            r.get("seconds", math.nan),
                            r.get("matvecs", 0),
                        )
                    )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"step": "int64", "value": "float64", "seconds": "float64"})


EXPORT_FORMATS = ("tensorboard", "parquet", "csv")


def default_export_path(path: str | os.PathLike, to: str) -> Path:
    """Where :func:`export_run` writes by default: ``<path>/records.parquet``,
    ``<path>/records.csv`` or the directory ``<path>/tensorboard/`` (checked with
    :func:`inside`: a symbolic link there raises :class:`UnsafePathError`)."""
    _check_format(to)
    return inside(path, "tensorboard" if to == "tensorboard" else f"records.{to}")


def _check_format(to: str) -> None:
    if to not in EXPORT_FORMATS:
        raise ValueError(f"to={to!r} is invalid: must be 'tensorboard', 'parquet' or 'csv'")


def _require(to: str) -> None:
    """Raise a clear ImportError when the package that writes ``to`` is missing."""
    if to == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "exporting to Parquet needs pyarrow: pip install pyarrow "
                "(or pip install 'breakeven[parquet]'; or use to='csv')"
            ) from e
    elif to == "tensorboard":
        try:
            from tensorboard.summary import Writer  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "exporting to TensorBoard needs the tensorboard package: "
                "pip install 'breakeven[tensorboard]'"
            ) from e


def write_records(records: Any, to: str, out: str | os.PathLike) -> Path:
    """Write a tidy records table (the :func:`load_run` columns, several runs told apart by
    ``run``) to ``out``; returns ``out``.

    ``to='parquet'`` (needs pyarrow) or ``'csv'``: one file, the table as it is.
    ``to='tensorboard'`` (needs the ``tensorboard`` package): event files in one
    subdirectory of ``out`` per run (``out/<run>/``, so ``tensorboard --logdir out`` shows
    the runs side by side), one scalar series per measure and key, tagged
    ``<measure>/<key>`` (e.g. ``covariance/lambda_K_1``, ``hessian/lambda_H_1``,
    ``evaluation/val_loss``), at ``global_step = step``. TensorBoard stores each value as a
    float32 (NaN stays NaN). Event files left in ``out/<run>/`` by an earlier export are
    removed first, so exporting again replaces the series instead of doubling them.
    Files are written with :func:`atomic_write` (never through a symbolic link), and each
    run's subdirectory is checked with :func:`inside`.
    """
    _check_format(to)
    _require(to)
    target = Path(out)
    if to == "parquet":
        atomic_write(target, lambda f: records.to_parquet(f, index=False))
    elif to == "csv":
        atomic_write(target, lambda f: records.to_csv(f, index=False))
    else:
        _write_tensorboard(records, target)
    return target


def _write_tensorboard(records: Any, out: Path) -> None:
    from tensorboard.summary import Writer

    out.mkdir(parents=True, exist_ok=True)
    for run, frame in records.groupby("run", sort=False):
        run_dir = inside(out, *str(run).split("/"))  # "<sweep>/<run>" for several sweeps
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.glob("events.out.tfevents.*"):
            old.unlink()
        writer = Writer(str(run_dir))
        try:
            tags = frame["measure"].astype(str) + "/" + frame["key"].astype(str)
            for tag, step, value in zip(tags, frame["step"], frame["value"]):
                writer.add_scalar(tag, float(value), int(step))
        finally:
            writer.close()


def export_run(
    path: str | os.PathLike, to: str = "parquet", out: str | os.PathLike | None = None
) -> Path:
    """Write the records of the run directory ``path`` (:func:`load_run`) with
    :func:`write_records` as ``to='tensorboard'``, ``'parquet'`` or ``'csv'`` to ``out``
    (default :func:`default_export_path`: ``<path>/records.<ext>`` or ``<path>/tensorboard/``);
    returns the file or directory written. A missing writer package raises ImportError
    naming what to install, before anything is read.

    A sweep directory (``sweep.json`` and ``runs/``) is read by
    :func:`breakeven.analysis.read_runs`; ``breakeven export SWEEP`` writes all its runs
    (one file, or one TensorBoard subdirectory per run), as does
    ``write_records(read_runs(sweep).records, to, out)``.
    """
    _check_format(to)
    _require(to)
    if not (Path(path) / CONFIG).exists() and (Path(path) / SWEEP_FILE).exists():
        raise ValueError(
            f"{path} is a sweep directory: export it with `breakeven export {path}` or "
            "write_records(breakeven.analysis.read_runs(path).records, to, out)"
        )
    df = load_run(path)
    return write_records(df, to, out if out is not None else default_export_path(path, to))


def decode_array(d: dict[str, Any]) -> Any:
    """The numpy array of a record's ``arrays`` entry (``{"dtype", "shape", "data"}``, base64
    bytes; see ``breakeven.measures.tracked.encode_array``)."""
    import numpy as np

    return np.frombuffer(base64.b64decode(d["data"]), dtype=d["dtype"]).reshape(d["shape"])
