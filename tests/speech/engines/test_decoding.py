"""Speech a window lost is decoded again in pieces: the rule, the times, and the real engine recovering a
window that came back as the garbled sentence seen in CI."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import numpy as np
import pytest

from speech.audio import SAMPLE_RATE
from speech.engines import DecodeOptions, Segment
from speech.engines.decoding import MIN_SPAN_S, decode_groups, is_dropout, spoken_chars
from speech.pipeline import Pipeline
from speech.vad import speech_groups
from tests.speech.conftest import silence

CI_DROPOUT = "供暖管家您好，3号楼耳单家公知。"  # what 30 s of a 33 s call came back as, once in CI


def segment(start: float, end: float, text: str) -> Segment:
    return Segment(start=start, end=end, text=text, avg_logprob=-0.5, no_speech_prob=0.1)


@pytest.mark.parametrize(("start", "end", "text", "dropout"), [
    (0.0, 30.0, CI_DROPOUT, True),  # 14 characters in 30 s of speech
    (0.0, 16.9, "供暖管家您好，3号楼2单元501是暖气漏水了，请尽快派人上门维修。", False),  # 4 characters a second
    (0.0, MIN_SPAN_S - 0.1, "好的。", False),  # too short to judge: a short answer between pauses
    (0.0, 12.0, "...!?，。  ", True),  # punctuation and spaces are not speech
    (0.0, 12.0, "Hello.", True),
    (0.0, 12.0, "Please send someone to fix the radiator today.", False),
])
def test_a_dropout_is_too_little_text_for_its_stretch_of_speech(start: float, end: float, text: str,
                                                                 dropout: bool) -> None:
    assert is_dropout(segment(start, end, text)) is dropout


def test_spoken_characters_leave_out_punctuation_and_spaces() -> None:
    assert spoken_chars(CI_DROPOUT) == 14 and spoken_chars("a b, c!") == 3 and spoken_chars("——") == 0


def test_pieces_are_decoded_again_and_kept_only_when_they_hold_more_text(leak_audio: np.ndarray,
                                                                         valve_audio: np.ndarray,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Real speech for VAD to cut, a stand-in decoder (what it says is all this test controls)."""
    calls: list[float] = []

    def decode(audio: np.ndarray) -> Iterator[Segment]:
        seconds = len(audio) / SAMPLE_RATE
        calls.append(seconds)
        if len(calls) == 1:  # the whole group: one garbled sentence over all of it
            yield segment(0.0, seconds, CI_DROPOUT)
        else:  # a piece: a sentence over its first half, another over its second, stamped 2 s past its end
            yield segment(0.0, seconds / 2, "排气的时候先关上进水阀。")
            yield segment(seconds / 2, seconds + 2, "用排气钥匙慢慢拧开排气阀。")

    audio = np.concatenate([silence(3), leak_audio, silence(1), valve_audio, silence(1), leak_audio])
    groups = list(speech_groups(audio))
    with caplog.at_level(logging.WARNING, logger="speech.engines.decoding"):
        found = list(decode_groups(groups, decode))
    assert len(calls) >= 3 and all(c <= 10.5 for c in calls[1:])  # the group, then pieces of at most 10 s
    assert len(found) == 2 * (len(calls) - 1) and CI_DROPOUT not in "".join(s.text for s in found)
    assert "decoded again in pieces" in caplog.text
    # times are the original recording's: after the leading silence, in order, within the recording
    assert found[0].start >= 2.5 and found[-1].end <= len(audio) / SAMPLE_RATE + 0.1
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(found))
    assert all(s.start < s.end for s in found)

    calls.clear()

    def decode_worse(audio: np.ndarray) -> Iterator[Segment]:
        calls.append(len(audio) / SAMPLE_RATE)
        yield segment(0.0, len(audio) / SAMPLE_RATE, CI_DROPOUT if len(calls) == 1 else "嗯。")

    kept = list(decode_groups(groups, decode_worse))  # the pieces hold less: the first decode stays
    assert [s.text for s in kept] == [CI_DROPOUT] and len(calls) >= 3

    calls.clear()

    def decode_made_up(audio: np.ndarray) -> Iterator[Segment]:
        calls.append(len(audio) / SAMPLE_RATE)
        if len(calls) == 1:
            yield segment(0.0, len(audio) / SAMPLE_RATE, CI_DROPOUT)
        else:  # long text where Whisper itself says there was no speech: made up, never preferred
            yield Segment(start=0.0, end=len(audio) / SAMPLE_RATE, text="谢谢观看，请订阅我们的频道。" * 3,
                          avg_logprob=-1.4, no_speech_prob=0.9)

    kept = list(decode_groups(groups, decode_made_up))
    assert [s.text for s in kept] == [CI_DROPOUT] and len(calls) >= 3


def test_the_real_engine_recovers_a_window_that_lost_its_speech(faster_pipeline: Pipeline, leak_audio: np.ndarray,
                                                                valve_audio: np.ndarray,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI failure injected: the first decode of the call answers the garbled sentence over the whole of
    it; every decode after that is the real model's."""
    transcriber = faster_pipeline.transcriber
    real = transcriber._decode  # type: ignore[attr-defined]
    calls: list[float] = []

    def first_lost(audio: np.ndarray, options: DecodeOptions) -> Iterator[Segment]:
        calls.append(len(audio) / SAMPLE_RATE)
        if len(calls) == 1:
            return iter([segment(0.0, len(audio) / SAMPLE_RATE, CI_DROPOUT)])
        return real(audio, options)

    monkeypatch.setattr(transcriber, "_decode", first_lost)
    gap = silence(1)
    call = np.concatenate([silence(3), leak_audio, gap, valve_audio])
    segments, _ = transcriber.transcribe(call, faster_pipeline.options)
    found = list(segments)
    text = "".join(s.text for s in found)
    assert len(calls) >= 3, calls  # the call, then its pieces
    assert CI_DROPOUT not in text and all(w in text for w in ("供暖管家", "维修", "进水阀", "排气阀")), text
    assert found[0].start >= 2.5 and found[-1].end <= len(call) / SAMPLE_RATE + 0.1
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(found))


def test_speech_no_segment_covers_is_decoded_again(leak_audio: np.ndarray, valve_audio: np.ndarray) -> None:
    """Regression (CI): a window came back with no segment at all for its first 30 s of speech, and the
    transcript started at 30 s; only a segment with too little text counted as a dropout. A stretch of
    speech at least MIN_SPAN_S long that no segment covers is decoded again in pieces too."""
    calls: list[float] = []
    audio = np.concatenate([leak_audio, valve_audio, leak_audio])
    (group,) = speech_groups(np.concatenate([silence(1), audio, silence(1)]))
    seconds = len(group.audio) / SAMPLE_RATE
    assert seconds >= 2 * MIN_SPAN_S

    def decode(piece: np.ndarray) -> Iterator[Segment]:
        calls.append(len(piece) / SAMPLE_RATE)
        if len(calls) == 1:  # the whole group: text only for its last two seconds
            yield segment(seconds - 2, seconds, "影响休息。")
        else:
            yield segment(0.0, len(piece) / SAMPLE_RATE, "排气的时候先关上进水阀，用排气钥匙慢慢拧开排气阀。")

    found = list(decode_groups([group], decode))
    assert len(calls) >= 2 and found[-1].text == "影响休息。"
    assert len(found) >= 2 and found[0].start < 2.0, [(s.start, s.end, s.text) for s in found]
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(found))

    calls.clear()

    def decode_nothing_more(piece: np.ndarray) -> Iterator[Segment]:  # the pieces hold nothing either
        calls.append(len(piece) / SAMPLE_RATE)
        if len(calls) == 1:
            yield segment(seconds - 2, seconds, "影响休息。")

    assert [s.text for s in decode_groups([group], decode_nothing_more)] == ["影响休息。"]
