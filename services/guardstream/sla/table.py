"""The `sla_items` faust table (in memory, restored from its changelog): an item read leniently
(an unreadable entry is logged and treated as absent), written together with its changelog
record, whose future the caller awaits before anything that depends on it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from guardstream.sla.deadlines import Deadlines
from guardstream.sla.logic import Item

log = logging.getLogger(__name__)


class ItemTable:
    def __init__(self, table: Any, deadlines: Deadlines) -> None:
        self._table = table
        self._deadlines = deadlines

    def get(self, key: str) -> Item | None:
        raw = self._table.data.get(key)
        if raw is None:
            return None
        try:
            return Item.from_dict(raw)
        except (ValueError, KeyError, TypeError):
            log.exception("unreadable SLA table entry replaced", extra={"key": key[:200]})
            return None

    def put(self, item: Item) -> asyncio.Future[Any]:
        value = item.to_dict()
        self._table.data[item.key] = value
        future: asyncio.Future[Any] = self._table.send_changelog(item.partition, item.key, value)
        return future

    def delete(self, item: Item) -> asyncio.Future[Any]:
        return self.forget(item.partition, item.key)

    def forget(self, partition: int, key: str) -> asyncio.Future[Any]:
        self._table.data.pop(key, None)
        self._deadlines.discard(partition, key)
        future: asyncio.Future[Any] = self._table.send_changelog(
            partition, key, None, value_serializer="raw"
        )
        return future
