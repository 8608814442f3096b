"""What both engines do with the groups of speech VAD found: decode each, find the speech a window lost and
decode it again in short pieces, and give the times back in the original recording.

Whisper decodes 30 s windows. Now and then a window comes back as one short sentence stamped over the whole
window: when every decode at temperature 0 fails its checks (a repeated sentence looks like a loop to the
compression-ratio check), the fallback samples at higher temperatures, and among the failed results the
pick prefers any under the compression-ratio limit, whatever its log-probability: a short wrong sentence
is. Seen once in CI, on a CPU whose int8 kernels decoded differently: 25 s of a 33 s call became
"供暖管家您好，3号楼耳单家公知。". Both engines share the rule here: a segment of at least
`MIN_SPAN_S` seconds of speech (silence was removed before decoding) that holds fewer than `MAX_RATE`
characters a second is decoded again in pieces of at most `PIECE_S` seconds cut at pauses; the pieces
replace it when they hold more text (leaving out what Whisper itself would call silence). The hotline clips
of the speech benchmark are spoken at 3.7-4.9 characters per second of speech, so the rule leaves a slow
speaker well alone; a window that lost most of its speech falls far under it (the CI window: 14 characters
in 30 s).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import numpy as np

from speech.audio import SAMPLE_RATE
from speech.engines.base import Segment
from speech.vad import SpeechGroup, speech_groups

log = logging.getLogger(__name__)

MIN_SPAN_S = 8.0
MAX_RATE = 1.0  # characters per second of speech
PIECE_S = 10.0
PIECE_SILENCE_MS = 300  # a pause this long may cut a piece (VAD's default, 2 s, rarely occurs inside a window)
NO_SPEECH_PROB, LOG_PROB_THRESHOLD = 0.6, -1.0  # Whisper's defaults for "this window was silence"

_NOT_SPOKEN = re.compile(r"[\W_]+")  # punctuation and spaces: what a speaker does not say


def spoken_chars(text: str) -> int:
    return len(_NOT_SPOKEN.sub("", text))


def is_dropout(segment: Segment) -> bool:
    """Too little text for its stretch of speech."""
    span = segment.end - segment.start
    return span >= MIN_SPAN_S and spoken_chars(segment.text) < MAX_RATE * span


def decode_groups(groups: Iterable[SpeechGroup], decode: Callable[[np.ndarray], Iterable[Segment]]
                  ) -> Iterator[Segment]:
    """The segments of every group, dropouts decoded again, times in the original recording. `decode` gives
    the segments of speech audio, times in that audio (an engine's one call into its model)."""
    for group in groups:
        for s in recover(decode(group.audio), group.audio, decode):
            yield _shifted(s, 0.0, group)


def recover(segments: Iterable[Segment], audio: np.ndarray,
            decode: Callable[[np.ndarray], Iterable[Segment]]) -> Iterator[Segment]:
    """`segments` of `audio` (times in `audio`), with each dropout replaced by `decode` of its pieces when that
    gives more text. `decode` returns the segments of a piece, times in the piece.

    A stretch of at least `MIN_SPAN_S` seconds that no segment covers is a dropout with no text: a window can
    also come back with nothing at all (CI saw a call's first 30 s of speech return no segment, and the
    transcript start at 30 s). The audio here is speech (VAD removed the silence), so such a gap lost it."""
    cursor = 0.0
    for segment in segments:
        if segment.start - cursor >= MIN_SPAN_S:
            yield from _again(_gap(cursor, segment.start), audio, decode)
        cursor = max(cursor, segment.end)
        if not is_dropout(segment):
            yield segment
            continue
        yield from _again(segment, audio, decode)
    total = len(audio) / SAMPLE_RATE
    if total - cursor >= MIN_SPAN_S:
        yield from _again(_gap(cursor, total), audio, decode)


def _gap(start: float, end: float) -> Segment:
    return Segment(start=start, end=end, text="", avg_logprob=0.0, no_speech_prob=0.0)


def _again(segment: Segment, audio: np.ndarray, decode: Callable[[np.ndarray], Iterable[Segment]]
           ) -> Iterator[Segment]:
    """The dropout `segment` decoded again in pieces, if that gives more text; else the segment (a gap's empty
    stand-in is dropped)."""
    first, last = int(segment.start * SAMPLE_RATE), int(segment.end * SAMPLE_RATE)
    again: list[Segment] = []
    for piece in speech_groups(audio[first:last], max_group_s=PIECE_S, min_silence_ms=PIECE_SILENCE_MS,
                               max_chunk_s=PIECE_S):
        seconds = len(piece.audio) / SAMPLE_RATE
        again.extend(_shifted(_within(s, seconds), segment.start, piece) for s in decode(piece.audio)
                     if not _silence(s))
    recovered = sum(spoken_chars(s.text) for s in again)
    # lengths only: the text is a resident's words (docs/security.md)
    log.warning("a %.1f s stretch of speech came back as %d characters; decoded again in pieces: %d",
                segment.end - segment.start, spoken_chars(segment.text), recovered)
    if recovered > spoken_chars(segment.text):
        yield from again
    elif segment.text:
        yield segment


def _silence(segment: Segment) -> bool:
    """Whisper's own rule for a window that held no speech (what it says there is made up): likely no speech
    and a low confidence. A piece of noise VAD let through must not win on its made-up text."""
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOG_PROB_THRESHOLD


def _within(segment: Segment, seconds: float) -> Segment:
    """`segment` with its times inside [0, `seconds`]: a piece's last timestamp can run past its end."""
    return _retimed(segment, lambda t, is_end=False: min(max(t, 0.0), seconds))


def _shifted(segment: Segment, offset: float, piece: SpeechGroup) -> Segment:
    """A segment of a group's audio with times in the audio the group was cut from (`offset` seconds into
    it)."""
    return _retimed(segment, lambda t, is_end=False: offset + piece.original_time(t, is_end=is_end))


def _retimed(segment: Segment, at: Callable[..., float]) -> Segment:
    """`segment` and its words with every time t replaced by `at(t)` (`is_end=True` for an end)."""
    words = None
    if segment.words:
        words = tuple(replace(w, start=at(w.start), end=at(w.end, is_end=True)) for w in segment.words)
    return replace(segment, start=at(segment.start), end=at(segment.end, is_end=True), words=words)
