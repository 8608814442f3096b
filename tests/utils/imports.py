"""Import, in the main thread at collection, what anyio would otherwise import on first use in a worker thread.

anyio 4.16 imports its submodules lazily (`anyio.open_file` imports `anyio._core._fileio` on first access).
pytest rewrites the assertions of every plugin's package, anyio's included, so such an import parses the
module's source with `ast`, and on CPython 3.11 two threads building an AST at once can fail with
`SystemError: AST constructor recursion depth mismatch` (CPython gh-106905, fixed in 3.12). A test's first
file response did that once in CI, in the app's thread while another thread parsed."""

from __future__ import annotations

import importlib

LAZY_PACKAGES = ("anyio", "anyio.abc")


def import_lazy_modules(packages: tuple[str, ...] = LAZY_PACKAGES) -> None:
    """Touch every name a lazy package lists, so all its submodules are imported now."""
    for package in map(importlib.import_module, packages):
        for name in dir(package):
            getattr(package, name)
