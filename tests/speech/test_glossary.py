"""The heating glossary: pinyin-aware correction of near-homophones, and auto-tagging."""

from __future__ import annotations

from pathlib import Path

import pytest

from speech.glossary import Corrector, GlossaryError, categorize, corrector_for, load_glossary


@pytest.fixture(scope="module")
def corrector() -> Corrector:
    return corrector_for(load_glossary())


@pytest.mark.parametrize(("heard", "meant"), [
    ("先拧开排气法", "先拧开排气阀"),  # same pinyin, another tone
    ("小区的换热战改造完了", "小区的换热站改造完了"),
    ("公单号是多少", "工单号是多少"),
    ("楼道里的立关有异响", "楼道里的立管有异响"),
    ("这个才暖机温度高", "这个采暖季温度高"),
    ("先关上净水发", "先关上进水阀"),  # jing/jin: one common confusion in a three-character term
    ("平洪法已经调过了", "平衡阀已经调过了"),
    # everyday hotline vocabulary: tools, actions, video guidance, service phrases
    ("用排气要时慢慢打开", "用排气钥匙慢慢打开"),
    ("慢慢凝开排气阀", "慢慢拧开排气阀"),
    ("再把排气阀拧进", "再把排气阀拧紧"),
    ("您把手机设向头对准暖气片", "您把手机摄像头对准暖气片"),
    ("请紧快派人上门", "请尽快派人上门"),
    ("把阀门掉大一点", "把阀门调大一点"),
    ("暖气片上的法体漏水", "暖气片上的阀体漏水"),
])
def test_near_homophones_of_terms_are_corrected(corrector: Corrector, heard: str, meant: str) -> None:
    assert corrector.correct(heard) == meant


@pytest.mark.parametrize("text", [
    "我不会放弃的",  # 放弃 is a word, although it sounds like 放气
    "这是水管的问题",  # 是 is a function word: 是水 must not become 失水
    "我上楼到你家",  # 到 likewise (楼到 -> 楼道)
    "采暖机组坏了",  # a longer term protects its characters
    "暖气片和排气阀都换了",  # terms stay terms
    "您好我家卧室的暖气片上面不热",
    # ordinary words that sound like a term and share a character with it
    "报停需要办手续",  # not 扳手续
    "把螺丝拧进去",  # 拧进去 is a phrase, not 拧紧
    "把猫关进去",
    "这是调校过的热表",  # 调校 (calibrated), not 调小
    "刚做完手术房间不能冷",  # 手术|房间: 术房 is not 书房
    "暖气漏下来了",  # not 楼下
    "调压阀坏了",
    "你先核实一下我们马上处理",
    "家里没人请留个电话",
    "他已经放弃了，我不会放弃的",
])
def test_words_and_terms_are_left_alone(corrector: Corrector, text: str) -> None:
    assert corrector.correct(text) == text


def test_a_stretch_that_sounds_like_two_terms_is_left_alone(tmp_path: Path) -> None:
    both, one = tmp_path / "both.toml", tmp_path / "one.toml"
    both.write_text('[terms]\nx = ["失水", "试水"]\n', "utf-8")
    one.write_text('[terms]\nx = ["失水"]\n', "utf-8")
    assert corrector_for(load_glossary(both)).correct("打开湿水阀") == "打开湿水阀"
    assert corrector_for(load_glossary(one)).correct("打开湿水阀") == "打开失水阀"


def test_custom_glossary_file(tmp_path: Path) -> None:
    path = tmp_path / "glossary.toml"
    path.write_text('context = "热线"\nhotwords = ["分水器"]\n[terms]\nx = ["集水器"]\n'
                    '[categories]\nleak = ["漏水"]\n', "utf-8")
    glossary = load_glossary(path)
    assert glossary.prompt == "热线：分水器。"
    assert glossary.terms == ("集水器", "分水器")
    assert corrector_for(glossary).correct("检查及水器") == "检查集水器"


def test_a_broken_glossary_says_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("hotwords = [1, 2]\n", "utf-8")
    with pytest.raises(GlossaryError, match="hotwords must be a list of non-empty strings"):
        load_glossary(path)
    with pytest.raises(GlossaryError, match="cannot read the glossary"):
        load_glossary(tmp_path / "missing.toml")


def test_the_bundled_glossary_is_general_heating_vocabulary() -> None:
    glossary = load_glossary()
    assert len(glossary.terms) >= 200
    assert {"暖气片", "排气阀", "进水阀", "换热站", "立管", "平衡阀", "工单", "采暖季", "报停"} <= set(glossary.terms)
    assert {"排气钥匙", "卧室", "客厅", "拧紧", "摄像头", "对准", "不热", "漏水", "异响", "放气"} <= set(glossary.terms)
    assert set(glossary.categories) == {"leak", "not_warm", "noise", "air_lock", "valve", "billing"}
    assert len(glossary.prompt) < 80  # long prompts are echoed by the decoder


@pytest.mark.parametrize(("text", "categories"), [
    ("三号楼暖气漏水了，往下滴", ["leak"]),
    ("室内温度达不到标准", ["not_warm"]),
    ("立管晚上有异响", ["noise"]),
    ("暖气片上面不热，需要排气吗", ["air_lock", "not_warm"]),
    ("想问一下采暖费怎么缴费", ["billing"]),
    ("明天上午在家", ["other"]),
])
def test_categorize(text: str, categories: list[str]) -> None:
    assert categorize(text, load_glossary()) == categories
