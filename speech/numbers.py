"""Numbers in addresses, dates and codes written as digits: 三号楼二单元五零一室 -> 3号楼2单元501室.

Only two shapes are rewritten, because elsewhere Chinese numerals are words (一下, 一点, 两个人):
- three or more digit names in a row (五零一, 一三八...): room, phone and work-order numbers, years;
- a cardinal number (十六, 二十三, 三) right before an address or date unit (号 楼 栋 幢 单元 层 室 月 日 度).

Then a room number's 室 that was heard as another "shi" (501式, 1202市) right after a building or
entrance number (3号楼2单元501式) is written 室: in that place nothing else is said.
"""

from __future__ import annotations

import re

_DIGITS = {"零": "0", "〇": "0", "幺": "1", "一": "1", "二": "2", "两": "2", "三": "3", "四": "4", "五": "5",
           "六": "6", "七": "7", "八": "8", "九": "9"}
_DIGIT_RUN = re.compile("[零〇幺一二三四五六七八九]{3,}")
_UNITS = "号|楼|栋|幢|单元|层|室|月|日|度"
# A room number: digits right after "<digits>单元" (or 号楼, 楼, 栋, 幢), then the character heard for 室.
_ROOM = re.compile(r"(\d+(?:单元|号楼|楼|栋|幢))(\d{2,4})([\u4e00-\u9fff])")
# Not right after a digit: 13800138000三号楼 must not become one 12-digit run.
_CARDINAL = re.compile(rf"(?<![0-9０-９零〇一二三四五六七八九十百两第])([一二三四五六七八九十两]{{1,4}})(?={_UNITS})")


def _cardinal(numeral: str) -> str | None:
    """The value of 一..九十九 (with 十), or None when it is not a plain cardinal."""
    if "十" not in numeral:
        return _DIGITS[numeral] if len(numeral) == 1 else None
    tens, _, ones = numeral.partition("十")
    if len(tens) > 1 or len(ones) > 1 or "十" in ones:
        return None
    value = (int(_DIGITS[tens]) if tens else 1) * 10 + (int(_DIGITS[ones]) if ones else 0)
    return str(value)


def _replace_cardinal(match: re.Match[str]) -> str:
    numeral = match.group(1)
    following = match.string[match.end():match.end() + 1]
    # 一度 (once) and 两度 (twice) are words; a temperature is said with a number like 十六度.
    if following == "度" and numeral in ("一", "两"):
        return numeral
    value = _cardinal(numeral)
    return value if value is not None else numeral


def _replace_room(match: re.Match[str]) -> str:
    from pypinyin import Style, pinyin

    unit, number, heard = match.groups()
    # 是 and 时 are words that can follow a number ("501是我家"); any other "shi" there is 室.
    if heard not in "室是时" and "shi" in pinyin(heard, style=Style.NORMAL, heteronym=True)[0]:
        heard = "室"
    return unit + number + heard


def normalize_numbers(text: str) -> str:
    """Digits for spelled-out numbers in addresses, dates, temperatures and codes."""
    text = _DIGIT_RUN.sub(lambda m: "".join(_DIGITS[c] for c in m.group(0)), text)
    text = _CARDINAL.sub(_replace_cardinal, text)
    return _ROOM.sub(_replace_room, text)
