"""The response cache: exact answers, tenant-isolated, shared by every instance.

**Key.** A SHA-256 of the scope (the tenant, or ``_shared`` for a function that opts in
to a cross-tenant cache), the function, the model id, the whole prompt file (template
and every execution setting: editing the file invalidates its answers), the validated
NFC-normalised arguments, the requested ``max_tokens`` and the function's redaction
policy (``sk_core.safety.policy_id``: its kinds, allowed link hosts and rules version).
Answers are stored already redacted, so a process with another policy (``SKF_REDACTION``
off in one, the default in another) must not be served them. Two tenants never derive
the same key, and the Table partition is the scope as well, so a lookup cannot even
read another tenant's row.

**Where.** Each process keeps a byte-bounded LRU in memory in front of one Table
Storage table (``<prefix>cache``) that every instance shares. An answer is split across
string properties of at most 32,000 UTF-16 units (a property holds 64 KiB), at most
``_MAX_PARTS`` of them (an entity holds 1 MiB); a longer answer is not stored. A Table
hit costs one point read. Memory entries live at most ``memory_seconds``, so a purge
(the admin CLI, another process) reaches every instance within that time. Expired rows
are deleted by the maintenance sweep (``purge_expired``).

**Single flight.** Concurrent identical misses in one process make one call: the first
leads, the others wait for it (bounded by the model deadline) and then find its answer
in memory. A leader whose answer could not be stored (a failure, a clamped answer)
lets the next waiter lead.

This module knows nothing of tenants' limits or of HTTP: the pipeline decides what
may be stored and what a hit costs (``sk_core.pipeline``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sk_core.catalog import CachePolicy
from sk_core.errors import ModelTimeout, StorageUnavailable
from sk_core.pricing import Usage

if TYPE_CHECKING:
    from sk_core.catalog import FunctionSpec
    from sk_core.storage import TableStore

logger = logging.getLogger(__name__)

CACHE_TABLE = "cache"
# The partition of cross-tenant entries; tenant ids start with a letter or digit.
SHARED = "_shared"
# Bumped when the key's inputs or the row layout change: old rows are then never read.
_KEY_VERSION = 2  # 2: the redaction policy is part of the key
_PART_UNITS = 32_000  # UTF-16 code units per string property (the limit is 32,768)
_MAX_PARTS = 15  # 15 x 64 KiB plus the other properties stays under 1 MiB per entity
_ENTRY_OVERHEAD = 512  # bytes charged per memory entry besides its text (key, numbers)

_T = TypeVar("_T")
Tier = Literal["memory", "table"]


class Directive(StrEnum):
    """What the request's ``Cache-Control`` asks of the cache."""

    DEFAULT = "default"  # read, and store a fresh answer
    NO_CACHE = "no-cache"  # do not read: a fresh answer, which is stored
    NO_STORE = "no-store"  # neither read nor store


def directive(header: str | None) -> Directive:
    """The directive of a ``Cache-Control`` request header (``no-store`` wins)."""
    tokens = {part.strip().split("=")[0].lower() for part in (header or "").split(",")}
    if "no-store" in tokens:
        return Directive.NO_STORE
    if "no-cache" in tokens:
        return Directive.NO_CACHE
    return Directive.DEFAULT


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer (already redacted) with the original call's accounting; it has
    the members of a model ``Completion`` that a response shows."""

    text: str
    model: str
    finish_reason: str | None
    usage: Usage  # the original call's, as the provider reported it
    cost_nano: int  # what the original call cost: what a hit saves
    redactions: dict[str, int]
    created_at: float  # epoch seconds
    expires_at: float

    @property
    def size(self) -> int:
        """Bytes it occupies in memory, for the LRU's bound (an estimate)."""
        return len(self.text.encode()) + _ENTRY_OVERHEAD

    def age(self, now: float) -> int:
        """Seconds since it was produced (the ``Age`` header)."""
        return max(0, int(now - self.created_at))


@dataclass(frozen=True)
class Slot:
    """Where one call's answer lives: its partition (scope), row and lifetime."""

    scope: str
    function_id: str
    key: str
    ttl_seconds: float

    @property
    def row(self) -> str:
        """The RowKey: the function first, so a purge of one function is a range query."""
        return f"{_function_prefix(self.function_id)}{self.key}"


def _function_prefix(function_id: str) -> str:
    return function_id.replace("/", ":") + ":"  # '/' is not allowed in a RowKey


def _canonical(value: Any) -> Any:
    # Validation already normalised text to NFC; an entry that did not validate (or
    # that a later caller builds) must still not split one text into two keys.
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def cache_key(
    *,
    scope: str,
    function_id: str,
    model_id: str,
    prompt_file: str,
    arguments: Mapping[str, Any],
    max_tokens: int,
    redaction: str = "",
) -> str:
    """The hex SHA-256 naming one answer (see the module docstring for what goes in)."""
    material = [
        _KEY_VERSION,
        scope,
        function_id,
        model_id,
        hashlib.sha256(prompt_file.encode()).hexdigest(),
        _canonical(arguments),
        max_tokens,
        redaction,
    ]
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def split_text(text: str) -> list[str] | None:
    """``text`` as property-sized parts (None: too long for one entity)."""
    parts: list[str] = []
    start = units = 0
    for index, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1  # a surrogate pair in UTF-16; never split
        if units + width > _PART_UNITS:
            parts.append(text[start:index])
            start, units = index, 0
        units += width
    parts.append(text[start:])
    return parts if len(parts) <= _MAX_PARTS else None


def _entity(slot: Slot, answer: CachedAnswer, parts: list[str]) -> dict[str, Any]:
    from sk_core.storage import int64

    return {
        "PartitionKey": slot.scope,
        "RowKey": slot.row,
        "function": slot.function_id,
        "model": answer.model,
        "finish_reason": answer.finish_reason or "",
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "total_tokens": answer.usage.total_tokens,
        "cost_nano": int64(answer.cost_nano),
        "redactions": json.dumps(answer.redactions, sort_keys=True),
        "created_at": datetime.fromtimestamp(answer.created_at, UTC),
        "expires_at": datetime.fromtimestamp(answer.expires_at, UTC),
        "parts": len(parts),
        **{f"text{i}": part for i, part in enumerate(parts)},
    }


def _answer(entity: Any) -> CachedAnswer:
    from sk_core.storage import read_int

    return CachedAnswer(
        text="".join(str(entity.get(f"text{i}", "")) for i in range(read_int(entity.get("parts")))),
        model=str(entity["model"]),
        finish_reason=str(entity.get("finish_reason") or "") or None,
        usage=Usage(
            prompt_tokens=read_int(entity.get("prompt_tokens")),
            completion_tokens=read_int(entity.get("completion_tokens")),
            total_tokens=read_int(entity.get("total_tokens")),
        ),
        cost_nano=read_int(entity.get("cost_nano")),
        redactions=json.loads(str(entity.get("redactions") or "{}")),
        created_at=entity["created_at"].timestamp(),
        expires_at=entity["expires_at"].timestamp(),
    )


class _Memory:
    """A byte-bounded LRU of answers, each kept until its own expiry or ``max_seconds``."""

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self._max_bytes = max_bytes
        self._max_seconds = max_seconds
        self._entries: OrderedDict[str, tuple[CachedAnswer, float]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if now >= found[1]:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, answer: CachedAnswer, now: float) -> None:
        if answer.size > self._max_bytes:
            return
        self._remove(key)
        self._entries[key] = (answer, min(answer.expires_at, now + self._max_seconds))
        self.bytes += answer.size
        while self.bytes > self._max_bytes:
            self._remove(next(iter(self._entries)))

    def drop(self, keep: Callable[[str], bool]) -> None:
        for key in [k for k in self._entries if not keep(k)]:
            self._remove(key)

    def _remove(self, key: str) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self.bytes -= found[0].size


class ResponseCache:
    """The cache of one process: memory in front of the shared table, single flight."""

    def __init__(
        self,
        *,
        store: TableStore,
        ttl_seconds: float,
        memory_bytes: int,
        memory_seconds: float,
        wait_seconds: float,
        overrides: Callable[[str], CachePolicy | None] = lambda _: None,
        redaction: Callable[[str], str] = lambda _: "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._memory = _Memory(memory_bytes, memory_seconds)
        self._wait = wait_seconds
        self._overrides = overrides
        self._redaction = redaction  # a function's redaction policy id (part of the key)
        self._clock = clock
        self._flights: dict[str, asyncio.Future[None]] = {}

    def now(self) -> float:
        """The cache's clock (epoch seconds; tests move it)."""
        return self._clock()

    @staticmethod
    def directive(header: str | None) -> Directive:
        """The request's ``Cache-Control`` as a directive (see ``directive``)."""
        return directive(header)

    def policy(self, spec: FunctionSpec) -> CachePolicy:
        """The function's policy: ``SKF_CACHE_FUNCTIONS`` first, else its prompt file."""
        return self._overrides(spec.id) or spec.cache

    def slot(
        self, tenant_id: str, spec: FunctionSpec, model_id: str, arguments: Mapping[str, Any], max_tokens: int
    ) -> Slot:
        """Where a call's answer is (or will be) kept."""
        policy = self.policy(spec)
        scope = SHARED if policy.shared else tenant_id
        key = cache_key(
            scope=scope,
            function_id=spec.id,
            model_id=model_id,
            prompt_file=spec.yaml_text,
            arguments=arguments,
            max_tokens=max_tokens,
            redaction=self._redaction(spec.id),
        )
        return Slot(scope, spec.id, key, policy.ttl_seconds or self._ttl)

    def answer(self, slot: Slot, **fields: Any) -> CachedAnswer:
        """A fresh answer to store in ``slot`` (created now, expiring after its TTL)."""
        now = self._clock()
        return CachedAnswer(created_at=now, expires_at=now + slot.ttl_seconds, **fields)

    async def get(self, slot: Slot) -> tuple[CachedAnswer, Tier] | None:
        """The live answer in memory, else in the table (one point read), else None."""
        now = self._clock()
        found = self._memory.get(slot.key, now)
        if found is not None:
            return found, "memory"
        from azure.core.exceptions import ResourceNotFoundError

        from sk_core.storage import storage_errors

        try:
            table = await self._store.table(CACHE_TABLE)
            with storage_errors():
                try:
                    entity = await table.get_entity(slot.scope, slot.row)
                except ResourceNotFoundError:
                    return None
        except StorageUnavailable as exc:
            # A cache that cannot be read is a miss: admission then decides (and fails
            # closed if storage is really gone).
            logger.warning("cache read failed (%s); treated as a miss", exc.reason)
            return None
        answer = _answer(entity)
        if answer.expires_at <= now:
            return None  # the sweep deletes it
        self._memory.put(slot.key, answer, now)
        return answer, "table"

    async def put(self, slot: Slot, answer: CachedAnswer) -> bool:
        """Keep ``answer`` in memory and in the table; False when it is too long to store.

        A failed table write is logged, never raised: the caller has its answer already.
        """
        parts = split_text(answer.text)
        if parts is None:
            return False
        self._memory.put(slot.key, answer, self._clock())
        from azure.data.tables import UpdateMode

        from sk_core.storage import storage_errors

        try:
            table = await self._store.table(CACHE_TABLE)
            with storage_errors():
                await table.upsert_entity(_entity(slot, answer, parts), mode=UpdateMode.REPLACE)
        except StorageUnavailable as exc:
            logger.warning("cache write failed (%s); the answer stays in this process only", exc.reason)
        return True

    async def fetch(
        self,
        slot: Slot,
        mode: Directive,
        compute: Callable[[], Awaitable[_T]],
    ) -> tuple[CachedAnswer, Tier] | _T:
        """A hit, or what ``compute`` returns (it stores its own answer when it may).

        Identical concurrent calls in this process share one ``compute`` (single
        flight); the others wait up to the model deadline, then read its answer.
        ``no-cache`` computes without reading or waiting; ``no-store`` is not cached
        at all (the caller does not come here).
        """
        if mode is Directive.NO_CACHE:
            return await compute()
        late = "An identical request in flight did not finish within the deadline."
        deadline = time.monotonic() + self._wait
        while True:
            found = await self.get(slot)
            if found is not None:
                return found
            flight = self._flights.get(slot.key)
            if flight is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelTimeout(late)
            # Shielded: a waiter that times out or goes away must not cancel the leader's flight.
            try:
                await asyncio.wait_for(asyncio.shield(flight), left)
            except TimeoutError:
                raise ModelTimeout(late) from None
        flight = self._flights[slot.key] = asyncio.get_running_loop().create_future()
        try:
            return await compute()
        finally:
            del self._flights[slot.key]
            flight.set_result(None)

    # ---------------------------------------------------------------- operations

    async def purge(self, scope: str, function_id: str | None = None) -> int:
        """Delete a tenant's (or the shared) entries, of one function or all; returns how many.

        This process's memory is emptied at once; other processes forget within their
        ``memory_seconds``.
        """
        query, parameters = "PartitionKey eq @p", {"p": scope}
        if function_id is not None:
            prefix = _function_prefix(function_id)
            query += " and RowKey ge @lo and RowKey lt @hi"
            parameters.update(lo=prefix, hi=prefix[:-1] + ";")  # ';' follows ':'
        deleted = await self._delete_where(query, parameters)
        self._memory.drop(lambda _: False)
        return deleted

    async def purge_expired(self) -> int:
        """Delete every expired entry (the maintenance sweep); returns how many."""
        return await self._delete_where(
            "expires_at lt @now", {"now": datetime.fromtimestamp(self._clock(), UTC)}
        )

    async def _delete_where(self, query: str, parameters: dict[str, Any]) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        from sk_core.storage import storage_errors

        table = await self._store.table(CACHE_TABLE)
        deleted = 0
        keys = ["PartitionKey", "RowKey"]
        with storage_errors():
            rows = [
                (e["PartitionKey"], e["RowKey"])
                async for e in table.query_entities(query, parameters=parameters, select=keys)
            ]
            for partition, row in rows:
                try:
                    await table.delete_entity(partition, row)
                except ResourceNotFoundError:
                    continue  # another sweeper was first
                deleted += 1
        return deleted

    async def stats(self) -> dict[str, Any]:
        """Entries by scope and function in the shared table (live and expired, UTF-16
        bytes of answer text), and this process's memory use."""
        from sk_core.storage import read_int, storage_errors

        table = await self._store.table(CACHE_TABLE)
        now = datetime.fromtimestamp(self._clock(), UTC)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        with storage_errors():
            async for entity in table.query_entities("PartitionKey ge ''"):
                group = groups.setdefault(
                    (entity["PartitionKey"], str(entity.get("function", ""))),
                    {"entries": 0, "expired": 0, "text_bytes": 0},
                )
                group["entries"] += 1
                group["expired"] += int(entity["expires_at"] <= now)
                parts = read_int(entity.get("parts"))
                group["text_bytes"] += sum(2 * len(str(entity.get(f"text{i}", ""))) for i in range(parts))
        return {
            "table": [
                {"scope": scope, "function": function, **group}
                for (scope, function), group in sorted(groups.items())
            ],
            "memory": {"entries": len(self._memory), "bytes": self._memory.bytes},
        }
