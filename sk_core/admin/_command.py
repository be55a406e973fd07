"""What every admin command shares: its context, its output, its errors and exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from sk_core.accounts import TenantStore
from sk_core.limits import Ledger
from sk_core.settings import Settings
from sk_core.storage import TableStore

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3


class Refused(Exception):
    """The store refused the operation (unknown id, duplicate): exit 1."""


class BadValue(Exception):
    """A value is invalid in a way argparse could not see on its own: exit 2."""


@dataclass(frozen=True)
class Output:
    """What a command produced: the same facts for ``--json`` and for people."""

    data: Any
    text: str


@dataclass(frozen=True)
class Context:
    """Everything a command may touch; the store is closed by the caller."""

    settings: Settings
    store: TableStore
    tenants: TenantStore

    def ledger(self) -> Ledger:
        """A ledger configured exactly as the service's (same lease, same minimum answer)."""
        return Ledger(
            store=self.store,
            lease_seconds=self.settings.hold_lease_seconds,
            min_answer_tokens=self.settings.min_answer_tokens,
        )


Handler = Callable[[argparse.Namespace, Context], Awaitable[Output]]
# A subcommand group, and the function that adds one command to it (build_parser's):
# each command family adds its own commands with it.
# (A string: argparse's action class is not subscriptable at run time.)
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Leaf = Callable[["Commands", str, Handler, str], argparse.ArgumentParser]
