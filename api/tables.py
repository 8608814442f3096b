"""Imports every table so `SQLModel.metadata` is complete (for Alembic and tests)."""

from collections.abc import Callable
from typing import Any

from sqlmodel import SQLModel

from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station
from api.notes.models import Note
from api.notices.models import Notice
from api.proactive.models import (  # noqa: F401
    Campaign,
    CampaignDelivery,
    ProactiveMember,
    ProactiveOrder,
    SeasonCalendar,
)
from api.users.models import GridBuilding, LoginThrottle, User
from api.work_orders.models import WorkOrder, WorkOrderEvent
from speech.models import Call, Transcript, TranscriptRevision
from sync.models import ScopeEvent, SyncClient, SyncConflict, SyncState, Tombstone
from video.models import VideoRoom, VideoSnapshot  # noqa: F401

metadata = SQLModel.metadata


def include_object(dialect: str) -> Callable[..., bool]:
    """Alembic autogenerate's filter for one database: leaves out what the models create on another
    database only (`Index(...).ddl_if(dialect="postgresql")`), which it would otherwise want added."""
    def include(obj: Any, _name: str | None, _type: str, _reflected: bool, _compare_to: Any) -> bool:
        condition = getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, dialect)
    return include

__all__ = ["Building", "Call", "GridBuilding", "Household", "LoginThrottle", "Note", "Notice", "Reading", "ScopeEvent",
           "Station", "SyncClient", "SyncConflict", "SyncState", "Tombstone", "Transcript", "TranscriptRevision",
           "User", "Visit", "WorkOrder", "WorkOrderEvent", "include_object", "metadata"]
