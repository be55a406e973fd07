"""``tenant``: create, list, show, disable, enable, set-limits."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime

from sk_core.accounts import ALL, Limits, Tenant, TenantError
from sk_core.admin._arguments import count_arg, functions_arg, name_arg, tenant_id_arg, usd_budget_arg
from sk_core.admin._command import BadValue, Commands, Context, Leaf, Output
from sk_core.admin._format import fmt_usd, tenant_json, tenant_text, text_table
from sk_core.admin._usage import usage_report
from sk_core.usage import current_windows


async def tenant_create(args: argparse.Namespace, ctx: Context) -> Output:
    """Insert a tenant; limits default to ``Limits()``, functions to all."""
    defaults = Limits()
    limits = Limits(
        requests_per_minute=args.rpm if args.rpm is not None else defaults.requests_per_minute,
        tokens_per_minute=args.tpm if args.tpm is not None else defaults.tokens_per_minute,
        max_concurrent=args.concurrency if args.concurrency is not None else defaults.max_concurrent,
        daily_budget_nano=args.daily_usd if args.daily_usd is not None else defaults.daily_budget_nano,
        monthly_budget_nano=args.monthly_usd
        if args.monthly_usd is not None
        else defaults.monthly_budget_nano,
    )
    tenant = Tenant(
        id=args.tenant_id,
        display_name=args.name,
        limits=limits,
        allowed_functions=args.functions or (ALL,),
    )
    await ctx.tenants.create_tenant(tenant)
    text = (
        f"created tenant {tenant.id}\n\n{tenant_text(tenant)}\n\n"
        f"next: issue a key with 'key issue {tenant.id}'"
    )
    return Output(tenant_json(tenant), text)


async def tenant_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Every tenant with its limits."""
    tenants = await ctx.tenants.list_tenants()
    rows = [
        [
            t.id,
            t.display_name,
            t.status,
            str(t.limits.requests_per_minute),
            str(t.limits.tokens_per_minute),
            str(t.limits.max_concurrent),
            fmt_usd(t.limits.daily_budget_nano, fixed=True),
            fmt_usd(t.limits.monthly_budget_nano, fixed=True),
            ",".join(t.allowed_functions),
        ]
        for t in tenants
    ]
    headers = [
        "TENANT",
        "NAME",
        "STATUS",
        "RPM",
        "TPM",
        "CONCURRENCY",
        "DAILY USD",
        "MONTHLY USD",
        "FUNCTIONS",
    ]
    text = text_table(headers, rows, right={3, 4, 5, 6, 7}) if rows else "no tenants"
    return Output([tenant_json(t) for t in tenants], text)


async def tenant_show(args: argparse.Namespace, ctx: Context) -> Output:
    """A tenant's settings and its usage today and this month."""
    tenant = await ctx.tenants.require_tenant(args.tenant_id)
    usage = await usage_report(ctx, tenant, current_windows(datetime.now(UTC)), expired=False)
    data = {**tenant_json(tenant), "usage": usage.data}
    return Output(data, f"{tenant_text(tenant)}\n\n{usage.text}")


async def _set_status(ctx: Context, tenant_id: str, status: str) -> Output:
    tenant = await ctx.tenants.require_tenant(tenant_id)
    was = tenant.status
    tenant = await ctx.tenants.save_tenant(dataclasses.replace(tenant, status=status))
    note = " (it already was)" if was == status else ""
    # The service caches tenants per key; say when the change is certain to be in force.
    text = (
        f"tenant {tenant.id} is {status}{note}; running services see it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(tenant_json(tenant), text)


async def tenant_disable(args: argparse.Namespace, ctx: Context) -> Output:
    """Refuse the tenant's requests (403) without touching its keys."""
    return await _set_status(ctx, args.tenant_id, "disabled")


async def tenant_enable(args: argparse.Namespace, ctx: Context) -> Output:
    """Accept the tenant's requests again."""
    return await _set_status(ctx, args.tenant_id, "active")


async def tenant_set_limits(args: argparse.Namespace, ctx: Context) -> Output:
    """Change only the limits (and functions) that were given."""
    changes = {
        field: value
        for field, value in (
            ("requests_per_minute", args.rpm),
            ("tokens_per_minute", args.tpm),
            ("max_concurrent", args.concurrency),
            ("daily_budget_nano", args.daily_usd),
            ("monthly_budget_nano", args.monthly_usd),
        )
        if value is not None
    }
    if not changes and args.functions is None:
        raise BadValue(
            "nothing to change: give --rpm, --tpm, --concurrency, --daily-usd, --monthly-usd or --functions"
        )
    tenant = await ctx.tenants.require_tenant(args.tenant_id)
    try:
        limits = dataclasses.replace(tenant.limits, **changes)
    except TenantError as exc:  # Limits re-validates the combination
        raise BadValue(str(exc)) from None
    updated = dataclasses.replace(
        tenant, limits=limits, allowed_functions=args.functions or tenant.allowed_functions
    )
    await ctx.tenants.save_tenant(updated)
    lines = [
        f"updated tenant {updated.id}; running services see it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)",
        "",
        tenant_text(updated),
    ]
    if args.functions is not None and ALL not in updated.allowed_functions:
        # Keys keep their scopes; a call needs both, so narrowed functions silently
        # turn some scoped calls into 403s. Say which keys are affected.
        for key in await ctx.tenants.list_keys(updated.id):
            outside = [s for s in key.scopes if s != ALL and not updated.allows(s)]
            if key.status == "active" and outside:
                lines.append(
                    f"note: key {key.key_id} has scopes the tenant no longer allows: {', '.join(outside)}"
                )
    return Output(tenant_json(updated), "\n".join(lines))


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=count_arg, metavar="N", help="requests per minute")
    parser.add_argument("--tpm", type=count_arg, metavar="N", help="tokens per minute")
    parser.add_argument("--concurrency", type=count_arg, metavar="N", help="requests in flight at once")
    parser.add_argument("--daily-usd", type=usd_budget_arg, metavar="X", help="daily budget in USD")
    parser.add_argument("--monthly-usd", type=usd_budget_arg, metavar="X", help="monthly budget in USD")
    parser.add_argument(
        "--functions",
        type=functions_arg,
        metavar="LIST",
        help="'*' or comma-separated plugin/name, e.g. text/summarize,chat/chat",
    )


def add_tenant_commands(commands: Commands, leaf: Leaf) -> None:
    """``tenant`` and its actions."""
    tenant = commands.add_parser("tenant", help="create, list, show, disable, enable, set-limits")
    tenant_cmds = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")

    create = leaf(tenant_cmds, "create", tenant_create, "create a tenant (limits default to the service's)")
    create.add_argument("tenant_id", type=tenant_id_arg, metavar="ID")
    create.add_argument("--name", type=name_arg, required=True, help="display name")
    _add_limit_flags(create)

    leaf(tenant_cmds, "list", tenant_list, "list tenants")

    show = leaf(tenant_cmds, "show", tenant_show, "a tenant's limits and today's and this month's usage")
    show.add_argument("tenant_id", type=tenant_id_arg, metavar="ID")

    for name, handler, help_ in (
        ("disable", tenant_disable, "refuse the tenant's requests (403); keys are kept"),
        ("enable", tenant_enable, "accept the tenant's requests again"),
    ):
        leaf(tenant_cmds, name, handler, help_).add_argument("tenant_id", type=tenant_id_arg, metavar="ID")

    set_limits = leaf(tenant_cmds, "set-limits", tenant_set_limits, "change the given limits only")
    set_limits.add_argument("tenant_id", type=tenant_id_arg, metavar="ID")
    _add_limit_flags(set_limits)
