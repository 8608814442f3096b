"""Spelled-out numbers in addresses, dates and codes become digits; numerals that are words stay."""

from __future__ import annotations

import pytest

from speech.numbers import normalize_numbers


@pytest.mark.parametrize(("spoken", "written"), [
    ("三号楼二单元五零一室", "3号楼2单元501室"),
    ("注水时间是十一月五号", "注水时间是11月5号"),
    ("量的是十六度", "量的是16度"),
    ("二十三号楼三十一层", "23号楼31层"),
    ("工单号是二零二五一一零八零三", "工单号是2025110803"),
    ("电话一三八零零一三八零零零", "电话13800138000"),
])
def test_addresses_dates_temperatures_and_codes(spoken: str, written: str) -> None:
    assert normalize_numbers(spoken) == written


@pytest.mark.parametrize("text", ["每周要回访一次", "一点也不热", "两个人在家", "第三单元", "一度很冷", "等一下",
                                  "一百号",
                                  # Regression: right after a number's digits, 三号楼 made 138001380003号楼.
                                  "请回电13800138000三号楼"])
def test_numerals_that_are_words_stay(text: str) -> None:
    assert normalize_numbers(text) == text


@pytest.mark.parametrize(("heard", "written"), [
    ("三号楼二单元五零一式", "3号楼2单元501室"),  # 式 heard for 室 after an entrance number
    ("12栋1202市", "12栋1202室"),
    ("5号楼301室", "5号楼301室"),
])
def test_a_room_number_ends_in_shi(heard: str, written: str) -> None:
    assert normalize_numbers(heard) == written


@pytest.mark.parametrize("text", ["3单元501是我家", "2单元501的暖气不热", "电话13800138000式"])
def test_only_a_room_number_after_a_building_gets_shi(text: str) -> None:
    assert normalize_numbers(text) == text
