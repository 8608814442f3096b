"""Turn a CTranslate2 Whisper model into an openai-whisper checkpoint (`{"dims", "model_state_dict"}`).

The CTranslate2 layout differs from PyTorch's in three places: self-attention q/k/v are one fused
matrix (`linear_0`), cross-attention k/v another (`linear_1`), and the key projection's bias, which
Whisper does not have, is stored as zeros. The output projection is tied to the token embedding.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from speech.ct2 import Ct2FormatError, read_model_bin


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    indices = {int(m.group(1)) for name in variables if (m := re.match(rf"{prefix}/layer_(\d+)/", name))}
    if not indices or sorted(indices) != list(range(len(indices))):
        raise Ct2FormatError(f"no consecutive {prefix} layers found: is this a Whisper model?")
    return len(indices)


def _heads(variables: dict[str, np.ndarray], prefix: str, state: int) -> int:
    stored = variables.get(f"{prefix}/num_heads")
    return int(stored) if stored is not None else state // 64


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise Ct2FormatError(f"a fused projection of {array.shape[0]} rows cannot split in {parts}")
    return list(np.split(array, parts, axis=0))


def _attention(v: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray], *,
               cross: bool) -> None:
    if cross:
        query_w, query_b = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        key_w, value_w = _split(v[f"{src}/linear_1/weight"], 2)
        key_b, value_b = _split(v[f"{src}/linear_1/bias"], 2)
        out_w, out_b = v[f"{src}/linear_2/weight"], v[f"{src}/linear_2/bias"]
    else:
        query_w, key_w, value_w = _split(v[f"{src}/linear_0/weight"], 3)
        query_b, key_b, value_b = _split(v[f"{src}/linear_0/bias"], 3)
        out_w, out_b = v[f"{src}/linear_1/weight"], v[f"{src}/linear_1/bias"]
    if np.any(key_b != 0):
        raise Ct2FormatError(f"{src}: the key bias is not zero; this is not a Whisper conversion")
    out |= {f"{dst}.query.weight": query_w, f"{dst}.query.bias": query_b, f"{dst}.key.weight": key_w,
            f"{dst}.value.weight": value_w, f"{dst}.value.bias": value_b,
            f"{dst}.out.weight": out_w, f"{dst}.out.bias": out_b}


def _norm(v: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _mlp(v: dict[str, np.ndarray], src: str, dst: str, out: dict[str, np.ndarray]) -> None:
    _norm(v, f"{src}/layer_norm", f"{dst}.mlp_ln", out)
    for i, j in ((0, 0), (1, 2)):
        out[f"{dst}.mlp.{j}.weight"] = v[f"{src}/linear_{i}/weight"]
        out[f"{dst}.mlp.{j}.bias"] = v[f"{src}/linear_{i}/bias"]


def convert_variables(v: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The openai-whisper dimensions and state dict (as numpy arrays) of CTranslate2 variables."""
    try:
        embedding = v["decoder/embeddings/weight"]
        conv1 = v["encoder/conv1/weight"]
        audio_pos = v["encoder/position_encodings/encodings"]
        text_pos = v["decoder/position_encodings/encodings"]
    except KeyError as exc:
        raise Ct2FormatError(f"missing variable {exc}: this is not a CTranslate2 Whisper model") from exc
    if any(name.endswith("weight_scale") for name in v):
        raise Ct2FormatError("the model is quantized (int8/int16); convert a float16 or float32 model")
    audio_state, text_state = int(conv1.shape[0]), int(embedding.shape[1])
    dims = {"n_mels": int(conv1.shape[1]), "n_audio_ctx": int(audio_pos.shape[0]), "n_audio_state": audio_state,
            "n_audio_head": _heads(v, "encoder", audio_state), "n_audio_layer": _layers(v, "encoder"),
            "n_vocab": int(embedding.shape[0]), "n_text_ctx": int(text_pos.shape[0]), "n_text_state": text_state,
            "n_text_head": _heads(v, "decoder", text_state), "n_text_layer": _layers(v, "decoder")}
    out: dict[str, np.ndarray] = {"encoder.positional_embedding": audio_pos}
    for i in (1, 2):
        out[f"encoder.conv{i}.weight"] = v[f"encoder/conv{i}/weight"]
        out[f"encoder.conv{i}.bias"] = v[f"encoder/conv{i}/bias"]
    for i in range(dims["n_audio_layer"]):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _attention(v, f"{src}/self_attention", f"{dst}.attn", out, cross=False)
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", out)
        _mlp(v, f"{src}/ffn", dst, out)
    _norm(v, "encoder/layer_norm", "encoder.ln_post", out)
    out["decoder.positional_embedding"] = text_pos
    out["decoder.token_embedding.weight"] = embedding
    for i in range(dims["n_text_layer"]):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _attention(v, f"{src}/self_attention", f"{dst}.attn", out, cross=False)
        _norm(v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", out)
        _attention(v, f"{src}/attention", f"{dst}.cross_attn", out, cross=True)
        _norm(v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", out)
        _mlp(v, f"{src}/ffn", dst, out)
    _norm(v, "decoder/layer_norm", "decoder.ln", out)
    return dims, out


def ct2_to_openai_checkpoint(model_dir: Path, target: Path) -> None:
    """Write the openai-whisper checkpoint of the CTranslate2 model in `model_dir` to `target`."""
    try:
        import torch  # the openai extra; imported here so the default install never needs it
    except ImportError as exc:
        from speech.model_store import OPENAI_EXTRA, ModelError

        raise ModelError(f"{OPENAI_EXTRA} (to convert {model_dir}; {exc})") from exc

    dims, arrays = convert_variables(read_model_bin(model_dir / "model.bin"))
    state: dict[str, Any] = {name: torch.from_numpy(np.array(a, copy=True)) for name, a in arrays.items()}
    torch.save({"dims": dims, "model_state_dict": state}, target)
