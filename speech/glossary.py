"""The domain glossary: decoder hotwords, pinyin-aware correction of near-homophones, auto-tagging.

Whisper hears heating terms right but often writes a homophone (排气法 for 排气阀, 公单 for 工单). The
corrector replaces a stretch of text by a glossary term when they sound alike:
- every syllable is the same pinyin (tones ignored; any reading of a polyphonic character counts), or,
  for terms of three or more characters, at most one syllable is a common confusion (zh/z, in/ing, ...);
- at least one character is already the term's own (so whole unrelated words are never rewritten);
- for two-character terms, the differing character is not a function word (是, 的, 到...), which
  would make "是水" into "失水"; for three-character terms, not a particle (的, 了, 是...: 温度的变化 is not
  温度低变化);
- exactly one term matches (two homophone terms: the decoder's choice is kept);
- the text is not already a term (longer terms are matched first and their spans are protected);
- the stretch is not a common word, and a replaced character at its edge does not form a common word or a
  term with its neighbour outside it (手术房间 keeps 术, although 术房 sounds like 书房; 地暖关小 keeps 关),
  nor stand next to a digit or a Latin letter (18度了 is a temperature, not 18堵了);
- no character is part of one of the glossary's `keep` words (未修, 复工, 官网...): everyday words that sound
  like a term and are too rare for the common-word list; a gapped entry (打不到…电话) keeps its first part where
  its second follows in the clause and no temperature (温度, 18度) stands right before it or in between.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

BUNDLED_GLOSSARY = "heating_zh.toml"

# Initials and finals that speakers and Whisper commonly confuse.
_FUZZY_INITIALS = {"zh": "z", "ch": "c", "sh": "s", "n": "l", "r": "l", "h": "f"}
_FUZZY_FINALS = {"ang": "an", "eng": "en", "ing": "in", "iang": "ian", "uang": "uan", "ong": "en"}
_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z",
             "c", "s", "y", "w")
# Function words and numerals: never the character a two-character correction replaces.
_STOP_CHARS = set("的了是在不有我你他她它们这那个就也都和要会说到上下以为对与及而把被让给从向很还没又再才只已将能"
                  "可去来过着得地之其么什谁哪怎吗呢吧啊呀哦嗯一二三四五六七八九十零两百千万几多少号点")
# Particles: never the character a three-character correction replaces (温度的变化, 地下是不是, 压力的问题).
_PARTICLES = set("的了是在着地得之吗呢吧啊呀")


class GlossaryError(ValueError):
    """The glossary file cannot be read; the message names the problem."""


@dataclass(frozen=True)
class Glossary:
    context: str
    hotwords: tuple[str, ...]
    terms: tuple[str, ...]
    categories: dict[str, tuple[str, ...]] = field(hash=False)
    keep: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """The decoder prompt: a short sentence naming the context and the hotwords."""
        if not self.hotwords:
            return self.context
        return f"{self.context}：{'、'.join(self.hotwords)}。" if self.context else f"{'、'.join(self.hotwords)}。"


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise GlossaryError(f"{where} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


@lru_cache(maxsize=8)
def load_glossary(path: Path | None = None) -> Glossary:
    """The glossary at `path`, or the bundled heating glossary."""
    try:
        if path is None:
            raw = resources.files("speech").joinpath("data", BUNDLED_GLOSSARY).read_text("utf-8")
        else:
            raw = Path(path).read_text("utf-8")
        data = tomllib.loads(raw)
    except UnicodeDecodeError as exc:
        raise GlossaryError(f"cannot read the glossary {path}: it is not UTF-8 (byte {exc.start}); save it "
                            "as UTF-8") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GlossaryError(f"cannot read the glossary {path or BUNDLED_GLOSSARY}: {exc}") from exc
    hotwords = _strings(data.get("hotwords", []), "hotwords")
    term_groups = data.get("terms", {})
    if not isinstance(term_groups, dict):
        raise GlossaryError("[terms] must be a table of lists")
    terms = [t for name, group in term_groups.items() for t in _strings(group, f"terms.{name}")]
    category_groups = data.get("categories", {})
    if not isinstance(category_groups, dict):
        raise GlossaryError("[categories] must be a table of lists (leak = [\"漏水\", ...])")
    categories = {name: _strings(words, f"categories.{name}") for name, words in category_groups.items()}
    keep = _strings(data.get("keep", []), "keep")
    unique = tuple(dict.fromkeys([*terms, *hotwords]))
    context = data.get("context", "")
    if not isinstance(context, str):
        raise GlossaryError("context must be a string")
    return Glossary(context=context.strip(), hotwords=hotwords, terms=unique, categories=categories, keep=keep)


@lru_cache(maxsize=4096)
def _readings(char: str) -> frozenset[str]:
    """Every reading of a character: Whisper picks characters by sound, under any of their readings."""
    from pypinyin import Style, pinyin

    return frozenset(pinyin(char, style=Style.NORMAL, heteronym=True, errors="ignore")[0] if char else ())


def _term_readings(term: str) -> list[str]:
    """The reading of each character of a term as the term is spoken (期 in 采暖期 is qi, not ji)."""
    from pypinyin import Style, pinyin

    return [r[0] for r in pinyin(term, style=Style.NORMAL, heteronym=False, errors="ignore")]


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """Common Chinese words (jieba's dictionary, frequency >= 20): a real word is never rewritten."""
    words = set()
    with resources.files("jieba").joinpath("dict.txt").open("r", encoding="utf-8") as f:
        for line in f:
            word, freq, *_ = line.split(" ")
            if 2 <= len(word) <= 6 and int(freq) >= 20:
                words.add(word)
    return frozenset(words)


def _fuzzy(syllable: str) -> str:
    for initial in _INITIALS:
        if syllable.startswith(initial):
            head, tail = _FUZZY_INITIALS.get(initial, initial), syllable[len(initial):]
            break
    else:
        head, tail = "", syllable
    return head + _FUZZY_FINALS.get(tail, tail)


def _char_match(got: str, want: str, reading: str) -> int:
    """2: same character; 1: same pinyin; 0: a common confusion; -1: different."""
    if got == want:
        return 2
    heard = _readings(got)
    if reading in heard:
        return 1
    return 0 if _fuzzy(reading) in {_fuzzy(s) for s in heard} else -1


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


GAP = "…"  # in a keep entry: a phrase with a gap ("打不到…电话")
GAP_REACH = 12  # how far the second part may follow the first
_CLAUSE_END = re.compile("[。！？!?；;，,]")
# A temperature said with a gapped phrase makes it the word the phrase keeps out: 暖气温度打不到人接受的程度 and
# 屋里温度打不到18度打电话也没人管 are a cold home (达不到), although 人接 and 电话 follow in the clause; kept,
# they were tagged `other` and opened no draft work order. A cue counts right before the first part (adverbs
# such as 老是 between) or between the two parts; 暖气 only before it (打不到你们暖气公司的电话 is the phone).
_DEGREES = "温度|室温|水温|气温|[0-9零一二三四五六七八九十两]度"
_TEMPERATURE_BEFORE = re.compile(
    f"(?:{_DEGREES}|暖气片?|地暖)(?:老是|总是|还是|一直|始终|根本|完全|从来|怎么也|怎么都|都|也|还|就|总|老|又|才)*$")
_TEMPERATURE_BETWEEN = re.compile(_DEGREES)


class Corrector:
    """Rewrites near-homophones of glossary terms into the terms."""

    def __init__(self, terms: tuple[str, ...], keep: tuple[str, ...] = ()) -> None:
        self._terms = {t for t in terms if len(t) >= 2 and all(_is_cjk(c) for c in t)}
        # A keep entry "A…B" is a phrase with a gap: A is kept when B follows within the clause (打不到…电话:
        # 我打不到你们维修师傅的电话 is no answer on the phone; 温度打不到标准 is still 达不到), unless a temperature
        # stands right before A or between A and B (温度打不到18度打电话也没人管 is still 达不到).
        self._keep = frozenset(k for k in keep if GAP not in k)
        self._gapped = tuple(tuple(k.split(GAP, 1)) for k in keep if GAP in k)
        self._by_length: dict[int, list[tuple[str, list[str]]]] = {}
        for term in sorted(self._terms):
            self._by_length.setdefault(len(term), []).append((term, _term_readings(term)))

    def _candidate(self, window: str) -> str | None:
        best: list[tuple[int, str]] = []
        for term, readings in self._by_length.get(len(window), ()):
            scores = [_char_match(g, w, r) for g, w, r in zip(window, term, readings, strict=True)]
            if min(scores) < 0 or 2 not in scores:
                continue
            if scores.count(0) > (1 if len(term) >= 3 else 0):
                continue
            replaced = [g for g, s in zip(window, scores, strict=True) if s != 2]
            # Four or more characters with one replaced are rarely an accident (是内温度 is 室内温度).
            stop = _STOP_CHARS if len(term) == 2 else _PARTICLES if len(term) == 3 else set()
            if any(g in stop for g in replaced):
                continue
            best.append((sum(scores), term))
        if not best:
            return None
        best.sort(reverse=True)
        if len(best) > 1 and best[0][0] == best[1][0]:
            return None  # two terms sound alike: keep what the decoder wrote
        return best[0][1]

    def _exact(self, chars: list[str], min_length: int) -> list[bool]:
        """Characters inside a term at least `min_length` long, or inside a `keep` word or gapped phrase."""
        text, marked = "".join(chars), [False] * len(chars)
        for term in [*(t for t in self._terms if len(t) >= min_length), *self._keep]:
            start = text.find(term)
            while start >= 0:
                marked[start:start + len(term)] = [True] * len(term)
                start = text.find(term, start + 1)
        for first, second in self._gapped:
            start = text.find(first)
            while start >= 0:
                after = start + len(first)
                clause = _CLAUSE_END.split(text[after:after + GAP_REACH], maxsplit=1)[0]
                before = _CLAUSE_END.split(text[max(0, start - GAP_REACH):start])[-1]
                if (at := clause.find(second)) >= 0 and not _TEMPERATURE_BEFORE.search(before) and \
                        not _TEMPERATURE_BETWEEN.search(clause[:at]):
                    marked[start:after] = [True] * len(first)
                    marked[after + at:after + at + len(second)] = [True] * len(second)
                start = text.find(first, start + 1)
        return marked

    def _breaks_word(self, chars: list[str], start: int, term: str, common: frozenset[str]) -> bool:
        """Whether rewriting would break a word that crosses the window's edge (手术|房间 is not 手|书房间,
        地暖关|小 is not 地暖管|小), or a number's unit (18|度了 is not 18|堵了), or a longer common word over
        a character it replaces (异想天开 is not 异响天开: the pairs at the edge, 异想 and 天开, are no words)."""
        end = start + len(term)
        if start > 0 and chars[start] != term[0] and self._joins(chars[start - 1], chars[start - 1] + chars[start],
                                                                 common):
            return True
        if end < len(chars) and chars[end - 1] != term[-1] and self._joins(chars[end], chars[end - 1] + chars[end],
                                                                           common):
            return True
        replaced = [i for i in range(start, end) if chars[i] != term[i - start]]
        for size in (3, 4):
            for first in range(max(0, min(replaced, default=start) - size + 1), max(replaced, default=start) + 1):
                last = first + size
                outside = first < start or last > end
                if outside and last <= len(chars) and any(first <= i < last for i in replaced) and \
                        "".join(chars[first:last]) in common:
                    return True
        return False

    def _joins(self, neighbour: str, pair: str, common: frozenset[str]) -> bool:
        if neighbour.isalnum() and not _is_cjk(neighbour):
            return True  # a digit's unit (18度) or a code's letter: not part of a misheard term
        return pair in common or pair in self._terms or pair in self._keep

    def correct(self, text: str) -> str:
        """`text` with near-homophones of glossary terms replaced by the terms."""
        chars, fixed = list(text), [False] * len(text)
        common = _common_words()
        for length in sorted(self._by_length, reverse=True):
            # A term inside a longer stretch may still be part of a longer term's misspelling (排气 in
            # 排气发), so only terms at least as long as the window protect their characters.
            exact = self._exact(chars, length)
            for start in range(len(chars) - length + 1):
                span = range(start, start + length)
                if any(fixed[i] or exact[i] or not _is_cjk(chars[i]) for i in span):
                    continue
                window = "".join(chars[i] for i in span)
                if window in common:
                    continue
                term = self._candidate(window)
                if term is not None and not self._breaks_word(chars, start, term, common):
                    chars[start:start + length] = list(term)
                    fixed[start:start + length] = [True] * length
        return "".join(chars)


@lru_cache(maxsize=8)
def corrector_for(glossary: Glossary) -> Corrector:
    """The corrector of a glossary, built once."""
    return Corrector(glossary.terms, glossary.keep)


# A symptom's signal word right after one of these is denied, not reported: 没有漏水 (no leak), 不太冷 (not too
# cold), 不是很冷. Words that are themselves a negation (不热, 不达标) are counted wherever they stand. Only
# the symptoms: billing calls are mostly put negatively (没交费, 为什么不退费, 没报停) and are still billing.
_NEGATORS = ("没有", "没", "不是", "不", "并非", "未", "无")
NEGATABLE = frozenset({"leak", "not_warm", "noise"})


def _mentions(text: str, word: str) -> int:
    """How often `word` occurs in `text`, not counting it where it directly follows a negator."""
    count, start = 0, 0
    while (at := text.find(word, start)) >= 0:
        start = at + len(word)
        if word.startswith(("不", "没")) or not text[max(0, at - 2):at].endswith(_NEGATORS):
            count += 1
    return count


def categorize(text: str, glossary: Glossary) -> list[str]:
    """Work-order categories whose signal words occur in `text`, most mentions first; `other` if none. A
    denied symptom (没有漏水) does not count: leak and not_warm open a draft work order (speech/jobs.py)."""
    hits = {name: sum(_mentions(text, w) if name in NEGATABLE else text.count(w) for w in words)
            for name, words in glossary.categories.items()}
    found = sorted((name for name, n in hits.items() if n), key=lambda name: -hits[name])
    return found or ["other"]
