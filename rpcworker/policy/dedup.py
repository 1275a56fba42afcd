"""Ids of requests that completed, so that a redelivery is not run twice."""

from __future__ import annotations

import collections

from rpcworker.wire.replyformat import Reply


class CompletedCache:
    """The last ``size`` completed request ids and their replies (LRU, loop thread only)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict[str, Reply | None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, uid: object) -> bool:
        return uid in self._items

    def get(self, uid: str) -> Reply | None:
        return self._items.get(uid)

    def add(self, uid: str | None, reply: Reply | None) -> None:
        if not self.size or not uid:
            return
        self._items[uid] = reply
        self._items.move_to_end(uid)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
