"""Chinese text clean-up: Simplified characters, ASCII digits and letters, full-width punctuation, and the
character error rate."""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from typing import Any

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HALF_TO_FULL = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；", ".": "。"}
# ASCII punctuation touching a Chinese character (a decimal point between digits is left alone).
_ZH_PUNCT = re.compile(rf"(?<=[{_CJK}])\s*([,?!:;.])\s*|\s*([,?!:;])\s*(?=[{_CJK}])")
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}，。？！：；、])\s+(?=[{_CJK}])")
# Full-width digits and Latin letters (a Chinese IME's full-width mode: ３号楼５０１室, Ｂ座) as ASCII; full-width
# punctuation (，。？) is how Chinese is written and stays.
_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase
_HALF_WIDTH = str.maketrans("".join(chr(ord(c) + 0xFEE0) for c in _ALNUM), _ALNUM)


@lru_cache(maxsize=1)
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("t2s")


def half_width(text: str) -> str:
    """Full-width digits and Latin letters as ASCII (５０１ -> 501, Ｂ座 -> B座); punctuation untouched."""
    return text.translate(_HALF_WIDTH)


def to_simplified(text: str) -> str:
    """Traditional characters (Whisper's habit for `zh`) converted to Simplified with OpenCC, and full-width
    digits and letters to ASCII: the one form of a transcript's text, whoever wrote it (the pipeline, a
    supervisor's correction), and of a search query, so that 暖氣 finds 暖气 and ５０１ finds 501."""
    return half_width(str(_t2s().convert(text))) if text else text


def zh_punctuation(text: str) -> str:
    """Full-width punctuation next to Chinese characters, and no stray spaces between them."""
    text = _ZH_PUNCT.sub(lambda m: _HALF_TO_FULL[m.group(1) or m.group(2)], text)
    return _SPACE_BETWEEN_CJK.sub("", text).strip()


def strip_punctuation(text: str) -> str:
    """Only letters and digits (Unicode categories L and N), for scoring."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (character level)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@lru_cache(maxsize=1)
def _cn2an_transform() -> Any:
    import cn2an

    return cn2an.transform


def numbers_as_digits(text: str) -> str:
    """Every Chinese numeral in `text` as digits (cn2an): 五零一 -> 501, 十一月 -> 11月, 一次 -> 1次.

    For scoring only: it rewrites numerals that are words too (统一 -> 统1), which is harmless when both
    sides get it, and wrong in a transcript (see `speech.numbers` for the product's cautious rules).
    """
    return str(_cn2an_transform()(text, "cn2an")) if text else text


def normalize_for_cer(text: str, *, numbers: bool = False) -> str:
    """Simplified characters, no punctuation or spaces, lower case: what CER is computed on.

    With `numbers`, every numeral becomes digits first (the text normalisation Chinese ASR evaluations
    apply to reference and hypothesis alike), so that 五零一室 and 501室 score alike.
    """
    text = to_simplified(unicodedata.normalize("NFKC", text))
    if numbers:
        text = numbers_as_digits(text)
    return strip_punctuation(text).lower()


def cer(reference: str, hypothesis: str, *, numbers: bool = False) -> float:
    """Character error rate of `hypothesis` against `reference`, both normalised for scoring."""
    ref, hyp = normalize_for_cer(reference, numbers=numbers), normalize_for_cer(hypothesis, numbers=numbers)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
