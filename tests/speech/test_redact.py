"""Masking of phone and ID numbers, and who may read them."""

from __future__ import annotations

import pytest

from api.users.models import Role, User
from speech.redact import can_view_pii, redact_for, redact_text


@pytest.mark.parametrize(("text", "masked"), [
    ("我的电话是13800138000，谢谢", "我的电话是138****8000，谢谢"),
    ("手机138-0013-8000", "手机138****8000"),
    ("+86 139 1234 5678", "+86 139****5678"),
    ("座机0531-88886666", "座机0531-****6666"),
    ("打010-1234567找王师傅", "打010-***4567找王师傅"),
    ("身份证号370102198507151234", "身份证号370102***********4"),
    ("身份证37010219850715123X。", "身份证370102***********X。"),
])
def test_personal_numbers_are_masked(text: str, masked: str) -> None:
    assert redact_text(text) == masked


@pytest.mark.parametrize("text", ["工单号2025110803", "3号楼2单元501室", "温度16度", "热线96133",
                                  "12345678901234567890"])
def test_other_numbers_stay(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(("role", "sees_numbers"), [(Role.admin, True), (Role.supervisor, True),
                                                    (Role.steward, False)])
def test_only_office_roles_have_view_pii(role: Role, sees_numbers: bool) -> None:
    user = User(username="u", role=role, password_hash="x")
    assert can_view_pii(user) is sees_numbers
    shown = redact_for(user, "回电13800138000")
    assert shown == ("回电13800138000" if sees_numbers else "回电138****8000")
