"""``key`` and ``admin-key``: issue, list, revoke tenant keys and operator keys."""

from __future__ import annotations

import argparse

from sk_core.accounts import ALL
from sk_core.admin._arguments import admin_key_id_arg, functions_arg, key_id_arg, name_arg, tenant_id_arg
from sk_core.admin._command import Commands, Context, Leaf, Output
from sk_core.admin._format import fmt_time, key_json, pairs, text_table


async def key_issue(args: argparse.Namespace, ctx: Context) -> Output:
    """Issue a key; its secret is printed here once and exists nowhere else."""
    issued = await ctx.tenants.issue_key(args.tenant_id, name=args.name or "", scopes=args.scopes or (ALL,))
    record = issued.record
    data = {**key_json(record), "key": issued.secret}
    text = "\n".join(
        [
            pairs(
                [
                    ("key id", record.key_id),
                    ("tenant", record.tenant_id),
                    ("name", record.name or "-"),
                    ("scopes", ", ".join(record.scopes)),
                ]
            ),
            "",
            issued.secret,
            "",
            "Store this key now: it cannot be shown again (only its hash is kept).",
        ]
    )
    return Output(data, text)


async def key_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Key records, never secrets or hashes."""
    if args.tenant is not None:
        # An unknown tenant has no keys, but saying so hides a typo: refuse instead.
        await ctx.tenants.require_tenant(args.tenant)
    keys = await ctx.tenants.list_keys(args.tenant)
    rows = [
        [
            k.key_id,
            k.tenant_id,
            k.name or "-",
            ",".join(k.scopes),
            k.status,
            fmt_time(k.created_at),
            fmt_time(k.last_used_at),
        ]
        for k in keys
    ]
    headers = ["KEY ID", "TENANT", "NAME", "SCOPES", "STATUS", "CREATED", "LAST USED"]
    return Output([key_json(k) for k in keys], text_table(headers, rows) if rows else "no keys")


async def key_revoke(args: argparse.Namespace, ctx: Context) -> Output:
    """Revoke a key; services stop accepting it within their auth cache TTL."""
    key = await ctx.tenants.revoke_key(args.key_id)
    text = (
        f"revoked key {key.key_id} of tenant {key.tenant_id}; running services refuse it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(key_json(key), text)


async def admin_key_issue(args: argparse.Namespace, ctx: Context) -> Output:
    """Issue an operator key (scope ``admin``); its secret is printed here once."""
    issued = await ctx.tenants.issue_admin_key(name=args.name or "")
    record = issued.record
    data = {**key_json(record), "key": issued.secret}
    text = "\n".join(
        [
            pairs([("admin key id", record.key_id), ("name", record.name or "-"), ("scopes", "admin")]),
            "",
            issued.secret,
            "",
            "Store this key now: it cannot be shown again (only its hash is kept).",
            "It opens the admin API and the dashboard (/api/dashboard), never a tenant route.",
        ]
    )
    return Output(data, text)


async def admin_key_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Operator key records, never secrets or hashes."""
    keys = await ctx.tenants.list_admin_keys()
    rows = [
        [k.key_id, k.name or "-", k.status, fmt_time(k.created_at), fmt_time(k.last_used_at)] for k in keys
    ]
    headers = ["ADMIN KEY ID", "NAME", "STATUS", "CREATED", "LAST USED"]
    return Output([key_json(k) for k in keys], text_table(headers, rows) if rows else "no admin keys")


async def admin_key_revoke(args: argparse.Namespace, ctx: Context) -> Output:
    """Revoke an operator key; services refuse it within their auth cache TTL."""
    key = await ctx.tenants.revoke_key(args.key_id, admin=True)
    text = (
        f"revoked admin key {key.key_id}; running services refuse it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(key_json(key), text)


def add_key_commands(commands: Commands, leaf: Leaf) -> None:
    """``key`` and its actions."""
    key = commands.add_parser("key", help="issue, list, revoke API keys")
    key_cmds = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")

    issue = leaf(key_cmds, "issue", key_issue, "issue a key (printed once)")
    issue.add_argument("tenant_id", type=tenant_id_arg, metavar="TENANT")
    issue.add_argument("--name", type=name_arg, help="a label, e.g. where the key is used")
    issue.add_argument(
        "--scopes", type=functions_arg, metavar="LIST", help="'*' (default) or comma-separated plugin/name"
    )

    listing = leaf(key_cmds, "list", key_list, "list keys (never secrets or hashes)")
    listing.add_argument("--tenant", type=tenant_id_arg, metavar="ID", help="only this tenant's keys")

    revoke = leaf(key_cmds, "revoke", key_revoke, "revoke a key")
    revoke.add_argument("key_id", type=key_id_arg, metavar="KEY_ID")


def add_admin_key_commands(commands: Commands, leaf: Leaf) -> None:
    """``admin-key`` and its actions."""
    admin_key = commands.add_parser("admin-key", help="issue, list, revoke operator (admin) keys")
    admin_key_cmds = admin_key.add_subparsers(dest="admin_key_command", required=True, metavar="ACTION")
    admin_issue = leaf(
        admin_key_cmds, "issue", admin_key_issue, "issue an operator key for the admin API and dashboard"
    )
    admin_issue.add_argument("--name", type=name_arg, help="a label, e.g. who holds the key")
    leaf(admin_key_cmds, "list", admin_key_list, "list operator keys (never secrets or hashes)")
    admin_revoke = leaf(admin_key_cmds, "revoke", admin_key_revoke, "revoke an operator key")
    admin_revoke.add_argument("key_id", type=admin_key_id_arg, metavar="KEY_ID")
