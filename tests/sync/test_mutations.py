"""The push's view of the rows a batch names: what it writes is loaded for writing, what it only links to is
read as plain rows (a batch of readings names hundreds of households)."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlmodel import Session

from api.fieldwork.models import Visit
from api.network.models import Household
from api.users.models import User
from sync import mutations
from sync.registry import BY_NAME
from tests.sync.conftest import District


def test_rows_a_batch_only_links_to_are_plain_rows_with_their_visibility(engine: Engine, district: District) -> None:
    households, visits = BY_NAME["households"], BY_NAME["visits"]
    unknown = uuid.uuid4()
    with Session(engine) as session:
        user = session.get(User, district.steward1.id)
        assert user is not None
        ctx = mutations.Context(session=session, settings=district.settings, user=user, client_id=uuid.uuid4())
        ctx.prefetch({"visits": {district.visit1.id}},
                     {"households": {district.h1b.id, district.h3a.id, unknown}, "visits": {district.visit1.id}})
        linked = ctx.get(households, district.h1b.id)
        assert linked is not None and not isinstance(linked, Household)
        assert (linked.id, linked.sensitive) == (district.h1b.id, True)  # what the rules read (priority)
        assert ctx.visible(households, linked)
        outside = ctx.get(households, district.h3a.id)  # another steward's building
        assert outside is not None and not ctx.visible(households, outside)
        assert ctx.get(households, unknown) is None
        # A row the batch writes is an ORM object, even when another mutation also links to it.
        assert isinstance(ctx.get(visits, district.visit1.id), Visit)
        assert not [obj for obj in session.identity_map.values() if isinstance(obj, Household)]
