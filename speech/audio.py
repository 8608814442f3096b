"""Decode any audio PyAV can read (wav, mp3, m4a/aac, ogg/opus, amr, webm) to 16 kHz mono float32."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16_000


class AudioDecodeError(ValueError):
    """The input is not audio that can be decoded; retrying will not help."""


def decode_audio(source: str | Path | bytes | BinaryIO, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of `source` as mono float32 samples in [-1, 1] at `sample_rate`."""
    import av  # deferred: keeps `steward --help` fast

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    name = str(source) if isinstance(source, str | Path) else "audio"
    chunks: list[np.ndarray] = []
    try:
        with av.open(source if not isinstance(source, Path) else str(source), mode="r", metadata_errors="ignore") \
                as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{name}: no audio stream found; send a sound recording "
                                       "(wav, mp3, m4a, ogg/opus, amr, webm)")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"{name}: file not found") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioDecodeError(f"{name}: cannot decode audio ({reason}); the file is corrupt or not a "
                               "supported format") from exc
    if not chunks:
        raise AudioDecodeError(f"{name}: the audio stream holds no samples")
    samples = np.concatenate(chunks)
    if samples.size == 0:
        raise AudioDecodeError(f"{name}: the audio stream holds no samples")
    return samples.astype(np.float32) / 32768.0
