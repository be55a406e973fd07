"""``cache``: purge and stats of the response cache."""

from __future__ import annotations

import argparse

from sk_core.admin._arguments import function_id_arg, tenant_id_arg
from sk_core.admin._command import Commands, Context, Leaf, Output
from sk_core.admin._format import text_table
from sk_core.cache import SHARED
from sk_core.composition import make_cache


async def cache_purge(args: argparse.Namespace, ctx: Context) -> Output:
    """Delete cached answers of a tenant (or the cross-tenant ones), of one function or all."""
    if args.tenant is not None:
        await ctx.tenants.require_tenant(args.tenant)
    scope = args.tenant if args.tenant is not None else SHARED
    deleted = await make_cache(ctx.settings, ctx.store).purge(scope, args.function)
    what = ("shared entries" if scope == SHARED else scope) + (f" / {args.function}" if args.function else "")
    memory = ctx.settings.cache_memory_seconds
    return Output(
        {"scope": scope, "function": args.function, "deleted": deleted},
        f"deleted {deleted} cached answer(s) of {what}; running instances forget them within {memory:g} s",
    )


async def cache_stats(args: argparse.Namespace, ctx: Context) -> Output:
    """Cached answers in the shared table, by tenant (or shared) and function."""
    stats = await make_cache(ctx.settings, ctx.store).stats()
    rows = stats["table"]
    table_rows = [
        (r["scope"], r["function"], str(r["entries"]), str(r["expired"]), str(r["text_bytes"])) for r in rows
    ]
    text = (
        text_table(("scope", "function", "entries", "expired", "text bytes"), table_rows, right=(2, 3, 4))
        if table_rows
        else "no cached answers"
    )
    return Output(rows, text)


def add_cache_commands(commands: Commands, leaf: Leaf) -> None:
    """``cache`` and its actions."""
    cache = commands.add_parser("cache", help="purge, stats of the response cache")
    cache_cmds = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    purge = leaf(cache_cmds, "purge", cache_purge, "delete cached answers (a tenant's, or --shared ones)")
    scope = purge.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", type=tenant_id_arg, metavar="ID", help="this tenant's answers")
    scope.add_argument(
        "--shared", action="store_true", help="the answers of functions cached across tenants"
    )
    purge.add_argument("--function", type=function_id_arg, metavar="PLUGIN/NAME", help="only this function's")
    leaf(cache_cmds, "stats", cache_stats, "cached answers by tenant and function")
