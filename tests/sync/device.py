"""A simulated handheld: a local copy of the rows it may see, a queue of its own mutations, a cursor.

It follows docs/sync-protocol.md literally (apply a page, then keep its cursor; replace a row with the
`record` of each push result), so the tests exercise what a real app would do.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi.testclient import TestClient

from sync.registry import TABLES
from sync.simulator import apply_mutation

TABLE_NAMES = [t.name for t in TABLES]


@dataclass
class Device:
    http: TestClient
    headers: dict[str, str]
    name: str = "device"
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    cursor: str | None = None
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in TABLE_NAMES})
    queue: list[dict[str, Any]] = field(default_factory=list)
    next_mutation_id: int = 1
    sent: list[dict[str, Any]] = field(default_factory=list)  # every push body, for replays
    results: list[dict[str, Any]] = field(default_factory=list)  # every result, in order
    pages: int = 0
    resets: int = 0
    journal: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] | None = None  # shared push log, in order

    # --- pulling -----------------------------------------------------------------------------------

    def pull_page(self, limit: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"schema_version": 1}
        if self.cursor:
            params["cursor"] = self.cursor
        if limit:
            params["limit"] = limit
        response = self.http.get("/api/v1/sync/pull", params=params, headers=self.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        self.apply_page(page)
        return page

    def apply_page(self, page: dict[str, Any]) -> None:
        if page["reset"]:
            self.resets += self.cursor is not None  # counted: the resets of a device that had synced before
            self.rows = {t: {} for t in TABLE_NAMES}
        for table, changes in page["changes"].items():
            for row_id in changes["deletes"]:
                self.rows[table].pop(row_id, None)
            for record in changes["upserts"]:
                self.rows[table][record["id"]] = record
        self.reapply_queue()
        self.cursor = page["cursor"]
        self.pages += 1

    def pull(self, limit: int | None = None, max_pages: int = 10_000) -> int:
        """Pull until `has_more` is false; returns the number of pages."""
        for n in range(1, max_pages + 1):
            if not self.pull_page(limit)["has_more"]:
                return n
        raise AssertionError(f"{self.name}: still has_more after {max_pages} pages")

    # --- local edits -------------------------------------------------------------------------------

    def _queue(self, table: str, op: str, row_id: str, fields: dict[str, Any] | None = None,
               base_version: int | None = None) -> dict[str, Any]:
        mutation = {"mutation_id": self.next_mutation_id, "table": table, "op": op, "id": row_id,
                    "base_version": base_version, "fields": fields or {}}
        self.next_mutation_id += 1
        self.queue.append(mutation)
        apply_mutation(self.rows, mutation)
        return mutation

    def reapply_queue(self) -> None:
        """Unpushed edits stay visible locally on top of what the server sent."""
        for m in self.queue:
            apply_mutation(self.rows, m)

    def create(self, table: str, **fields: Any) -> str:
        row_id = str(uuid.uuid4())
        self._queue(table, "upsert", row_id, fields)
        return row_id

    def update(self, table: str, row_id: str, **fields: Any) -> dict[str, Any]:
        row = self.rows[table][row_id]
        if row["version"] is None:  # created here and not pushed yet: write it in full again
            full = {k: v for k, v in row.items() if k not in ("id", "version")} | fields
            return self._queue(table, "upsert", row_id, full)
        return self._queue(table, "update", row_id, fields, base_version=row["version"])

    def delete(self, table: str, row_id: str) -> dict[str, Any]:
        base = self.rows[table].get(row_id, {}).get("version")
        return self._queue(table, "delete", row_id, base_version=base)

    # --- pushing -----------------------------------------------------------------------------------

    def push_body(self, mutations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"client_id": self.client_id, "schema_version": 1,
                                "mutations": copy.deepcopy(self.queue if mutations is None else mutations)}
        if self.cursor:
            body["cursor"] = self.cursor
        return body

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/api/v1/sync/push", json=body, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def push(self) -> dict[str, Any]:
        """Push the whole queue; apply each result's record; keep the returned cursor."""
        body = self.push_body()
        self.sent.append(body)
        answer = self.send(body)
        self.apply_push(answer, body["mutations"])
        return answer

    def apply_push(self, answer: dict[str, Any], mutations: list[dict[str, Any]]) -> None:
        if self.journal is not None:
            self.journal.append((self.client_id, mutations, answer))
        by_id = {m["mutation_id"]: m for m in mutations}
        for result in answer["results"]:
            m = by_id[result["mutation_id"]]
            if result["record"] is None:
                self.rows[m["table"]].pop(m["id"], None)
            else:
                self.rows[m["table"]][m["id"]] = result["record"]
            self.results.append(result | {"table": m["table"], "id": m["id"], "op": m["op"],
                                          "fields": m["fields"], "base_version": m["base_version"],
                                          "device": self.name})
        done = {r["mutation_id"] for r in answer["results"]}
        self.queue = [m for m in self.queue if m["mutation_id"] not in done]
        self.reapply_queue()
        self.cursor = answer["cursor"]

    def sync(self) -> None:
        self.push()
        self.pull()

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        return copy.deepcopy(self.rows)
