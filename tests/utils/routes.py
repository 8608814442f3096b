"""Route analysis shared between the suite's apps.

FastAPI 0.165 analyses an included router's routes lazily, on an app's first request: each endpoint's signature
and dependencies (`get_dependant`) and its response model (a pydantic `TypeAdapter`). Nearly every test builds an
app of its own, so every test paid that again: 210 ms per app here, of which 165 ms went on analysing the same
module-level endpoints (46 ms left). The analysis depends only on the route's path, its endpoint and its
dependencies, so the suite keeps it once per process. A served process builds one app and is not touched.

Only endpoints defined at module level are kept: one defined inside a function (the app factory's own routes) is
a new object per app, would never be found again, and would keep its app alive.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import params, routing

_ANALYSE = "_build_dependant_with_parameterless_dependencies"
_FIELD = "create_model_field"


def _shared(call: Callable[..., Any]) -> bool:
    return "<locals>" not in getattr(call, "__qualname__", "<locals>")


def _remembered(store: dict[tuple[Any, ...], Any], key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """`store[key]`, made on first use; made every time for a key that cannot be hashed (as FastAPI does)."""
    try:
        return store[key]
    except KeyError:
        result = store[key] = make()
        return result
    except TypeError:
        return make()


def share_route_analysis() -> bool:
    """Install the shared analysis once; False if this FastAPI has none of the functions it wraps (the suite then
    runs as before, only slower, and `tests/test_harness.py` says so)."""
    analyse = getattr(routing, _ANALYSE, None)
    field = getattr(routing, _FIELD, None)
    if analyse is None or field is None:
        return False
    if getattr(analyse, "shared_by_tests", False):
        return True
    analysed: dict[tuple[Any, ...], Any] = {}
    fields: dict[tuple[Any, ...], Any] = {}

    @functools.wraps(analyse)
    def shared_analyse(*, path: str, call: Callable[..., Any], dependencies: Sequence[params.Depends]) -> Any:
        def make() -> Any:
            return analyse(path=path, call=call, dependencies=dependencies)
        if not _shared(call):
            return make()
        return _remembered(analysed, (path, call, tuple(dependencies)), make)

    @functools.wraps(field)
    def shared_field(name: str, type_: Any, *args: Any, **kwargs: Any) -> Any:
        def make() -> Any:
            return field(name, type_, *args, **kwargs)
        if args or set(kwargs) - {"mode"}:  # a field with its own default, alias or FieldInfo: not kept
            return make()
        return _remembered(fields, (name, type_, kwargs.get("mode", "validation")), make)

    shared_analyse.shared_by_tests = True  # type: ignore[attr-defined]
    setattr(routing, _ANALYSE, shared_analyse)
    setattr(routing, _FIELD, shared_field)
    return True
