"""The run store: one directory per run, written so that a kill at any moment loses nothing.

Layout of a run directory::

    config.json     the resolved config, written once; a resume with another config is refused
    records.jsonl   one JSON record per line, appended, flushed and fsynced record by record
    status          running | finished | diverged | failed: <error message>   (atomic)
    checkpoint.pt   training state + tracker state + number of records written  (atomic)
    summary.json    written at the end: status, steps, seconds, last loss        (atomic)
    model.pt        the final parameters (state_dict)                             (atomic)
    lock            held (``flock``) by the process writing the run; a second one is refused

A record is a dict ``{"step", "epoch", "measure", "values": {key: float}, "seconds",
"matvecs"}``. The JSON files are strict JSON: a NaN is written ``null`` and +inf/-inf the
strings ``"inf"``/``"-inf"``; the readers give a record's values back as floats (``null`` as
NaN), and ``seconds``/``last_loss`` of summary.json as floats or None. Bare ``NaN`` of runs
written by earlier versions still reads. Atomic files are written to a new ``<name>.tmp``,
fsynced, then ``os.replace``\\d, so a reader sees the old or the new file, never a mix.

Nothing is written through a symbolic link: every path is made with
:func:`breakeven.records.inside` (a link where a file of the run goes is refused with
:class:`~breakeven.records.UnsafePathError`), files are opened with ``O_NOFOLLOW`` and
temporary files created with ``O_EXCL`` (:func:`breakeven.records.open_for_writing`). A
reader that meets a malformed file raises :class:`~breakeven.records.RunFileError` (a
:class:`RunStoreError`) naming the file and line. A kill during an append can leave
an incomplete last line in ``records.jsonl``: readers ignore it, and :meth:`RunStore.open`
cuts the file back to the records counted in the checkpoint (so a resumed run neither loses
nor duplicates a record).

Nothing is lost and nothing overwritten: every decision about an existing directory is
taken while holding its lock, and records are cut only on positive evidence that they lie
past the last checkpoint (the status says ``running`` or ``failed: ...``, written before any
record). A run's end is committed by ``summary.json`` (written after ``model.pt``, before
the final status, with the lock held until the status is final). A directory whose state
says neither (e.g. a status file missing or unreadable beside records, or ``summary.json``
beside a status that is not final) is refused with :class:`RunStoreError`, unchanged.

The readers (:func:`breakeven.load_run`, :func:`breakeven.read_records`, ...) and
:func:`breakeven.export_run` are in :mod:`breakeven.records`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..records import (
    CHECKPOINT,
    CONFIG,
    MODEL,
    RECORDS,
    STATUS,
    SUMMARY,
    RunStoreError,
    atomic_write,
    hold_lock,
    inside,
    open_for_reading,
    open_for_writing,
    read_config,
    read_status,
    read_summary,
    to_json,
)

#: Free disk space a run needs before it starts (bytes); checkpoints of the paper's models
#: are well below this (the MLP's is 2 MB, ResNet-32's 4 MB).
DEFAULT_MIN_FREE_BYTES = 64 * 2**20
FORMAT_VERSION = 1
#: The statuses of a run that has ended (final: never changed again).
ENDED = ("finished", "diverged")
RUNNING, FAILED = "running", "failed: "
#: The files a run writes beside config.json.
RUN_FILES = (RECORDS, STATUS, CHECKPOINT, SUMMARY, MODEL)

__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "ENDED",
    "ConfigMismatchError",
    "OutputDirError",
    "RunStore",
    "config_diff",
]


class OutputDirError(RunStoreError, OSError):
    """The output directory cannot be created or written, or its disk is (nearly) full."""


class ConfigMismatchError(RunStoreError, ValueError):
    """The run directory holds a run of another config; ``keys`` lists the differing keys."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(
            f"{path} holds a run with a different config (differing keys: {', '.join(keys)}); "
            "use another output directory, or the config saved in its config.json"
        )


# ------------------------------------------------------------------ atomic writes


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def jsonable(x: Any, what: str = "a value", file: str = "config.json") -> Any:
    """``x`` as plain JSON data, what the run's files hold: tuples as lists, tensors and
    numpy values as lists or numbers, paths as strings, functions as :func:`callable_id`
    names them; ``TypeError`` naming ``what`` and ``file`` for anything else."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v, what, file) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, what, file) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if callable(x):
        return callable_id(x, what)
    raise TypeError(f"{what}: {x!r} cannot be written to {file} (use JSON values)")


def callable_id(f: Any, what: str = "a function") -> str:
    """How ``config.json`` names the function ``f``, so that a resume with another
    function is refused (:class:`ConfigMismatchError`).

    A function by its ``module.qualname``. A lambda or a function defined inside another
    (``<lambda>`` or ``<locals>`` in its name: the name does not tell such functions apart)
    adds ``#`` and a hash of what it computes: its bytecode, constants and the global names
    it reads, its defaults and the values it closes over (JSON values or functions, named the
    same way; anything else raises ``TypeError`` naming ``what``: define the function at
    module level). The same lambda hashes the same in any process of the same Python
    version; the values of the globals it reads are not part of the hash. A
    ``functools.partial`` as ``partial(<function>, <args>, <keywords>)``; a method bound to
    an object as its function and a hash of the object's attributes (``__dict__`` and
    ``__slots__``; JSON values, as for a closure), a classmethod as its function and class;
    any other callable object by its type's qualified name. A nested function that calls
    itself, or an object that holds its own method, is ``<itself>`` inside its own hash."""
    if isinstance(f, functools.partial):
        bound = to_json(jsonable([f.args, f.keywords], what))
        return f"partial({callable_id(f.func, what)}, {bound})"
    if isinstance(f, types.MethodType):
        owner = f.__self__
        name = callable_id(f.__func__, what)
        if isinstance(owner, type):  # a classmethod: its class
            return f"{name}@{owner.__module__}.{owner.__qualname__}"
        inner = f"{what} (the attributes of the object {name} is bound to)"
        return _hashed(owner, f"{name}@", lambda: jsonable(_attributes(owner), inner))
    name = f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"
    code = getattr(f, "__code__", None)
    if code is None or "<" not in name:
        return name
    inner = f"{what} (what {name} closes over)"

    def computes() -> list:
        cells = [_cell(c) for c in f.__closure__ or ()]
        return [_code(code), jsonable([f.__defaults__, f.__kwdefaults__, cells], inner)]

    return _hashed(f, f"{name}#", computes)


class _Naming(threading.local):
    """Per thread, the ids of the functions and objects :func:`callable_id` is naming (a
    function in its own closure, an object holding its own method): named ``<itself>``."""

    def __init__(self) -> None:
        self.ids: set[int] = set()


_NAMING = _Naming()


def _hashed(key: Any, prefix: str, data: Callable[[], Any]) -> str:
    """``prefix`` and a hash of ``data()`` as JSON, or ``<itself>`` when ``key`` is being
    named already (``data`` leads back to it)."""
    if id(key) in _NAMING.ids:
        return "<itself>"
    _NAMING.ids.add(id(key))
    try:
        value = data()
    finally:
        _NAMING.ids.discard(id(key))
    return f"{prefix}{hashlib.sha256(to_json(value).encode()).hexdigest()[:16]}"


def _attributes(obj: Any) -> dict[str, Any]:
    """An object's attributes: its ``__dict__`` and its ``__slots__``, sorted by name."""
    out = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            held = slot  # a private slot is stored under its mangled name
            if slot.startswith("__") and not slot.endswith("__"):
                held = f"_{cls.__name__.lstrip('_')}{slot}"
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, held):
                out[slot] = getattr(obj, held)
    return dict(sorted(out.items()))


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a name the enclosing function had not yet assigned
        return "<empty cell>"


def _code(code: types.CodeType) -> list:
    """A code object as JSON data without its file and line numbers: bytecode, global names
    and constants (nested functions' code the same way; sets sorted)."""
    return [code.co_code.hex(), list(code.co_names), [_const(c) for c in code.co_consts]]


def _const(c: Any) -> Any:
    if isinstance(c, types.CodeType):
        return _code(c)
    return sorted(map(repr, c)) if isinstance(c, frozenset) else repr(c)


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where the nested mappings ``a`` and ``b`` differ, each value compared as
    config.json holds it (a tuple as a list, inf as ``"inf"``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out += config_diff(a[k], b[k], key)
        return out
    return [] if _written(a) == _written(b) else [prefix or "<config>"]


def _written(x: Any) -> Any:
    return json.loads(to_json(jsonable(x)))


# ------------------------------------------------------------------ the store


class RunStore:
    """One run's directory (see the module docstring).

    ``RunStore(path)`` only stores its arguments; :meth:`open` takes the directory's lock,
    checks or writes ``config.json``, decides (under the lock) whether the run starts,
    resumes or has ended, cuts ``records.jsonl`` back to the last checkpoint and returns
    that checkpoint (None for a fresh run, or when ``ended_`` says the run has ended). Then
    :meth:`append` each record, :meth:`save_checkpoint` on a schedule, and :meth:`finish` or
    :meth:`fail` at the end. ``n_records_`` counts the records in the file.
    """

    def __init__(self, path: str | os.PathLike, *, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.path = Path(path)
        self.min_free_bytes = min_free_bytes
        self.n_records_ = 0
        self.ended_: str | None = None
        self._file: Any = None
        self._lock: Any = None

    # -- checks and opening

    def _where(self, name: str) -> Path:
        """The path of the run's file ``name``, refused if it is a symbolic link."""
        return inside(self.path, name)

    def check_writable(self) -> None:
        """Create the directory and raise :class:`OutputDirError` if it cannot be written
        or its disk has less than ``min_free_bytes`` free, :class:`UnsafePathError` if one of
        the run's files is a symbolic link."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputDirError(f"cannot create the run directory {self.path}: {e}") from e
        for name in (CONFIG, *RUN_FILES, "lock"):  # a planted link would send a write elsewhere
            self._where(name)
        probe = self.path / ".write-test"
        try:
            with open_for_writing(probe) as f:  # replaces whatever is there, never follows it
                f.write(b"ok")
            probe.unlink()
        except OSError as e:
            raise OutputDirError(f"the run directory {self.path} is not writable: {e}") from e
        free = shutil.disk_usage(self.path).free
        if free < self.min_free_bytes:
            raise OutputDirError(
                f"only {free / 2**20:.1f} MiB free on the disk of {self.path}; a run needs at "
                f"least {self.min_free_bytes / 2**20:.0f} MiB: free some space or choose "
                "another output directory"
            )

    @property
    def status(self) -> str | None:
        """The current status, or None before the run was opened."""
        return read_status(self.path)

    def final_status(self) -> str | None:
        """The status if the status file says the run has ended (one of :data:`ENDED`),
        else None. Safe without the lock: a final status is never changed."""
        try:
            status = self.status
        except ValueError:  # not text: not a final status
            return None
        return status if status in ENDED else None

    def open(self, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """Start or resume the run of ``config`` (a plain nested mapping), deciding under
        the directory's lock (a second process is refused while one holds it).

        A fresh directory gets ``config.json``; an existing one must hold the same config
        (else :class:`ConfigMismatchError` naming the differing keys), except a run that
        failed before its first checkpoint, whose config a corrected one replaces. Then:

        - a run that has ended (status ``finished`` or ``diverged``, or status ``running``
          beside the ``summary.json`` and ``model.pt`` of an end that was being written) is
          left as it was: ``ended_`` holds its status, the lock is released and None is
          returned;
        - a run whose status is ``running`` or ``failed: ...`` resumes: returns its last
          checkpoint (None if there is none), with ``records.jsonl`` cut back to the
          ``n_records`` it counts (to none without a checkpoint); the status becomes
          ``running``;
        - any other state (run files beside a missing, empty or unknown status;
          ``summary.json`` beside a status that is not final; run files without
          ``config.json``) raises :class:`RunStoreError` saying what to do, and nothing is
          changed.
        """
        self.check_writable()
        self._acquire_lock()
        try:
            self._check_config(json.loads(to_json(jsonable(config, "config"))))  # as it reads back
            for stale in self.path.glob("*.tmp"):  # a kill during an atomic write
                stale.unlink()
            self.ended_ = self._ended_under_lock()
            if self.ended_ is not None:
                self.close()
                return None
            checkpoint = self.load_checkpoint()
            self.set_status(RUNNING)
            self._truncate_records(checkpoint["n_records"] if checkpoint else 0)
            self._file = open_for_writing(self._where(RECORDS), append=True)
        except BaseException:
            self.close()
            raise
        return checkpoint

    def _present(self, *names: str) -> list[str]:
        return [n for n in names if (self.path / n).exists()]

    def _check_config(self, cfg: Any) -> None:
        """Write config.json in a fresh directory; else check it (see :meth:`open`)."""
        cfg_path = self._where(CONFIG)
        if not cfg_path.exists():
            files = self._present(*RUN_FILES)
            if files:
                raise RunStoreError(
                    f"{self.path} holds {', '.join(files)} of a run but no {CONFIG}: its "
                    f"config is unknown, so it can be neither resumed nor replaced; restore "
                    f"{cfg_path} or use another output directory"
                )
        else:
            keys = config_diff(read_config(self.path), cfg)
            if not keys:
                return
            status = self._read_status()
            failed_early = status is not None and status.startswith(FAILED)
            if not failed_early or self._present(CHECKPOINT, SUMMARY, MODEL):
                raise ConfigMismatchError(self.path, keys)
            # failed before its first checkpoint: a resume would start afresh anyway
        _atomic_text(cfg_path, to_json(cfg, indent=2, sort_keys=True) + "\n")

    def _read_status(self) -> str | None:
        try:
            return self.status
        except ValueError:  # not text
            return "<unreadable>"

    def _ended_under_lock(self) -> str | None:
        """The final status if the run has ended, None if it may resume; raises
        :class:`RunStoreError` when the directory's state is ambiguous (see :meth:`open`)."""
        status = self._read_status()
        if status in ENDED:
            return status
        if status is None:
            what = "is missing"
        elif status == "":
            what = "is empty"
        elif status == RUNNING or status.startswith(FAILED):
            what = f"says {status!r}"
        else:
            what = f"holds {status!r}, not a status"
        status_path = self.path / STATUS
        if (self.path / SUMMARY).exists():
            try:
                said = read_summary(self.path).get("status")
            except (ValueError, AttributeError):
                said = None
            if status == RUNNING and said in ENDED and (self.path / MODEL).exists():
                # stopped after committing the end (summary.json), before the status
                self.set_status(said)
                (self.path / CHECKPOINT).unlink(missing_ok=True)
                return said
            end = f"says the run ended ({said!r})" if said in ENDED else "is unreadable"
            raise RunStoreError(
                f"{self.path}: its summary.json {end} but its status file {what}: the run "
                "was stopped while it was being finished, or a file was changed. Nothing was "
                f"changed. If the run did end, write its status into {status_path}; to train "
                "it again from its last checkpoint, remove summary.json and model.pt; or use "
                "another output directory"
            )
        if status == RUNNING or (status is not None and status.startswith(FAILED)):
            return None
        files = self._present(RECORDS, CHECKPOINT, MODEL)
        if status is None and not files:
            return None  # fresh: nothing was written but config.json
        since = "its last checkpoint" if CHECKPOINT in files else "the start (no checkpoint)"
        raise RunStoreError(
            f"{self.path} holds {', '.join(files) or 'a run'} but its status file {what}: a "
            "run writes its status before anything else, so the file was lost or changed. "
            f"Nothing was changed. To resume from {since}, cutting the records written "
            f"after it, write 'failed: status lost' into {status_path}; else use another "
            "output directory"
        )

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        try:
            lock = hold_lock(self._where("lock"))
        except BlockingIOError as e:
            raise RunStoreError(
                f"{self.path} is being written by another process (its lock is held): wait "
                "for it to end, or use another output directory"
            ) from e
        self._lock = lock  # released by close(), or by the OS when the process dies

    def _truncate_records(self, keep: int) -> None:
        """Keep the first ``keep`` complete lines of records.jsonl, drop everything after."""
        path = self._where(RECORDS)
        with open_for_writing(path, append=True) as f:  # never a link, a FIFO or a device
            f.seek(0)
            data = f.read()
            offset, count = 0, 0
            while count < keep:
                end = data.find(b"\n", offset)
                if end < 0:
                    raise RunStoreError(
                        f"{path} has {count} complete records, but the checkpoint counts "
                        f"{keep}: the file was changed or lost; start the run in a new directory"
                    )
                offset, count = end + 1, count + 1
            if offset != len(data):
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        self.n_records_ = keep

    # -- writing

    def truncate_records(self, keep: int) -> None:
        """Keep the first ``keep`` records of an open run and remove the ones after them
        (a resumed loop that replays their steps records them again); fsynced. Save a
        checkpoint next: the last one may count more records."""
        if self._file is None:
            raise RunStoreError("truncate_records() before open()")
        self._truncate_records(keep)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a JSON line; flushed and fsynced before returning. On an
        error (e.g. a full disk) the partial line is cut off when possible, and the error
        is raised."""
        if self._file is None:
            raise RunStoreError("append() before open()")
        line = (to_json(jsonable(record, "a record", RECORDS), sort_keys=True) + "\n").encode()
        f = self._file
        offset = f.tell()
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            try:
                f.truncate(offset)
                f.seek(offset)
            except OSError:
                pass  # readers ignore an incomplete last line anyway
            raise
        self.n_records_ += 1

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` plus ``n_records`` (records written so far) to checkpoint.pt,
        atomically."""
        full = {**state, "n_records": self.n_records_, "format_version": FORMAT_VERSION}
        atomic_write(self._where(CHECKPOINT), lambda f: torch.save(full, f))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None."""
        path = self.path / CHECKPOINT
        f = open_for_reading(path)
        if f is None:
            return None
        try:
            with f:
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RunStoreError(f"{path} is not a readable checkpoint: {e}") from e
        if state.get("format_version") != FORMAT_VERSION:
            raise RunStoreError(
                f"{path} has format {state.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        return state

    def set_status(self, status: str) -> None:
        """Write the status file atomically (one line)."""
        _atomic_text(self._where(STATUS), status.replace("\n", " ").strip() + "\n")

    def finish(
        self, status: str, summary: Mapping[str, Any], model_state: Mapping[str, Any]
    ) -> None:
        """End a run that trained to its end (``finished``) or ``diverged``: write model.pt,
        then summary.json (with ``status``; from here on the end is committed), then the
        status; the checkpoint is removed last. The lock is held until the status is final,
        so no other process can open the run in between."""
        self._close_records()
        atomic_write(self._where(MODEL), lambda f: torch.save(dict(model_state), f))
        summary = jsonable({**summary, "status": status}, "the summary", SUMMARY)
        text = to_json(summary, indent=2) + "\n"
        _atomic_text(self._where(SUMMARY), text)
        self.set_status(status)
        (self.path / CHECKPOINT).unlink(missing_ok=True)
        self.close()

    def fail(self, message: str) -> None:
        """Mark the run ``failed: <message>`` (best effort: the disk may be full), then
        release the lock. Once :meth:`finish` has written summary.json the end is committed
        and the status is left alone (the next :meth:`open` completes it)."""
        self._close_records()
        try:
            if not (self.path / SUMMARY).exists():
                self.set_status(f"{FAILED}{message}")
        except OSError:
            pass
        self.close()

    def _close_records(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        """Close the records file and release the lock."""
        self._close_records()
        if self._lock is not None:
            try:
                self._lock.close()
            except OSError:
                pass
            self._lock = None
