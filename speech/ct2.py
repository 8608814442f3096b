"""Read a CTranslate2 `model.bin` into numpy arrays (the documented little-endian layout)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

# CTranslate2 dtype ids, in the order of its `DataType` enum.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BFLOAT16 = 5


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise Ct2FormatError("unexpected end of file: the model.bin is truncated; assemble it again")
    return data


def _u32(f: BinaryIO) -> int:
    return int(struct.unpack("<I", _read(f, 4))[0])


def _u8(f: BinaryIO) -> int:
    return _read(f, 1)[0]


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<H", _read(f, 2))
    raw = _read(f, length)
    return raw.rstrip(b"\0").decode("utf-8")


def read_model_bin(path: Path) -> dict[str, np.ndarray]:
    """Every variable of the model, by name; aliases point at the same array as their target."""
    variables: dict[str, np.ndarray] = {}
    with path.open("rb") as f:
        version = _u32(f)
        if version < 5:
            raise Ct2FormatError(f"model.bin version {version} is too old (need 5 or newer)")
        _string(f)  # model spec name, e.g. "WhisperSpec"
        _u32(f)  # spec revision
        for _ in range(_u32(f)):
            name = _string(f)
            rank = _u8(f)
            shape = struct.unpack(f"<{rank}I", _read(f, 4 * rank)) if rank else ()
            dtype_id = _u8(f)
            nbytes = _u32(f)
            raw = _read(f, nbytes)
            if dtype_id == _BFLOAT16:
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = bits.view(np.float32)
            elif dtype_id in _DTYPES:
                array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
            else:
                raise Ct2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
            variables[name] = array.reshape(shape)
        for _ in range(_u32(f)):
            alias, target = _string(f), _string(f)
            if target not in variables:
                raise Ct2FormatError(f"alias {alias!r} points at missing variable {target!r}")
            variables[alias] = variables[target]
    return variables
