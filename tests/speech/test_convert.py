"""CTranslate2 -> openai-whisper checkpoint conversion, checked on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from speech._vendor import whisper
from speech.convert import convert_variables, ct2_to_openai_checkpoint
from speech.ct2 import Ct2FormatError
from tests.speech.ct2_writer import tiny_whisper, write_model_bin


def test_dimensions_and_fused_projections_are_unpacked() -> None:
    v = tiny_whisper(state=8, heads=2, layers=2, vocab=12)
    dims, state = convert_variables(v)
    assert dims == {"n_mels": 4, "n_audio_ctx": 6, "n_audio_state": 8, "n_audio_head": 2, "n_audio_layer": 2,
                    "n_vocab": 12, "n_text_ctx": 5, "n_text_state": 8, "n_text_head": 2, "n_text_layer": 2}
    fused = v["decoder/layer_1/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(state["decoder.blocks.1.attn.query.weight"], fused[:8])
    np.testing.assert_array_equal(state["decoder.blocks.1.attn.key.weight"], fused[8:16])
    np.testing.assert_array_equal(state["decoder.blocks.1.attn.value.weight"], fused[16:])
    kv = v["decoder/layer_0/attention/linear_1/weight"]
    np.testing.assert_array_equal(state["decoder.blocks.0.cross_attn.key.weight"], kv[:8])
    np.testing.assert_array_equal(state["decoder.blocks.0.cross_attn.value.weight"], kv[8:])
    assert "decoder.blocks.0.attn.key.bias" not in state


def test_the_checkpoint_loads_into_openai_whisper_strictly(tmp_path: Path) -> None:
    model_dir = tmp_path / "ct2"
    model_dir.mkdir()
    v = tiny_whisper()
    write_model_bin(model_dir / "model.bin", v, aliases={"decoder/projection/weight": "decoder/embeddings/weight"})
    target = tmp_path / "tiny.pt"
    ct2_to_openai_checkpoint(model_dir, target)
    model = whisper.load_model(str(target), device="cpu")  # strict load_state_dict: every key, every shape
    assert model.dims.n_text_layer == 2
    embedding = torch.from_numpy(v["decoder/embeddings/weight"].astype(np.float32))
    assert torch.equal(model.decoder.token_embedding.weight.detach(), embedding)
    # Whisper ties the output projection to the embedding: logits are x @ embedding.T.
    tokens = torch.tensor([[1, 2, 3]])
    audio_features = model.embed_audio(torch.zeros(1, 4, 12))
    assert model.logits(tokens, audio_features).shape == (1, 3, 12)


def test_a_key_bias_means_it_is_not_whisper() -> None:
    v = tiny_whisper()
    v["encoder/layer_0/self_attention/linear_0/bias"][8] = 1
    with pytest.raises(Ct2FormatError, match="key bias is not zero"):
        convert_variables(v)


def test_a_quantized_model_cannot_be_converted() -> None:
    v = tiny_whisper() | {"encoder/layer_0/ffn/linear_0/weight_scale": np.ones(32, dtype=np.float32)}
    with pytest.raises(Ct2FormatError, match="quantized"):
        convert_variables(v)
