"""Imports every table so `SQLModel.metadata` is complete (for Alembic and tests)."""

from sqlmodel import SQLModel

from api.fieldwork.models import Reading, Visit
from api.network.models import Building, Household, Station
from api.notes.models import Note
from api.notices.models import Notice
from api.users.models import GridBuilding, User
from api.work_orders.models import WorkOrder, WorkOrderEvent

metadata = SQLModel.metadata

__all__ = ["Building", "GridBuilding", "Household", "Note", "Notice", "Reading", "Station", "User", "Visit",
           "WorkOrder", "WorkOrderEvent", "metadata"]
