"""Operator CLI: tenants, API keys, usage and the hold sweep, against the service's storage.

Run it with the same environment as the service (``SKF_STORAGE_CONNECTION_STRING`` or
``AzureWebJobsStorage``, or ``SKF_STORAGE_ACCOUNT_ENDPOINT``; ``SKF_API_KEY_PEPPER``;
``SKF_STORAGE_TABLE_PREFIX``): keys issued here are hashed with the service's pepper and
land in the service's tables, so any other environment would issue keys that never work.

    python -m sk_core.admin tenant create acme --name "Acme Corp" --daily-usd 5
    python -m sk_core.admin key issue acme --name ci --scopes text/summarize
    python -m sk_core.admin usage acme --expired
    python -m sk_core.admin usage acme --days 30 --csv > acme.csv
    python -m sk_core.admin admin-key issue --name ops
    python -m sk_core.admin --json tenant list
    python -m sk_core.admin memory purge acme --collection handbook

Every command takes ``--json`` (before or after the command) for scripts. Exit codes:
0 done; 1 refused (unknown tenant or key, duplicate, scope outside the tenant);
2 bad usage, bad value or bad settings; 3 storage unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from pydantic import ValidationError

from sk_core.accounts import TenantError
from sk_core.admin._cache import add_cache_commands
from sk_core.admin._command import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STORAGE,
    EXIT_USAGE,
    BadValue,
    Context,
    Handler,
    Output,
    Refused,
)
from sk_core.admin._keys import add_admin_key_commands, add_key_commands
from sk_core.admin._memory import add_memory_commands
from sk_core.admin._tenants import add_tenant_commands
from sk_core.admin._usage import add_sweep_and_audit_commands, add_usage_command
from sk_core.composition import make_store, make_tenant_store
from sk_core.errors import StorageUnavailable
from sk_core.settings import Settings
from sk_core.storage import development_connection_string


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (every leaf command records its handler and parser)."""
    # --json may come before or after the command. SUPPRESS on the subcommands keeps
    # their unset flag from overwriting a top-level --json.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )

    parser = argparse.ArgumentParser(
        prog="python -m sk_core.admin",
        description="Manage tenants, API keys and usage in the service's Table Storage.",
        epilog="exit codes: 0 ok, 1 refused (unknown/duplicate), 2 bad usage or value, 3 storage unreachable",
    )
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help_: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    # In this order: it is the order of ``--help``.
    add_tenant_commands(commands, leaf)
    add_key_commands(commands, leaf)
    add_usage_command(commands, leaf)
    add_admin_key_commands(commands, leaf)
    add_sweep_and_audit_commands(commands, leaf)
    add_cache_commands(commands, leaf)
    add_memory_commands(commands, leaf)
    return parser


# --- running ---------------------------------------------------------------------------


def _connection_parts(connection_string: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in connection_string.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    return parts


def _without_secrets(url: str) -> str:
    """scheme://host[:port]/path: no user info, no query (a SAS token lives there)."""
    try:
        split = urllib.parse.urlsplit(url)
        host = split.hostname or ""
        port = f":{split.port}" if split.port else ""
    except ValueError:
        return "unparseable endpoint"
    return urllib.parse.urlunsplit((split.scheme, f"{host}{port}", split.path, "", "")) or "unknown endpoint"


# Any of these names the store; none set means the local development default.
_STORAGE_SETTINGS = ("SKF_STORAGE_CONNECTION_STRING", "AzureWebJobsStorage", "SKF_STORAGE_ACCOUNT_ENDPOINT")


def storage_endpoint(settings: Settings) -> str:
    """Where the table service is expected, printable (account keys and SAS removed)."""
    if settings.storage_account_endpoint:
        return _without_secrets(settings.storage_account_endpoint)
    raw = settings.storage_connection_string.get_secret_value()
    if raw.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        raw = development_connection_string()
    parts = _connection_parts(raw)
    if "tableendpoint" in parts:
        return _without_secrets(parts["tableendpoint"])
    account = parts.get("accountname")
    if account:
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        return f"{protocol}://{account}.table.{suffix}"
    return "unknown endpoint"


def _redact(message: str, settings: Settings) -> str:
    # Errors raised while parsing a connection string may quote parts of it.
    parts = _connection_parts(settings.storage_connection_string.get_secret_value())
    for name in ("accountkey", "sharedaccesssignature"):
        if parts.get(name):
            message = message.replace(parts[name], "***")
    return message


def _settings_message(exc: ValidationError) -> str:
    # Not str(exc): pydantic quotes the input, and for a model-level check the input is
    # every setting, connection string and pepper included.
    messages = []
    for error in exc.errors(include_url=False, include_input=False):
        field, *inside = [str(part) for part in error["loc"]] or [""]
        if field and field != "AzureWebJobsStorage" and not field.upper().startswith("SKF_"):
            field = f"SKF_{field.upper()}"  # name the variable the operator sets
        # Inside a JSON-valued setting: SKF_MODEL_PRICES['gpt-4o']['input'].
        location = field + "".join(f"[{part!r}]" for part in inside)
        message = error["msg"].removeprefix("Value error, ")
        prefix = f"{location}: " if location and not message.startswith(location) else ""
        messages.append(f"{prefix}{message}")
    return "; ".join(messages)


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


async def _run(args: argparse.Namespace, settings: Settings) -> Output:
    try:
        store = make_store(settings)
    except ValueError as exc:  # no storage configured, or a malformed connection string
        raise BadValue(f"invalid storage settings: {_redact(str(exc), settings)}") from None
    try:
        ctx = Context(settings=settings, store=store, tenants=make_tenant_store(settings, store))
        handler: Handler = args.handler
        try:
            return await handler(args, ctx)
        except TenantError as exc:
            raise Refused(str(exc)) from None
    finally:
        # Every path, errors included: an unclosed aiohttp session warns at exit.
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage or values, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command_parser: argparse.ArgumentParser = args.parser
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    try:
        settings = Settings()
    except ValidationError as exc:
        return _usage_error(command_parser, f"invalid settings: {_settings_message(exc)}")
    if not any(os.environ.get(name) for name in _STORAGE_SETTINGS):
        # Nothing names a store: the local default (Azurite) is meant for `make run` only.
        # Say so every time, so keys are never issued into the wrong store unnoticed.
        print(
            "note: no storage configured (" + ", ".join(_STORAGE_SETTINGS) + "): using local "
            f"development storage at {storage_endpoint(settings)}",
            file=sys.stderr,
        )

    try:
        output = asyncio.run(_run(args, settings))
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BadValue as exc:
        return _usage_error(command_parser, str(exc))
    except (StorageUnavailable, AzureError) as exc:
        # One line, no traceback: the operator needs where, not the SDK's stack.
        cause = exc.__cause__ if isinstance(exc, StorageUnavailable) else exc
        detail = f": HTTP {cause.status_code}" if isinstance(cause, HttpResponseError) else ""
        print(f"error: storage unreachable ({storage_endpoint(settings)}){detail}", file=sys.stderr)
        return EXIT_STORAGE

    if args.json:
        print(json.dumps(output.data, indent=2, default=_json_default))
    else:
        print(output.text)
    return EXIT_OK

