"""Large entity-group transactions (the audit flush's), written without ``email``.

The SDK builds a transaction's ``multipart/mixed`` body with ``email.generator`` and
parses the answer with ``email.parser``: about 0.4 ms of CPU per row, synchronously, so
a 100-row audit batch held the event loop (every request in flight) for tens of ms
once a second (issue #23, defect 6; bench/README.md). Running the SDK in a thread did
not help: the loop then waited for the GIL at each of its system calls, for up to the
switch interval, and a 64-client load served a quarter fewer requests. Here the body
is the same text put together with string formatting, sent through the table client's
own pipeline (authentication, retries, the store's exchange counting and watched
transport), and the answer is read for its status lines only: a few ms per 100 rows.

Only what the audit writes: ``create`` and ``upsert`` (merge or replace), no ETags. The
parts mirror what azure-data-tables 12.7 sends for the same operations (its headers,
its URL quoting, its entity JSON via its own ``_add_entity_properties``);
tests/storage/test_tables.py writes the same rows both ways and compares them as
stored. A Cosmos DB table endpoint (whose merge differs) goes through ``submit``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from azure.core.rest import HttpRequest
from azure.core.serialization import AzureJSONEncoder
from azure.data.tables import UpdateMode
from azure.data.tables._serialize import _add_entity_properties
from azure.data.tables.aio import TableClient

from sk_core.errors import StorageUnavailable
from sk_core.storage._tables import CONFLICT_CODES, Conflict, storage_errors, submit

_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ERROR_CODE = re.compile(rb'"code"\s*:\s*"([^"]+)"')


Operations = list[tuple[str, dict[str, Any], dict[str, Any]]]


async def submit_bulk(table: TableClient, operations: Operations) -> None:
    """One entity-group transaction of ``create``/``upsert`` operations; lost races
    become ``Conflict``, everything else that fails ``StorageUnavailable``, as ``submit``.
    A table that is not the SDK's (the in-memory account's) takes ``submit``."""
    if not operations:
        return
    if not isinstance(table, TableClient) or getattr(table, "_cosmos_endpoint", False):
        await submit(table, operations)
        return
    account = table.url.split("?", 1)[0].rstrip("/")
    version = table.api_version
    date = formatdate(usegmt=True)
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
    for index, (kind, entity, options) in enumerate(operations):
        method, path, accept = _target(table.table_name, kind, entity, options)
        body = json.dumps(_add_entity_properties(entity), cls=AzureJSONEncoder)  # ASCII: len = bytes
        parts.append(
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\n{method} {account}/{path} HTTP/1.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nx-ms-version: {version}\r\n"
            f"DataServiceVersion: 3.0\r\nAccept: {accept}\r\nx-ms-date: {date}\r\nDate: {date}\r\n\r\n"
            f"{body}\r\n"
        )
    parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
    request = HttpRequest(
        "POST",
        f"{account}/$batch",
        headers={
            "x-ms-version": version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content="".join(parts).encode(),
    )
    with storage_errors():
        # The client's own pipeline; streamed, as the SDK sends its batches, so that no
        # policy tries to decode the multipart answer.
        response = await table._client.send_request(request, stream=True)
        content = await response.read()
    _check(response.status_code, content)


def _target(
    table: str, kind: str, entity: Mapping[str, Any], options: Mapping[str, Any]
) -> tuple[str, str, str]:
    """(method, path, Accept) of one operation, as the SDK's batch builds them."""
    if kind == "create":
        return "POST", quote(table, safe=""), "application/json;odata=minimalmetadata"
    if kind != "upsert" or set(options) - {"mode"}:
        raise ValueError(f"submit_bulk writes create and plain upsert operations, not {kind} {dict(options)}")
    mode = options.get("mode", UpdateMode.MERGE)
    # Keys as the SDK's _prepare_key and URL serializer make them: '' for ', then quoted.
    keys = (quote(str(entity[name]).replace("'", "''"), safe="") for name in ("PartitionKey", "RowKey"))
    path = "{}(PartitionKey='{}',RowKey='{}')".format(quote(table, safe=""), *keys)
    return ("PUT" if mode == UpdateMode.REPLACE else "PATCH"), path, "application/json"


def _check(status: int, body: bytes) -> None:
    """A transaction's answer: 202 with one status line per operation (all 2xx), or one
    failed operation's status and error code."""
    if status != 202:
        failed = _ERROR_CODE.search(body)
        code = f" {failed[1].decode()}" if failed else ""
        raise StorageUnavailable(f"transaction failed: HTTP {status}{code}")
    for match in _STATUS.finditer(body):
        part_status = int(match[1])
        if 200 <= part_status < 300:
            continue
        found = _ERROR_CODE.search(body, match.end())
        code = found[1].decode() if found else ""
        if code in CONFLICT_CODES or part_status in (409, 412):
            raise Conflict(code or str(part_status))
        raise StorageUnavailable(f"transaction failed: {code or part_status}")
