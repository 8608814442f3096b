"""Review O reproducers (notices / campaigns SMS)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from api.network.models import Household
from api.notices import service
from api.notices.models import Notice
from api.settings import Settings
from tests.utils.asserts import reread
from tests.utils.factories import World, make_building, make_household, make_notice


def test_a_sender_does_not_text_a_number_another_plan_corrected_after_it_read_the_rows(
        session: Session, world: World, engine: Engine, settings: Settings) -> None:
    """Two senders of one notice (a resend and an evaluation run of another server process). While the first
    is texting room 101, the second plans: room 102's number was corrected, its delivery (queued, 0 attempts)
    now holds the new number. The first then claims room 102 with the phone it read before (the claim checks
    status and attempts, not the phone; sessions keep objects after commit) and texts the removed number."""
    building = make_building(session, world.station)
    first = make_household(session, building, unit="1", room="101", phone="13800000101")
    corrected = make_household(session, building, unit="1", room="102", phone="13800000102")
    notice = make_notice(session, building)
    old, new = corrected.phone, "13900009999"
    calls: list[str] = []

    class Gateway:
        def send(self, phone: str, text: str) -> bool:
            calls.append(phone)
            if phone == first.phone:  # in flight: the office corrects 102, another sender plans
                with Session(engine, expire_on_commit=False) as other:
                    h = other.get(Household, corrected.id)
                    assert h is not None
                    h.phone = new
                    other.add(h)
                    other.commit()
                    service._plan(other, settings, reread(other, Notice, notice.id))
            return True

    with Session(engine, expire_on_commit=False) as own:
        service.send(session=own, settings=settings, sender=Gateway(), notice=reread(own, Notice, notice.id))
    assert old not in calls, calls  # the removed number was texted (with the resident's name and address)
