"""``memory``: list and purge a tenant's document collections (sk_core.memory)."""

from __future__ import annotations

import argparse
import re

from sk_core.admin._arguments import tenant_id_arg
from sk_core.admin._command import Commands, Context, Leaf, Output
from sk_core.admin._format import text_table


def _collection_name(text: str) -> str:
    # Deferred: the memory package loads its embedder's dependencies (numpy) on import.
    from sk_core.memory import COLLECTION_PATTERN

    if not re.match(COLLECTION_PATTERN, text):
        raise argparse.ArgumentTypeError(f"invalid collection name: {text!r}")
    return text


async def memory_list(args: argparse.Namespace, ctx: Context) -> Output:
    """A tenant's document collections with their document counts."""
    from sk_core.memory import tenant_collections  # deferred, as above

    await ctx.tenants.require_tenant(args.tenant_id)
    found = await tenant_collections(ctx.settings, ctx.store, args.tenant_id)
    rows = [(c.name, str(c.documents), c.created_at) for c in found]
    text = text_table(("collection", "documents", "created"), rows, right=(1,)) if rows else "no collections"
    return Output([c.model_dump() for c in found], text)


async def memory_purge(args: argparse.Namespace, ctx: Context) -> Output:
    """Delete a tenant's collections (all, or one): chunks, manifests and rows."""
    from sk_core.memory import purge_collections  # deferred, as above

    await ctx.tenants.require_tenant(args.tenant_id)
    purged = await purge_collections(ctx.settings, ctx.store, args.tenant_id, args.collection)
    text = ", ".join(f"{name} ({n} documents)" for name, n in purged.items()) or "nothing"
    return Output({"tenant": args.tenant_id, "purged": purged}, f"purged {text} of {args.tenant_id}")


def add_memory_commands(commands: Commands, leaf: Leaf) -> None:
    """``memory`` and its actions."""
    memory = commands.add_parser("memory", help="list, purge a tenant's document collections")
    memory_cmds = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    listing = leaf(memory_cmds, "list", memory_list, "a tenant's document collections")
    listing.add_argument("tenant_id", type=tenant_id_arg)
    purge = leaf(memory_cmds, "purge", memory_purge, "delete a tenant's collections (all, or --collection)")
    purge.add_argument("tenant_id", type=tenant_id_arg)
    purge.add_argument("--collection", type=_collection_name, metavar="NAME", help="only this collection")
