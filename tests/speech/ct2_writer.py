"""Writes CTranslate2 `model.bin` files (the documented layout), to build tiny test models."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
              np.dtype("float16"): 4}


def _string(value: str) -> bytes:
    raw = value.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None) -> None:
    out = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, array in variables.items():
        array = np.array(array, order="C")  # (ascontiguousarray would make a scalar 1-d)
        out += [_string(name), struct.pack("<B", array.ndim), struct.pack(f"<{array.ndim}I", *array.shape),
                struct.pack("<B", _DTYPE_IDS[array.dtype]), struct.pack("<I", array.nbytes), array.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


def tiny_whisper(*, state: int = 8, heads: int = 2, layers: int = 2, vocab: int = 12, mels: int = 4,
                 audio_ctx: int = 6, text_ctx: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Random variables shaped and named like a CTranslate2 Whisper conversion."""
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float16)

    def attention(prefix: str, *, cross: bool) -> dict[str, np.ndarray]:
        if cross:
            kv_bias = r(2 * state)
            kv_bias[:state] = 0  # the key has no bias
            return {f"{prefix}/linear_0/weight": r(state, state), f"{prefix}/linear_0/bias": r(state),
                    f"{prefix}/linear_1/weight": r(2 * state, state), f"{prefix}/linear_1/bias": kv_bias,
                    f"{prefix}/linear_2/weight": r(state, state), f"{prefix}/linear_2/bias": r(state)}
        qkv_bias = r(3 * state)
        qkv_bias[state:2 * state] = 0
        return {f"{prefix}/linear_0/weight": r(3 * state, state), f"{prefix}/linear_0/bias": qkv_bias,
                f"{prefix}/linear_1/weight": r(state, state), f"{prefix}/linear_1/bias": r(state)}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/gamma": r(state), f"{prefix}/beta": r(state)}

    def ffn(prefix: str) -> dict[str, np.ndarray]:
        return norm(f"{prefix}/layer_norm") | {
            f"{prefix}/linear_0/weight": r(4 * state, state), f"{prefix}/linear_0/bias": r(4 * state),
            f"{prefix}/linear_1/weight": r(state, 4 * state), f"{prefix}/linear_1/bias": r(state)}

    v: dict[str, np.ndarray] = {
        "encoder/conv1/weight": r(state, mels, 3), "encoder/conv1/bias": r(state),
        "encoder/conv2/weight": r(state, state, 3), "encoder/conv2/bias": r(state),
        "encoder/position_encodings/encodings": r(audio_ctx, state),
        "encoder/num_heads": np.array(heads, dtype=np.int16),
        "decoder/embeddings/weight": r(vocab, state),
        "decoder/position_encodings/encodings": r(text_ctx, state),
        "decoder/num_heads": np.array(heads, dtype=np.int16),
    }
    for i in range(layers):
        e, d = f"encoder/layer_{i}", f"decoder/layer_{i}"
        v |= attention(f"{e}/self_attention", cross=False) | norm(f"{e}/self_attention/layer_norm") | ffn(f"{e}/ffn")
        v |= attention(f"{d}/self_attention", cross=False) | norm(f"{d}/self_attention/layer_norm")
        v |= attention(f"{d}/attention", cross=True) | norm(f"{d}/attention/layer_norm") | ffn(f"{d}/ffn")
    v |= {f"encoder/layer_norm/{k}": r(state) for k in ("gamma", "beta")}
    v |= {f"decoder/layer_norm/{k}": r(state) for k in ("gamma", "beta")}
    return v
