"""Decode any audio PyAV can read (wav, mp3, m4a/aac, ogg/opus, amr, webm) to 16 kHz mono float32."""

from __future__ import annotations

import errno
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SAMPLE_RATE = 16_000

log = logging.getLogger(__name__)


class AudioDecodeError(ValueError):
    """The input is not audio that can be decoded; retrying will not help."""


def _too_long(name: str, seconds: float | None, max_duration_s: float) -> AudioDecodeError:
    """`seconds`: the length the file declares; None when decoding ran past the limit (the rest is unknown)."""
    length = f"{_hours(seconds)} long, " if seconds is not None else ""
    return AudioDecodeError(f"{name}: the recording is {length}longer than the {_hours(max_duration_s)} accepted "
                            "(STEWARD_SPEECH_MAX_DURATION_S)")


def _hours(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes else f"{seconds:.0f} s"


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """The duration the file declares (container or stream header), or None when it does not say."""
    if container.duration:
        return float(container.duration) / 1_000_000  # in av.time_base units
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


class _Damage:
    """Packets of a recording that did not decode: how many, and the first error (the reason given when
    nothing at all decodes)."""

    def __init__(self) -> None:
        self.packets = 0
        self.first: Exception | None = None
        self.cut = False  # the container itself could not be read further


def _frames(container: Any, stream: Any, damage: _Damage) -> Iterator[Any]:
    """The stream's decoded frames. A packet that does not decode (a dropout in a recorder's file, an AMR file
    cut mid-frame) is skipped, as players skip it, instead of failing the whole call; a container that cannot
    be read past some point ends the stream there. `damage` counts both."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            damage.cut, damage.first = True, damage.first or exc
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:  # InvalidDataError, PatchWelcomeError (AMR)...
            damage.packets += 1
            damage.first = damage.first or exc
            continue
        yield from frames


# Errors of the moment, not of the recording: out of file descriptors or memory, an I/O error of a network
# store, a permission to fix. Passed on as they are (not AudioDecodeError, which fails a job for good).
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO, errno.EACCES, errno.EAGAIN, errno.ENOMEM})


def _resampled(frames: Iterator[Any], sample_rate: int) -> Iterator[Any]:
    """`frames` as s16 mono at `sample_rate`. A recording whose format changes midway (two recordings joined
    end to end, `cat a.mp3 b.mp3`, at other rates or channel counts) gets a new resampler at each change,
    after the old one is flushed: one resampler refused the second part ("Frame does not match")."""
    import av

    resampler, setup = None, None
    for frame in frames:
        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if resampler is not None and kind != setup:
            yield from resampler.resample(None)
            resampler = None
        if resampler is None:
            resampler, setup = av.AudioResampler(format="s16", layout="mono", rate=sample_rate), kind
        yield from resampler.resample(frame)
    if resampler is not None:
        yield from resampler.resample(None)


def decode_audio(source: str | Path | bytes | BinaryIO, *, sample_rate: int = SAMPLE_RATE,
                 max_duration_s: float | None = None) -> np.ndarray:
    """The first audio stream of `source` as mono float32 samples in [-1, 1] at `sample_rate`.

    Audio longer than `max_duration_s` (default: STEWARD_SPEECH_MAX_DURATION_S) is refused with an
    AudioDecodeError: a few MB of a low-bitrate codec can hold hours, which decode to GBs. Packets that do
    not decode are skipped (logged); the recording is refused only when nothing of it decodes.
    """
    import av  # deferred: keeps `steward --help` fast

    if max_duration_s is None:
        from api.settings import get_settings

        max_duration_s = get_settings().speech_max_duration_s
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    name = str(source) if isinstance(source, str | Path) else "audio"
    max_samples = int(max_duration_s * sample_rate)
    buffer = np.empty(0, dtype=np.float32)
    filled = 0
    damage = _Damage()
    try:
        with av.open(source if not isinstance(source, Path) else str(source), mode="r", metadata_errors="ignore") \
                as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{name}: no audio stream found; send a sound recording "
                                       "(wav, mp3, m4a, ogg/opus, amr, webm)")
            stream = container.streams.audio[0]
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_duration_s:
                raise _too_long(name, declared, max_duration_s)
            # Sized from the header when it has one (one second spare), else grown as samples come.
            buffer = np.empty(min(int((declared or 60) * sample_rate) + sample_rate, max_samples + 1),
                              dtype=np.float32)
            for out in _resampled(_frames(container, stream, damage), sample_rate):
                # s16, as faster-whisper decodes, so that the samples are the same as its own
                chunk = out.to_ndarray().reshape(-1)
                if filled + chunk.size > max_samples:
                    raise _too_long(name, None, max_duration_s)
                if filled + chunk.size > buffer.size:
                    # realloc: a large block grows in place (mremap), not copied beside the old one
                    buffer.resize(min(max(filled + chunk.size, buffer.size * 3 // 2), max_samples + 1),
                                  refcheck=False)
                buffer[filled:filled + chunk.size] = chunk
                filled += chunk.size
    except AudioDecodeError:
        raise
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"{name}: file not found") from exc
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:  # the machine, not the file: a retry may read it (the worker retries)
            raise
        reason = exc.strerror or str(exc)
        raise AudioDecodeError(f"{name}: cannot decode audio ({reason}); the file is corrupt or not a "
                               "supported format") from exc
    except (av.error.FFmpegError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioDecodeError(f"{name}: cannot decode audio ({reason}); the file is corrupt or not a "
                               "supported format") from exc
    if filled == 0 and damage.first is not None:
        reason = getattr(damage.first, "strerror", None) or str(damage.first)
        raise AudioDecodeError(f"{name}: cannot decode audio ({reason}); the file is corrupt or not a "
                               "supported format")
    if filled == 0:
        raise AudioDecodeError(f"{name}: the audio stream holds no samples")
    if damage.first is not None:
        log.warning("%s: %d damaged audio packet(s) skipped%s; %.1f s decoded (%s)", name, damage.packets,
                    ", and the file could not be read to its end" if damage.cut else "", filled / sample_rate,
                    damage.first)
    buffer.resize(filled, refcheck=False)  # in place: no view of it exists
    buffer /= 32768.0
    return buffer
