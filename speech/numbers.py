"""Numbers in addresses, dates and codes written as digits: 三号楼二单元五零一室 -> 3号楼2单元501室.

Only two shapes are rewritten, because elsewhere Chinese numerals are words (一下, 一点, 两个人):
- three or more digit names in a row (五零一, 一三八...): room, phone and work-order numbers, years; not
  when a 十/百/千 follows (一五一十, 三七二十一, 九九八十一 are idioms and sums), nor a range of floors or
  days (二三四楼, 三四五天: consecutive digit names before a measure word). A last 一 that starts a word
  with the next character (五零一一直不热: 一直) is left to the word, and a mobile number said straight into
  more digit names (…七八一直, …七八三号楼) ends after its eleven digits;
- a cardinal number (十六, 二十三, 三) right before an address or date unit (号 楼 栋 幢 单元 层 室 月 日 度);
  not 两 before 楼/栋/幢/室/月/日 (两楼之间, 这两月: a count), nor 一 after 同/每/这/那/另/哪 (同一层),
  上/下/前/后 (上一层: the floor above; not where they end a word of time, 然后一号楼, 早上一楼, nor before 号楼
  or 室) or as a word's end (万一, 统一, 唯一), nor 一层 as a layer (一层灰) or one by one (一层一层). Nor a run
  of days (一..六 rising after 星期, 礼拜 or a 周 that is no name: 每周一三五, not 老周一三八…) or a doubled pair
  (七七八八) that no address mark and no group of a number said with pauses (一三九，八八八八，六六八八) is next to.

Then a room number's 室 that was heard as another "shi" (501式, 1202市) right after a building or
entrance number (3号楼2单元501式) is written 室, unless that character starts a word with the next one
(501实在太冷, 501始终不热, 502十分冷).
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from importlib import resources

_DIGITS = {"零": "0", "〇": "0", "幺": "1", "一": "1", "二": "2", "两": "2", "三": "3", "四": "4", "五": "5",
           "六": "6", "七": "7", "八": "8", "九": "9"}
# Possessive: a run followed by 十 must not match again one character shorter (三七二十一 is not 37二十一).
_DIGIT_RUN = re.compile("[零〇幺一二三四五六七八九]{3,}+(?![十百千万])")
# What a range of counts (二三四楼, 三四五天, 五六七个人) is followed by; not 号 or 室, where 三四五 is a number.
_COUNTED = set("楼层栋幢天个年月日次遍户家岁位人周")
_UNITS = "号|楼|栋|幢|单元|层|室|月|日|度"
# A mobile number's first two digits, and what follows an ID number's seventeen (its check character).
_MOBILE_START = re.compile("1[3-9]")
_ID_CHECK = set("Xx叉")
# How long a number that starts so is, when more digit names follow it straight (…六六六六三号楼): an ID number
# (region, birth date, then sequence and check digit), a mobile, a landline with a three-digit area code (010,
# 02x) and eight digits, or with a four-digit one (0531) and eight (seven would be one shorter, and is rarer).
_ID_START = re.compile(r"[1-9][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")
_RUN_ENDS = ((_ID_START, 18), (_MOBILE_START, 11), (re.compile("0(?:10|2[0-9])"), 11), (re.compile("0[3-9]"), 12))
# Groups of a number said with pauses, right before a run: digit names or digits, each followed by a comma or
# an enumeration comma (Whisper's pauses), back to the start of the number.
_GROUPS_BEFORE = re.compile("(?<![零〇幺一二三四五六七八九0-9])(?:[零〇幺一二三四五六七八九0-9]{2,}[，,、])+$")
# Words that start with 一 and often follow a number said aloud (五零一一直不热, 我家五零一一点都不热); their
# 一 is not the number's. Not 一号, 一楼, 一室...: there 一 is a digit of an address.
_ONE_WORDS = frozenset(
    "一" + c for c in "直点下定起般样共会些次遍阵旦切早趟向概边块道天晚宿周个再连动旁并同律共齐")
# A room number: digits right after "<digits>单元" (or 号楼, 楼, 栋, 幢), then the character heard for 室.
_ROOM = re.compile(r"(\d+(?:单元|号楼|楼|栋|幢))(\d{2,4})([\u4e00-\u9fff])")
# Not right after a digit: 13800138000三号楼 must not become one 12-digit run.
_CARDINAL = re.compile(rf"(?<![0-9０-９零〇一二三四五六七八九十百两第])([一二三四五六七八九十两]{{1,4}})(?={_UNITS})")
# 两 counts (两楼之间, 这两月); 2楼 and 2月 are said 二楼, 二月.
_TWO_COUNTS = set("楼栋幢室月日")
# After these, 一 is "one" or "the same", not floor or building 1 (同一层, 每一栋, 这一层, 另一栋), a relative
# floor (上一层, 下一层: the one above, below) or a word's last character (万一楼上漏水, 统一日期, 唯一楼梯).
_ONE_AFTER = set("同每这那另哪上下前后万统唯单逐之")
# 上/下/前/后 are a relative floor only as words of their own: as the end of a word of time (然后一号楼, 早上一楼,
# 之前一单元) they were read as 上一层 and building 1 stayed 一号楼; nor before 号楼 or 室, which no relative
# floor is followed by.
_RELATIVE = set("上下前后")
_TIME_WORDS = frozenset({"然后", "以后", "之后", "最后", "随后", "过后", "稍后", "午后", "饭后", "早上", "晚上",
                         "马上", "之前", "以前", "目前", "当前", "先前", "早前", "提前", "天前", "年前"})
_NOT_RELATIVE_UNITS = ("号楼", "室")
# 一层 before these is a layer (一层灰, 结了一层霜), not the first floor.
_LAYERS = set("灰土尘霜冰锈垢膜漆皮")


def _cardinal(numeral: str) -> str | None:
    """The value of 一..九十九 (with 十), or None when it is not a plain cardinal."""
    if "十" not in numeral:
        return _DIGITS[numeral] if len(numeral) == 1 else None
    tens, _, ones = numeral.partition("十")
    if len(tens) > 1 or len(ones) > 1 or "十" in ones:
        return None
    value = (int(_DIGITS[tens]) if tens else 1) * 10 + (int(_DIGITS[ones]) if ones else 0)
    return str(value)


def _groups_before(text: str, end: int) -> str:
    """The digits of the groups said just before `end` (一三八，零零一三，|八零零零…), as digits; '' if none."""
    found = _GROUPS_BEFORE.search(text[max(0, end - 40):end])
    if found is None:
        return ""
    return "".join(_DIGITS.get(c, c) for c in found.group(0) if c in _DIGITS or c in "0123456789")


# Days of the week said as digit names (每周一三五, 星期二四六): a list of days, not a number. Only a short rising
# run of 一..六 is a list of days, and 周 only as the word for week: 老周一三八零零一三八零零零 is Mr Zhou's mobile
# (any 周 before a run was read as a week, and his number stayed spoken and unmasked).
_WEEK = ("周", "星期", "礼拜")
_WEEKDAYS = "一二三四五六"
# Before 周, these make it a name (老周, 小周, 姓周), not a week.
_NAME_PREFIXES = set("老小阿姓叫")
# Where a run of four is a number all the same (a room 七七八八号, 3号楼七七八八): before or after these.
_NUMBER_MARKS = set("号楼室栋幢层单元户")


def _is_days(run: str, preceding: str) -> bool:
    """Whether `run` after `preceding` (its two characters before) is a list of days: 一..六 rising, after 星期,
    礼拜 or a 周 that is no name (每周一三五, 周二四六; not 老周一三八…, a phone number)."""
    if len(run) > len(_WEEKDAYS) or any(c not in _WEEKDAYS for c in run) or \
            any(_WEEKDAYS.index(a) >= _WEEKDAYS.index(b) for a, b in itertools.pairwise(run)):
        return False
    if preceding.endswith(_WEEK[1:]):
        return True
    return preceding.endswith("周") and preceding[-2:-1] not in _NAME_PREFIXES


def _replace_run(match: re.Match[str]) -> str:
    run = match.group(0)
    following = match.string[match.end():match.end() + 1]
    preceding = match.string[max(0, match.start() - 2):match.start()]
    if _is_days(run, preceding):
        return run  # 每周一三五: Mondays, Wednesdays and Fridays
    # Not after groups of a number said with pauses: 一三九，八八八八，六六八八 is a mobile whose last group is
    # doubled (it stayed spoken, and the masking saw no phone number).
    if (len(run) == 4 and run[0] == run[1] != run[2] == run[3] and following not in _NUMBER_MARKS
            and preceding[-1:] not in _NUMBER_MARKS and not _groups_before(match.string, match.start())):
        return run  # 七七八八, 三三两两: a doubled pair is a word (mostly done), not a number
    values = [int(_DIGITS[c]) for c in run]
    if following in _COUNTED and "零" not in run and all(b == a + 1 for a, b in itertools.pairwise(values)):
        return run  # 二三四楼: floors two to four
    digits = "".join(str(v) for v in values)
    # A number said in groups (一三八，零零一三，八零零零三号楼) is the groups before this run and the run: its
    # end is found from the whole number's start, or the next word's digit stayed on its last group (80003号楼)
    # and the masking saw no phone number there.
    before = _groups_before(match.string, match.start())
    whole = before + digits
    for start, length in _RUN_ENDS:
        # A number said straight into the next words (…七八一直没人接, …六六六六三号楼): its own digits, the
        # rest as spoken, so that it stays a number of its own (and is masked as one). A phone's start run to
        # eighteen digits, or seventeen and an X, is an ID number.
        # A last group of fewer than three digits is rather a list (一三五，一三六，一三七，一三八号: buildings).
        if start.match(whole) and len(before) + 3 <= length < len(whole) and (
                length == 18 or (len(whole) < 18 and following not in _ID_CHECK)):
            cut = length - len(before)
            return digits[:cut] + run[cut:]
    if run[-1] == "一" and run[-1] + following in _ONE_WORDS:
        # 五零一一直不热: the last 一 starts a word (一直, 一点, 一下), it is not the number's last digit.
        return _replace_run_text(run[:-1]) + run[-1]
    return digits


def _replace_run_text(run: str) -> str:
    """A run shortened by a word's first character: digits when three digit names are still left."""
    return "".join(_DIGITS[c] for c in run) if len(run) >= 3 else run


def _no_relative_floor(match: re.Match[str]) -> bool:
    """Whether the 上/下/前/后 before this 一 is no relative floor: the end of a word of time (然后, 早上, 之前),
    or 一 is followed by 号楼 or 室 (早上一号楼, but 上一层, 下一单元, 前一栋 stay)."""
    text, start = match.string, match.start()
    if text[start - 1:start] not in _RELATIVE:
        return False
    return text[start - 2:start] in _TIME_WORDS or text.startswith(_NOT_RELATIVE_UNITS, match.end())


def _replace_cardinal(match: re.Match[str]) -> str:
    numeral = match.group(1)
    following = match.string[match.end():match.end() + 1]
    preceding = match.string[match.start() - 1:match.start()]
    # 一度 (once) and 两度 (twice) are words; a temperature is said with a number like 十六度.
    if following == "度" and numeral in ("一", "两"):
        return numeral
    if (numeral == "两" and following in _TWO_COUNTS) or (numeral == "一" and preceding in _ONE_AFTER
                                                       and not _no_relative_floor(match)):
        return numeral
    if numeral == "一" and following == "层" and match.string[match.end() + 1:match.end() + 2] in _LAYERS:
        return numeral
    if numeral == "一" and following == "层" and (match.string[match.end() + 1:match.end() + 3] == "一层"
                                                   or match.string[match.start() - 2:match.start()] == "一层"):
        return numeral  # 一层一层地排查: floor by floor
    value = _cardinal(numeral)
    return value if value is not None else numeral


@lru_cache(maxsize=1)
def _shi_words() -> frozenset[str]:
    """Two-character words of jieba's dictionary (any frequency) whose first character can read "shi"."""
    words = set()
    with resources.files("jieba").joinpath("dict.txt").open("r", encoding="utf-8") as f:
        for line in f:
            word = line.split(" ", 1)[0]
            if len(word) == 2 and _reads_shi(word[0]):
                words.add(word)
    return frozenset(words)


@lru_cache(maxsize=4096)
def _reads_shi(char: str) -> bool:
    from pypinyin import Style, pinyin

    return "shi" in pinyin(char, style=Style.NORMAL, heteronym=True)[0]


def _replace_room(match: re.Match[str]) -> str:
    unit, number, heard = match.groups()
    following = match.string[match.end():match.end() + 1]
    # 是 and 时 are words that can follow a number ("501是我家"); so is any "shi" that starts a word with the
    # next character (501实在太冷, 501始终不热). Any other "shi" there is 室.
    if heard not in "室是时" and _reads_shi(heard) and heard + following not in _shi_words():
        heard = "室"
    return unit + number + heard


def normalize_numbers(text: str) -> str:
    """Digits for spelled-out numbers in addresses, dates, temperatures and codes."""
    text = _DIGIT_RUN.sub(_replace_run, text)
    text = _CARDINAL.sub(_replace_cardinal, text)
    return _ROOM.sub(_replace_room, text)
