"""Masking personal numbers in transcripts: mainland mobiles, landlines, 18-digit ID numbers.

Who may read them unmasked (the `view_pii` right): admins and supervisors. Supervisors review, correct
and approve transcripts and call residents back, and a correction made on masked text would overwrite
the number with asterisks. Stewards see transcripts masked: they reach residents through the household
record, and a recording may hold other people's numbers (a neighbour, a relative's ID card). The
stored transcript always keeps the original.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from api.users.models import Role, User

VIEW_PII_ROLES = frozenset({Role.admin, Role.supervisor})
# The rules' edition: change it with any rule, and `steward db upgrade` rewrites the masked copies stored under
# the old ones (`speech.service.remask_stored_copies`).
MASKING_RULES = 5  # 5: copies also hide what any earlier version of a corrected text hid

# A dictated number comes in groups: 138 0013 8000, 138-0013-8000, 138，0013，8000; a typed one also 138.0013.8000,
# 138·0013·8000, 138/0013/8000, 138_0013_8000 (rules 4: these were shown whole).
_SEP = r"[ \-,、.·/_]?"
# An ID number is printed 6-8-4 and dictated 6-4-4-4 (370102，1985，0715，1234): both are read.
# Digits that are not part of a longer number on either side. Each rule's groups are the digits it masks.
_ID_NUMBER = re.compile(rf"(?<![0-9])[1-9][0-9]{{5}}{_SEP}"
                        rf"((?:19|20)[0-9]{{2}}{_SEP}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01]))"
                        rf"{_SEP}([0-9]{{3}})[0-9Xx叉](?![0-9A-Za-z])")  # an X is read out 叉 (speech/numbers.py)
_MOBILE = re.compile(rf"(?<![0-9])(?:(?:\+|00)?86{_SEP})?1[3-9][0-9]{_SEP}([0-9]{{4}}){_SEP}[0-9]{{4}}(?![0-9])")
# Also read out 4-3-4 (1380 013 8000): the same four digits are hidden, the separator between them stays.
_MOBILE_434 = re.compile(rf"(?<![0-9])(?:(?:\+|00)?86{_SEP})?1[3-9][0-9]([0-9]{_SEP}[0-9]{{3}}){_SEP}"
                         r"[0-9]{4}(?![0-9])")
# Area codes: 010 and 020-029 have three digits, every other (03xx-09xx) four, so 01062345678 is 010 and
# 6234 5678. With the country code (+86 10 6234 5678, 0086-531-88886666) the trunk 0 is dropped.
_AREA = r"(?:10|2[0-9]|[3-9][0-9]{2})"
# Dictated in groups as mobiles are (0531，8888，6666), but not with 、, which lists items: 0401、0402、0501 are
# rooms, not a number.
_LSEP = r"[ \-,.·/_]?"
_LANDLINE = re.compile(rf"(?<![0-9])(?:(?:\+|00)86{_LSEP}\(?0?{_AREA}\)?|\(?0{_AREA}\)?){_LSEP}([0-9]{{3,4}})"
                       rf"{_LSEP}[0-9]{{4}}(?![0-9])")
# In this order: an ID number holds what looks like a phone number.
_RULES = (_ID_NUMBER, _MOBILE, _MOBILE_434, _LANDLINE)
# Two or more mobiles said straight one after the other with no pause (a caller giving theirs and a
# relative's) come out as one run of 22, 33... digits, which no rule above takes; each 11 is masked as a mobile.
_MOBILE_RUN = re.compile(r"(?<![0-9])(?:1[3-9][0-9]{9}){2,}(?![0-9])")
_MOBILE_MIDDLE = range(3, 7)  # a mobile's hidden digits, counted from its first
# The same rules without the check that no digit follows, for the look at digit names: there a number may run
# straight into a word that starts with one (一三八…七八一直没人接, …三号楼), which is not a further digit.
_TAIL = re.compile(r"\(\?!\[0-9(?:A-Za-z)?\]\)$")
_OPEN_ENDED = tuple(re.compile(_TAIL.sub("", rule.pattern)) for rule in _RULES)
assert all(o.pattern != r.pattern for o, r in zip(_OPEN_ENDED, _RULES, strict=True))
# Full-width forms (１３８, ＋８６, Ｘ) and the ideographic space read as their ASCII twins, one character for one,
# so that matches found on the folded copy are positions in the original.
# Zero-width characters (a number pasted from a chat app) read as a space: a separator like any other.
_FOLD = ({0xFF01 + i: 0x21 + i for i in range(94)} | {0x3000: 0x20}
         | dict.fromkeys((0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF), 0x20))
# Digit names read as digits, for a second look: a number Whisper left partly spoken (138123456 then 七八 in
# the next segment, or before 十点) or a supervisor's correction typed in Chinese numerals. Only a second
# look: on the first, the 一 of 一直 after 13812345678 must not read as a twelfth digit.
_SPOKEN = re.compile("[零〇幺一二三四五六七八九]")
_FOLD_SPOKEN = _FOLD | {ord(c): ord(d) for c, d in zip("零〇幺一二三四五六七八九", "001123456789", strict=True)}


def can_view_pii(user: User) -> bool:
    """Whether this user reads phone and ID numbers unmasked."""
    return user.role in VIEW_PII_ROLES


def masked_positions(text: str) -> set[int]:
    """Where `text` holds digits to hide: ID numbers' birth date and sequence, mobiles' middle four digits,
    landlines' digits between the area code and the last four; digits written as digits, or spoken
    (一三八…)."""
    hidden = _masked(text.translate(_FOLD))
    if _SPOKEN.search(text):
        hidden |= _masked(text.translate(_FOLD_SPOKEN), {m.start() for m in _SPOKEN.finditer(text)})
    return hidden


def _masked(folded: str, spoken: set[int] | None = None) -> set[int]:
    """The positions to hide in `folded`; `spoken`: where it holds digit names, after which a number may end
    (the 一 of 一直 is not a twelfth digit of the mobile before it)."""
    work = list(folded)
    hidden: set[int] = set()
    for match in _MOBILE_RUN.finditer(folded):  # first: a mobile rule would take the run's first 11 (spoken)
        for first in range(match.start(), match.end(), 11):
            for i in _MOBILE_MIDDLE:
                work[first + i] = "*"
                hidden.add(first + i)
    for rule, open_ended in zip(_RULES, _OPEN_ENDED, strict=True):
        current = "".join(work)  # what earlier rules hid is no longer a digit
        matches = list(rule.finditer(current))
        if spoken:
            matches += [m for m in open_ended.finditer(current) if m.end() in spoken]
        for match in matches:
            for group in range(1, rule.groups + 1):
                for i in range(*match.span(group)):
                    if work[i].isdigit():  # a separator inside a group (1985，0715) stays
                        work[i] = "*"
                        hidden.add(i)
    return hidden


def redact_text(text: str) -> str:
    """`text` with personal numbers' digits replaced by asterisks in place: the same length, every other
    character where it was (separators and full-width forms included)."""
    return _apply(text, masked_positions(text))


def redact_phone(value: str) -> str:
    """A field that holds one phone number (a call's caller number), masked by its shape, not by the text
    rules: those need a mobile's or an area code's form, and a local caller ID (88886666) or `+86 531 ...`
    came through whole. Every digit is hidden except the last four (of eight or more; two of five to seven)
    and, of eleven or more, the first three: `138****8000`, `****6666`. Digit names count as digits (a number
    typed in Chinese numerals, 一三八零零一三八零零零, came through whole)."""
    digits = [i for i, c in enumerate(value.translate(_FOLD_SPOKEN)) if c.isdigit()]
    shown = set(digits[-4:] if len(digits) >= 8 else digits[-2:] if len(digits) >= 5 else [])
    shown |= set(digits[:3]) if len(digits) >= 11 else set()
    hidden = set(digits) - shown
    return "".join("*" if i in hidden else c for i, c in enumerate(value))


def _masked_join(parts: list[str], separator: str) -> tuple[str, list[int | None], set[int]]:
    """`separator.join` of the non-empty parts, where each part starts in it (None: left out), and the digits
    to hide: those the joined text hides, and those each part hides alone. Both, because a number may be split
    between two parts (only the joined text shows it), and a whole number in one part may run into the digits
    that start the next (13800138000 then 3号楼 reads 138001380003号楼: only the part shows it)."""
    starts: list[int | None] = []
    at = 0
    for part in parts:
        starts.append(at if part else None)
        if part:
            at += len(part) + len(separator)
    text = separator.join(p for p in parts if p)
    hidden = masked_positions(text)
    for part, start in zip(parts, starts, strict=True):
        if start is not None:
            hidden.update(start + i for i in masked_positions(part))
    return text, starts, hidden


def _apply(text: str, hidden: set[int]) -> str:
    return "".join("*" if i in hidden else c for i, c in enumerate(text)) if hidden else text


def redact_parts(parts: list[str], separator: str, keep_hidden: Collection[str] = ()) -> list[str]:
    """Each of `parts` masked as it reads within `separator.join` of the non-empty ones (how a transcript's
    text is made from its segments), so that a number split between two parts is masked in both; with the
    digit strings of `keep_hidden` (what earlier versions hid, `hide_digits`) masked in the joined text too: a
    run split between two parts is in neither alone, and a steward read it in the segments."""
    text, starts, hidden = _masked_join(parts, separator)
    masked = _apply(text, hidden | _positions_of(text, keep_hidden))
    return [masked[start:start + len(part)] if start is not None else part
            for part, start in zip(parts, starts, strict=True)]


def redact_joined(parts: list[str], separator: str) -> str:
    """`separator.join` of the non-empty parts, masked as `redact_parts` masks the parts: the masked text of a
    transcript from its segments (masking the joined text alone would miss a number that runs into the next
    segment's digits)."""
    text, _, hidden = _masked_join(parts, separator)
    return _apply(text, hidden)


def hidden_digits(original: str, masked: str) -> set[str]:
    """The digit strings `masked` hides of `original` (the same text masked in place): each run of asterisks,
    as digits (spoken digit names too), e.g. {"0013"} for 138 0013 8000 -> 138 **** 8000; three digits or more."""
    folded = original.translate(_FOLD_SPOKEN)
    runs = {"".join(c for c in folded[m.start():m.end()] if c.isdigit())
            for m in re.finditer(r"\*+", masked) if "*" not in original[m.start():m.end()]}
    return {digits for digits in runs if len(digits) >= 3}  # shorter pieces would hide every 1 or 13 of a text


def hide_digits(text: str, hidden: set[str]) -> str:
    """`text` with every occurrence of one of the `hidden` digit strings (written or spoken) masked too: an edit
    history must hide what any version of the text hid, although the version at hand may not read as a number
    (a mobile moved between two segments one save at a time)."""
    return _apply(text, _positions_of(text, hidden)) if hidden else text


def _positions_of(text: str, digit_strings: Collection[str]) -> set[int]:
    """Where `text` holds one of `digit_strings`, written or spoken."""
    if not digit_strings:
        return set()
    folded = text.translate(_FOLD_SPOKEN)
    return {i for digits in digit_strings for match in re.finditer(re.escape(digits), folded)
            for i in range(*match.span())}


def redact_for(user: User, text: str) -> str:
    """`text` as this user may read it."""
    return text if can_view_pii(user) else redact_text(text)
