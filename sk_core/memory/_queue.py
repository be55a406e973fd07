"""The ingestion queue: an Azure Storage queue (Azurite's queue service locally).

Messages are base64 text, the Functions host's default encoding (host.json
``extensions.queues.messageEncoding``), so the queue trigger and the container's
worker read the very same messages. A message carries ``{"tenant", "job"}`` only: a
message is at most 64 KiB, documents are not; they wait in Table Storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

# The well-known Azurite development account (documented by Microsoft; not a secret).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class QueueUnavailable(Exception):
    """The queue service did not answer (or is not configured)."""


def development_queue_connection_string(port: int = 10001) -> str:
    """What ``UseDevelopmentStorage=true`` means for the queue endpoint."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{port}/{_DEV_ACCOUNT};"
    )


def queue_account_url(table_endpoint: str) -> str | None:
    """The queue endpoint of the account whose table endpoint is given (managed identity:
    https://<account>.table.core.windows.net -> https://<account>.queue.core.windows.net)."""
    host = table_endpoint.strip().rstrip("/")
    if ".table." not in host:
        return None
    return host.replace(".table.", ".queue.", 1)


def queue_connection_string(raw: str) -> str | None:
    """The connection string to open the queue with, or None when ``raw`` cannot
    reach a queue: a string that lists explicit endpoints but no ``QueueEndpoint``
    (a tables-only test account) would otherwise send the SDK to the public cloud."""
    if not raw.strip():
        return None
    if raw.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        return development_queue_connection_string()
    parts = {p.split("=", 1)[0].strip().lower() for p in raw.split(";") if "=" in p}
    if "queueendpoint" not in parts and parts & {"tableendpoint", "blobendpoint"}:
        return None
    return raw


@dataclass(frozen=True)
class Delivery:
    """One received message."""

    id: str
    pop_receipt: str
    dequeue_count: int
    content: str


class IngestQueue:
    """Send, receive, delay, delete and poison ingestion messages."""

    def __init__(
        self,
        connection_string: str | None,
        name: str,
        *,
        retries: int = 2,
        account_url: str | None = None,
    ) -> None:
        """Either a connection string, or ``account_url`` (https://<account>.queue.core.windows.net)
        reached with ``DefaultAzureCredential`` (a user-assigned identity via AZURE_CLIENT_ID,
        as the table store)."""
        self.name = name
        self._clients: dict[str, QueueClient] = {}
        self._connection = connection_string
        self._account_url = account_url if connection_string is None else None
        self._credential: Any = None
        self._retries = retries
        self._created: set[str] = set()

    @property
    def configured(self) -> bool:
        return self._connection is not None or self._account_url is not None

    def _new_client(self, name: str) -> QueueClient:
        options: dict[str, Any] = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
            "retry_total": self._retries,
            "retry_backoff_factor": 0.2,
            "connection_timeout": 2,
            "read_timeout": 5,
        }
        if self._connection is not None:
            return QueueClient.from_connection_string(self._connection, name, **options)
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return QueueClient(self._account_url or "", name, credential=self._credential, **options)

    async def _client(self, name: str) -> QueueClient:
        if not self.configured:
            raise QueueUnavailable("no queue endpoint is configured")
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self._new_client(name)
        if name not in self._created:
            try:
                await client.create_queue()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise QueueUnavailable(f"cannot create queue {name}: {type(exc).__name__}") from exc
            self._created.add(name)
        return client

    async def send(self, message: dict[str, Any], *, queue: str | None = None, delay: int = 0) -> None:
        client = await self._client(queue or self.name)
        try:
            await client.send_message(json.dumps(message), visibility_timeout=delay or None)
        except AzureError as exc:
            raise QueueUnavailable(f"cannot send: {type(exc).__name__}") from exc

    async def receive(self, *, limit: int, visibility_timeout: int) -> list[Delivery]:
        client = await self._client(self.name)
        found: list[Delivery] = []
        try:
            async for message in client.receive_messages(
                messages_per_page=limit, max_messages=limit, visibility_timeout=visibility_timeout
            ):
                found.append(
                    Delivery(
                        message.id, message.pop_receipt or "", message.dequeue_count or 1, message.content
                    )
                )
        except AzureError as exc:
            raise QueueUnavailable(f"cannot receive: {type(exc).__name__}") from exc
        return found

    async def delete(self, delivery: Delivery) -> None:
        client = await self._client(self.name)
        try:
            await client.delete_message(delivery.id, delivery.pop_receipt)
        except AzureError as exc:
            raise QueueUnavailable(f"cannot delete: {type(exc).__name__}") from exc

    async def delay(self, delivery: Delivery, seconds: int) -> None:
        """Make a failed message visible again after ``seconds`` (the retry's backoff)."""
        client = await self._client(self.name)
        try:
            await client.update_message(delivery.id, delivery.pop_receipt, visibility_timeout=seconds)
        except AzureError as exc:
            raise QueueUnavailable(f"cannot delay: {type(exc).__name__}") from exc

    async def poison(self, content: str) -> None:
        """Move a message's content to ``<queue>-poison``, as the Functions host does."""
        client = await self._client(f"{self.name}-poison")
        try:
            await client.send_message(content)
        except AzureError as exc:
            raise QueueUnavailable(f"cannot poison: {type(exc).__name__}") from exc

    async def peek_poison(self, limit: int = 32) -> list[str]:
        client = await self._client(f"{self.name}-poison")
        try:
            return [m.content for m in await client.peek_messages(max_messages=limit)]
        except AzureError as exc:
            raise QueueUnavailable(f"cannot peek: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        if self._credential is not None:
            await self._credential.close()
