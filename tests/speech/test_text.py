"""Simplified conversion, punctuation and the character error rate."""

from __future__ import annotations

import pytest

from speech.text import (
    cer,
    edit_distance,
    half_width,
    normalize_for_cer,
    numbers_as_digits,
    to_simplified,
    zh_punctuation,
)


def test_traditional_characters_become_simplified() -> None:
    assert to_simplified("暖氣片漏水了，請盡快派人") == "暖气片漏水了，请尽快派人"


def test_full_width_digits_and_letters_become_ascii_and_chinese_punctuation_stays() -> None:
    """Regression: a supervisor's IME in full-width mode wrote ３号楼５０１室 and Ｂ座, which a search for 501 or
    b座 did not find; the pipeline and corrections now write every transcript in one form."""
    assert to_simplified("３号楼５０１室暖氣不熱，Ｂ座ｂ？！（）：；、。") == "3号楼501室暖气不热，B座b？！（）：；、。"
    assert half_width("０９ＡＺａｚ＃％＿") == "09AZaz＃％＿"  # digits and letters only


def test_ascii_punctuation_next_to_chinese_becomes_full_width() -> None:
    assert zh_punctuation("您好,我家暖气不热,需要排气吗?") == "您好，我家暖气不热，需要排气吗？"
    assert zh_punctuation("室温16.5度,不达标") == "室温16.5度，不达标"  # a decimal point stays
    assert zh_punctuation("打开 进水阀") == "打开进水阀"


@pytest.mark.parametrize(("a", "b", "distance"), [("", "", 0), ("abc", "", 3), ("排气阀", "排气法", 1),
                                                   ("工单号", "工单", 1), ("kitten", "sitting", 3)])
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert edit_distance(a, b) == distance
    assert edit_distance(b, a) == distance


def test_cer_ignores_punctuation_spaces_and_script() -> None:
    assert cer("您好，暖气漏水了。", "您好 暖氣漏水了") == 0.0
    assert cer("排气阀", "排气法") == pytest.approx(1 / 3)
    assert cer("", "") == 0.0
    assert cer("", "多余") == 1.0


def test_cer_with_numbers_normalised_scores_digits_like_numerals() -> None:
    reference, hypothesis = "三号楼二单元五零一室", "3号楼2单元501室"
    assert cer(reference, hypothesis) == 0.5
    assert cer(reference, hypothesis, numbers=True) == 0.0
    assert normalize_for_cer("工单号：2025-1108", numbers=True) == "工单号20251108"


@pytest.mark.parametrize(("reference", "hypothesis"), [
    ("今年的注水时间是十一月五号", "今年的注水时间是11月5号"),
    ("我这边量的是十六度", "我这边量的是16度"),
    ("工单号是二零二五一一零八零三", "工单号是2025110803"),
    ("五百零一室", "501室"),
    ("每周要回访一次", "每周要回访1次"),  # normalised on both sides, words included: symmetric, so harmless
])
def test_normalised_cer_brings_numbers_to_digits_on_both_sides(reference: str, hypothesis: str) -> None:
    assert cer(reference, hypothesis, numbers=True) == 0.0
    assert cer(hypothesis, reference, numbers=True) == 0.0
    assert cer(reference, hypothesis) > 0  # the raw CER still counts them


def test_normalised_cer_still_counts_wrong_numbers_and_words() -> None:
    assert cer("三号楼二单元五零一室", "3号楼2单元502室", numbers=True) == pytest.approx(1 / 10)
    assert cer("暖气漏水了", "暖气落水了", numbers=True) == pytest.approx(1 / 5)
    assert numbers_as_digits("统一") == "统1"  # why it is for scoring only, never for transcripts
