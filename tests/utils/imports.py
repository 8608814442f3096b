"""Import, in the main thread at collection, what anyio would otherwise import on first use in a worker thread.

anyio 4.16 imports its submodules lazily (`anyio.open_file` imports `anyio._core._fileio` on first access).
pytest rewrites the assertions of every plugin's package, anyio's included, so such an import parses the
module's source with `ast`, and on CPython 3.11 two threads building an AST at once can fail with
`SystemError: AST constructor recursion depth mismatch` (CPython gh-106905, fixed in 3.12). A test's first
file response did that once in CI, in the app's thread while another thread parsed."""

from __future__ import annotations

import importlib
import sys

LAZY_PACKAGES = ("anyio", "anyio.abc")
# Imported by a plugin's hook at the session's end, while threads of the tests may still be parsing: a review saw
# schemathesis's `pytest_sessionfinish` import its allure reporter (which then fails: allure is not installed)
# end 4 of 12 runs on a busy core with that SystemError instead of the results. Tried once now, in the main
# thread; a failed one is marked in `sys.modules` so that the plugin's imports of it fail without parsing it.
AT_SESSION_END = ("schemathesis.reporting.allure",)


def import_lazy_modules(packages: tuple[str, ...] = LAZY_PACKAGES, late: tuple[str, ...] = AT_SESSION_END) -> None:
    """Touch every name a lazy package lists, so all its submodules are imported now; try the modules plugins
    import late."""
    for package in map(importlib.import_module, packages):
        for name in dir(package):
            getattr(package, name)
    for module in late:
        try:
            importlib.import_module(module)
        except ImportError:  # its own dependency is missing: None makes every later import fail at once, unparsed
            sys.modules[module] = None  # type: ignore[assignment]
