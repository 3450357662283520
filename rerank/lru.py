"""The bounded, thread-safe LRU that rerankers keep per-item features in (BLIP-2, cross-encoder)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable

from common.checks import check_int


class FeatureCache:
    """A bounded LRU map shared by threads; ``capacity`` 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = check_int("cache_size", capacity, low=0)
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key: Hashable) -> Any:
        """Removes and returns ``key``'s value (None when absent)."""
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)
