"""One compile per key across processes.

The CI gate, ``mirasol profile``, the C library's generator, bench/tune_configs.py and the
tests run in many processes at once (pytest-xdist workers, each with its pool of compile
workers, and the CMake build's own pool), and several of them compile the same kernel in
the same specialization. triton keeps every compile in its on-disk cache, but two
processes that miss it at the same moment both compile. Here a compile's key (triton's own
cache key: kernel source, signature, constexprs, attributes, options, target, triton and
the environment it reads) is held by one process at a time, so the others wait and then
hit triton's cache; what is read off a compiled kernel (its resources) is stored beside it
under the same key, so no process reads the cubin twice either.

Everything lives under triton's cache directory (``TRITON_CACHE_DIR``, default
``~/.triton/cache``) in ``mirasol-aot/``: a fresh ``TRITON_CACHE_DIR`` is a cold start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import tempfile
from typing import Callable, Iterator

from triton import knobs

_held: set[str] = set()  # keys this process holds (holding is re-entrant)


def _directory() -> str:
    path = os.path.join(knobs.cache.dir, "mirasol-aot")
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def exclusive(key: str) -> Iterator[None]:
    """Hold ``key``: other processes asking for it wait until this one is done (an
    exclusive ``flock``; the kernel releases it if the process dies)."""
    if key in _held:
        yield
        return
    with open(os.path.join(_directory(), f"{key}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def stored(key: str, name: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per ``key`` and ``name`` across processes: the JSON-able result
    is stored on disk (written whole, then renamed into place) and read back by every
    later call."""
    path = os.path.join(_directory(), f"{key}.{name}.json")
    if os.path.exists(path):  # complete: files appear by rename only
        return _load(path)
    with exclusive(key):
        if os.path.exists(path):  # computed while this process waited
            return _load(path)
        value = compute()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
        return value


def code_version(*parts) -> str:
    """A short hash of the code that computes a result (functions' source, or strings such
    as a pattern): part of the name of what it stores, so that a change to that code never
    serves an old result, while edits elsewhere in its module (a docstring) keep it."""
    text = "\0".join(p if isinstance(p, str) else inspect.getsource(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
