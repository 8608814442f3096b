"""A simulated handheld over real HTTP (httpx, async): the device side of docs/sync-protocol.md.

Used by `steward bench load` and by the crash-durability tests (tests/stress/). It behaves like the app:
it keeps a replica of the rows it may see and a queue of its own mutations with increasing ids; it applies a
pull page and only then keeps the page's cursor; it replaces a row with each push result's `record`; and
when an answer is lost (connection refused or reset, timeout, 5xx) it sends the same request again later:
the same cursor, the queued mutations with the same ids (plus any made since).
"""

from __future__ import annotations

import copy
import gzip
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from api.db import new_id
from sync.registry import TABLES

TABLE_NAMES = [t.name for t in TABLES]
PULL, PUSH, FIRST_SYNC = "pull", "push", "first_sync_page"


class ProtocolError(RuntimeError):
    """The server refused a well-formed request with a 4xx: a bug on one side, never retried."""


@dataclass
class Stats:
    """Latency of every answered request and the count of failed ones, per operation."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, Counter[str]] = field(default_factory=dict)

    def record(self, op: str, seconds: float, error: str | None = None) -> None:
        """One request of `op`: its time, and why it failed if it did."""
        if error is None:
            self.latencies.setdefault(op, []).append(seconds)
        else:
            self.errors.setdefault(op, Counter())[error] += 1

    def error_count(self) -> int:
        """Failed requests of every operation."""
        return sum(sum(c.values()) for c in self.errors.values())


def _empty() -> dict[str, dict[str, dict[str, Any]]]:
    return {t: {} for t in TABLE_NAMES}


def apply_mutation(rows: dict[str, dict[str, dict[str, Any]]], m: dict[str, Any]) -> None:
    """Apply one queued mutation to a device's local replica (`rows[table][id]`), as the handheld shows it
    before the server answers: a delete drops the row, an edit merges its fields, an upsert of an unknown
    row creates it without a server version."""
    table = rows[m["table"]]
    if m["op"] == "delete":
        table.pop(m["id"], None)
    elif m["id"] in table:
        table[m["id"]] = table[m["id"]] | m["fields"]
    elif m["op"] == "upsert":
        table[m["id"]] = {"id": m["id"], "version": None} | m["fields"]


@dataclass
class Handheld:
    """One install of the app for one user."""

    http: httpx.AsyncClient
    token: str
    name: str = "device"
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    stats: Stats = field(default_factory=Stats)
    push_batch: int = 100  # mutations per push; the rest wait for the next one
    gzip_push: bool = True  # send pushes gzipped, as the app does on a weak link (pages come gzipped anyway)
    cursor: str | None = None
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=_empty)
    queue: list[dict[str, Any]] = field(default_factory=list)
    next_mutation_id: int = 1
    made: list[dict[str, Any]] = field(default_factory=list)  # every mutation, in order
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # acknowledged, by mutation id
    in_flight: str | None = None  # the operation waiting for an answer, if any
    lost: Counter[str] = field(default_factory=Counter)  # requests whose answer never came, per operation
    resets: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _send(self, op: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        """The answer, or None when it was lost (the caller retries the same request later)."""
        start = time.perf_counter()
        self.in_flight = op
        try:
            response = await self.http.request(method, url, headers=self.headers | kw.pop("headers", {}), **kw)
        except httpx.TransportError as exc:
            self.stats.record(op, time.perf_counter() - start, type(exc).__name__)
            self.lost[op] += 1
            return None
        finally:
            self.in_flight = None
        elapsed = time.perf_counter() - start
        if response.status_code >= 500:
            self.stats.record(op, elapsed, f"http_{response.status_code}")
            self.lost[op] += 1
            return None
        if response.status_code != 200:
            self.stats.record(op, elapsed, f"http_{response.status_code}")
            raise ProtocolError(f"{self.name}: {method} {url} answered {response.status_code}: {response.text[:300]}")
        self.stats.record(op, elapsed)
        return response

    # --- pulling ---------------------------------------------------------------------------------------

    async def pull_page(self, *, limit: int | None = None, op: str = PULL) -> dict[str, Any] | None:
        """One page after the kept cursor, applied; None if the answer was lost (the cursor is unchanged)."""
        params: dict[str, Any] = {"schema_version": 1}
        if self.cursor:
            params["cursor"] = self.cursor
        if limit:
            params["limit"] = limit
        response = await self._send(op, "GET", "/api/v1/sync/pull", params=params)
        if response is None:
            return None
        page: dict[str, Any] = response.json()
        self.apply_page(page)
        return page

    def apply_page(self, page: dict[str, Any]) -> None:
        """Apply a page, then keep its cursor (a crash in between re-requests the same page)."""
        if page["reset"]:
            self.resets += 1
            self.rows = _empty()
        for table, changes in page["changes"].items():
            for row_id in changes["deletes"]:
                self.rows[table].pop(row_id, None)
            for record in changes["upserts"]:
                self.rows[table][record["id"]] = record
        self._reapply_queue()
        self.cursor = page["cursor"]

    async def pull(self, *, limit: int | None = None, op: str = PULL, max_pages: int = 10_000) -> bool:
        """Pull until `has_more` is false; False if an answer was lost on the way (call again to go on)."""
        for _ in range(max_pages):
            page = await self.pull_page(limit=limit, op=op)
            if page is None:
                return False
            if not page["has_more"]:
                return True
        raise ProtocolError(f"{self.name}: still has_more after {max_pages} pages")

    async def first_sync(self, *, limit: int | None = None) -> bool:
        """Drop the replica and the cursor (a reinstall that kept its queue) and pull everything again."""
        self.rows, self.cursor = _empty(), None
        self._reapply_queue()
        return await self.pull(limit=limit, op=FIRST_SYNC)

    # --- local edits -----------------------------------------------------------------------------------

    def _queue(self, table: str, op: str, row_id: str, fields: dict[str, Any] | None = None,
               base_version: int | None = None) -> dict[str, Any]:
        mutation = {"mutation_id": self.next_mutation_id, "table": table, "op": op, "id": row_id,
                    "base_version": base_version, "fields": fields or {}}
        self.next_mutation_id += 1
        self.queue.append(mutation)
        self.made.append(mutation)
        apply_mutation(self.rows, mutation)
        return mutation

    def _reapply_queue(self) -> None:
        """Unpushed edits stay visible locally on top of what the server sent."""
        for m in self.queue:
            apply_mutation(self.rows, m)

    def create(self, table: str, **fields: Any) -> dict[str, Any]:
        """Queue a new row (the device makes its id: a time-ordered UUIDv7, as the protocol asks)."""
        return self._queue(table, "upsert", str(new_id()), fields)

    def update(self, table: str, row_id: str, **fields: Any) -> dict[str, Any]:
        """Queue a change of a row the device holds."""
        row = self.rows[table][row_id]
        if row["version"] is None:  # created here and not acknowledged yet: write it in full again
            full = {k: v for k, v in row.items() if k not in ("id", "version")} | fields
            return self._queue(table, "upsert", row_id, full)
        return self._queue(table, "update", row_id, fields, base_version=row["version"])

    def delete(self, table: str, row_id: str) -> dict[str, Any]:
        """Queue the deletion of a row."""
        base = self.rows[table].get(row_id, {}).get("version")
        return self._queue(table, "delete", row_id, base_version=base)

    # --- pushing ---------------------------------------------------------------------------------------

    async def push(self) -> dict[str, Any] | None:
        """Send the head of the queue once; apply the answer. None if the answer was lost (the mutations stay
        queued and go again, same ids, with the next push)."""
        batch = copy.deepcopy(self.queue[:self.push_batch])
        body: dict[str, Any] = {"client_id": self.client_id, "schema_version": 1, "mutations": batch}
        if self.cursor:
            body["cursor"] = self.cursor
        if self.gzip_push:
            response = await self._send(PUSH, "POST", "/api/v1/sync/push",
                                        content=gzip.compress(json.dumps(body).encode(), compresslevel=1),
                                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        else:
            response = await self._send(PUSH, "POST", "/api/v1/sync/push", json=body)
        if response is None:
            return None
        answer: dict[str, Any] = response.json()
        self.apply_push(answer, batch)
        return answer

    def apply_push(self, answer: dict[str, Any], mutations: list[dict[str, Any]]) -> None:
        """Replace each row with its result's record, drop the acknowledged mutations, keep the cursor."""
        by_id = {m["mutation_id"]: m for m in mutations}
        for result in answer["results"]:
            m = by_id[result["mutation_id"]]
            if result["record"] is None:
                self.rows[m["table"]].pop(m["id"], None)
            else:
                self.rows[m["table"]][m["id"]] = result["record"]
            self.results[m["mutation_id"]] = result
        done = {r["mutation_id"] for r in answer["results"]}
        self.queue = [m for m in self.queue if m["mutation_id"] not in done]
        self._reapply_queue()
        self.cursor = answer["cursor"]
