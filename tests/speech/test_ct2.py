"""Reading CTranslate2 model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speech.ct2 import Ct2FormatError, read_model_bin
from tests.speech.ct2_writer import write_model_bin


def test_reads_variables_of_every_dtype_and_resolves_aliases(tmp_path: Path) -> None:
    variables = {"a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
                 "b/scale": np.array([1.5, -2.0], dtype=np.float32),
                 "c/ids": np.array([[1, -2], [3, 4]], dtype=np.int32),
                 "num_heads": np.array(8, dtype=np.int16), "flag": np.array(1, dtype=np.int8)}
    path = tmp_path / "model.bin"
    write_model_bin(path, variables, aliases={"tied/weight": "a/weight"})
    read = read_model_bin(path)
    assert set(read) == {*variables, "tied/weight"}
    for name, array in variables.items():
        assert read[name].dtype == array.dtype
        np.testing.assert_array_equal(read[name], array)
    assert read["tied/weight"] is read["a/weight"]
    assert int(read["num_heads"]) == 8


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    write_model_bin(path, {"w": np.ones((64, 64), dtype=np.float16)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(Ct2FormatError, match="truncated"):
        read_model_bin(path)


def test_an_alias_to_nothing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    write_model_bin(path, {"w": np.ones(2, dtype=np.float32)}, aliases={"x": "missing"})
    with pytest.raises(Ct2FormatError, match="missing variable"):
        read_model_bin(path)
