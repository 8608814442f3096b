"""The wire records of the pull (sync/registry.py): built per row by a function with the columns' finishing
steps written out (`_record_builder`), giving exactly what the steps give one by one."""

from __future__ import annotations

import uuid

import pytest

from sync.registry import TABLES, _record_builder, _timestamp_text, _uuid_text, _wire_plan


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("spec", TABLES, ids=lambda spec: spec.name)
def test_a_record_is_what_each_columns_finishing_step_gives(spec, dialect: str) -> None:
    shape = _wire_plan(spec.table, dialect)
    steps = dict(shape.converters)
    if dialect == "sqlite":
        assert steps  # SQLite's UUIDs and timestamps are finished in Python: the inlined steps are exercised
    raw = [uuid.uuid4().hex if steps.get(i) is _uuid_text else "2026-12-01 08:00:00.250000"
           if steps.get(i) is _timestamp_text else f"value {i}" for i in range(len(shape.names))]
    expected = {name: steps[i](raw[i]) if i in steps else raw[i] for i, name in enumerate(shape.names)}
    assert shape.record(raw) == expected
    assert shape.record(("before", *raw), 1) == expected  # the record's columns after another one
    assert shape.record([None] * len(raw)) == dict.fromkeys(shape.names)
    if dialect == "sqlite":
        assert expected["id"] == str(uuid.UUID(raw[0]))  # the dashed form
        assert any(v == "2026-12-01T08:00:00.250000+00:00" for v in expected.values())


def test_a_step_that_is_not_inlined_is_called_and_a_bad_name_refused() -> None:
    build = _record_builder(("id", "temp_c"), ((1, lambda v: v * 2),))
    assert build(("a", 3), 0) == {"id": "a", "temp_c": 6}
    with pytest.raises(ValueError):
        _record_builder(("id", "x}; import os; {"), ())
