"""The steward's handheld receives its station's campaigns and its households' delivery status via sync."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session

from api.users.models import Role
from tests.api.proactive.helpers import API, create_campaign
from tests.sync.device import Device
from tests.utils.factories import World, make_building, make_household, make_station, make_user


def test_campaigns_and_delivery_status_reach_the_stewards_handheld(client: TestClient, session: Session,
                                                                   world: World) -> None:
    elsewhere = make_building(session, make_station(session))
    make_household(session, elsewhere)
    far_steward = make_user(session, Role.steward, grid=[elsewhere])
    phone = Device(http=client, headers=world.headers(world.steward_a), name="phone")
    far = Device(http=client, headers=world.headers(far_steward), name="far")
    phone.pull()
    far.pull()
    campaign = create_campaign(client, world)
    phone.pull()
    record = phone.rows["notice_campaigns"][campaign["id"]]
    assert record["status"] == "draft" and record["kind"] == "water_fill" and record["sent_count"] == 0
    assert phone.rows["campaign_deliveries"] == {}
    r = client.post(f"{API}/campaigns/{campaign['id']}/send", headers=world.headers(world.supervisor))
    assert r.status_code == 200, r.text
    phone.pull()
    record = phone.rows["notice_campaigns"][campaign["id"]]
    assert record["status"] == "completed" and record["sent_count"] == 2 and record["version"] == r.json()["version"]
    deliveries = list(phone.rows["campaign_deliveries"].values())
    assert [(d["household_id"], d["status"], d["attempts"]) for d in deliveries] == [
        (str(world.household_a.id), "sent", 1)]
    assert "注水" in deliveries[0]["text"]
    far.pull()
    assert far.rows["notice_campaigns"] == {} and far.rows["campaign_deliveries"] == {}
    # Devices cannot write campaigns: the table is read-only, the mutation is rejected, not applied.
    body = {"schema_version": 1, "client_id": phone.client_id, "mutations": [
        {"mutation_id": 1, "table": "notice_campaigns", "op": "update", "id": campaign["id"], "base_version": 1,
         "fields": {"status": "draft"}}]}
    r = client.post("/api/v1/sync/push", json=body, headers=world.headers(world.steward_a))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["status"] == "rejected"


def test_deliveries_go_with_their_campaign_when_a_building_moves_station(client: TestClient, session: Session,
                                                                         world: World) -> None:
    """Regression: a delivery was sent to a handheld by its household alone. Once the building moved to another
    station, REST answered 404 for the campaign and its deliveries, and the campaign left the handheld, but its
    delivery rows (phone and SMS text) stayed there and reached a new handheld too."""
    campaign = create_campaign(client, world)
    office = world.headers(world.supervisor)
    assert client.post(f"{API}/campaigns/{campaign['id']}/send", headers=office).status_code == 200
    h = world.headers(world.steward_a)
    held = Device(http=client, headers=h, name="held")
    held.pull()
    assert held.rows["campaign_deliveries"]  # the grid's households' status, before the move
    r = client.patch(f"/api/v1/buildings/{world.building_a.id}", json={"station_id": str(make_station(session).id)},
                     headers=office)
    assert r.status_code == 200, r.text
    assert client.get(f"{API}/campaigns/{campaign['id']}", headers=h).status_code == 404
    held.pull(limit=1)  # the move's scope phase, a row at a time
    fresh = Device(http=client, headers=h, name="fresh")
    fresh.pull()
    for device in (held, fresh):
        assert campaign["id"] not in device.rows["notice_campaigns"], device.name
        assert device.rows["campaign_deliveries"] == {}, device.name
