"""The admin CLI, run as operators run it: a real process against real Azurite.

Every call goes through ``python -m sk_core.admin`` so argument parsing, exit codes,
stdout/stderr and the closing of the storage client are all exercised for real. The
module gets its own table prefix so it never sees other test files' tenants.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from scripts.devservices import free_port
from sk_core.accounts import hash_key
from sk_core.composition import make_store, make_tenant_store
from sk_core.limits import Ledger
from sk_core.pricing import Price
from sk_core.storage import TableStore, development_connection_string
from tests.support.settings import SERVICE_ENV, make_settings

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "adm" + "".join(random.choices(string.ascii_letters, k=10))
# Never contacted: the admin CLI needs valid service settings, not a model.
UNUSED_MODEL_URL = "http://127.0.0.1:9/v1"


@dataclass(frozen=True)
class Result:
    """A finished CLI run."""

    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        """Stdout parsed as JSON."""
        return json.loads(self.out)


@pytest.fixture(scope="module")
def env(azurite: str) -> dict[str, str]:
    """The service's settings pointing at Azurite, under this module's own prefix."""
    return {
        **SERVICE_ENV,
        "SKF_MODEL_BASE_URL": UNUSED_MODEL_URL,
        "SKF_STORAGE_CONNECTION_STRING": azurite,
        "SKF_STORAGE_TABLE_PREFIX": PREFIX,
    }


@pytest.fixture
async def store(env: dict[str, str]) -> AsyncIterator[TableStore]:
    """The same tables, in process, for checks the CLI cannot make about itself."""
    table_store = make_store(make_settings(env))
    yield table_store
    await table_store.aclose()


def admin(env: dict[str, str], *args: str, timeout: float = 60) -> Result:
    """Run the CLI once; fail the test on any sign of an unclean run."""
    started = time.monotonic()
    process = subprocess.run(
        # ResourceWarnings are shown so an unclosed client would appear on stderr.
        [sys.executable, "-W", "default::ResourceWarning", "-m", "sk_core.admin", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = Result(process.returncode, process.stdout, process.stderr, time.monotonic() - started)
    for marker in ("Traceback", "Unclosed", "ResourceWarning"):
        assert marker not in result.err, result.err
    return result


def new_id(stem: str) -> str:
    """A tenant id no other test uses."""
    return f"{stem}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=8))}"


def create(env: dict[str, str], tenant_id: str, *flags: str) -> dict[str, Any]:
    """Create a tenant through the CLI and return its JSON."""
    result = admin(env, "tenant", "create", tenant_id, "--name", f"Tenant {tenant_id}", *flags, "--json")
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json()
    return data


def test_create_list_and_show_a_tenant(env: dict[str, str]) -> None:
    tenant_id = new_id("acme")
    made = admin(
        env,
        "tenant",
        "create",
        tenant_id,
        "--name",
        "Acme Corp",
        "--rpm",
        "10",
        "--daily-usd",
        "1.5",
        "--functions",
        "text/summarize,chat/chat",
    )
    assert made.code == 0, made.err
    assert f"created tenant {tenant_id}" in made.out

    listed = admin(env, "tenant", "list")
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split()[:3] == ["TENANT", "NAME", "STATUS"]
    row = next(line for line in rows if line.startswith(tenant_id))
    assert "Acme Corp" in row
    assert "active" in row
    assert "1.500000" in row  # daily budget, 6 decimals in columns
    assert "text/summarize,chat/chat" in row

    # --json before or after the command.
    for args in (["--json", "tenant", "list"], ["tenant", "list", "--json"]):
        as_json = admin(env, *args)
        assert as_json.code == 0, as_json.err
        tenant = next(t for t in as_json.json() if t["tenant_id"] == tenant_id)
        assert tenant["limits"]["requests_per_minute"] == 10
        assert tenant["limits"]["tokens_per_minute"] == 100_000  # Limits() default
        assert tenant["limits"]["daily_budget_nano"] == 1_500_000_000
        assert tenant["limits"]["monthly_budget_nano"] == 50 * 10**9  # Limits() default
        assert tenant["functions"] == ["text/summarize", "chat/chat"]

    shown = admin(env, "tenant", "show", tenant_id)
    assert shown.code == 0, shown.err
    assert "Acme Corp" in shown.out
    assert "daily budget     1.50 USD" in shown.out
    assert "spent USD" in shown.out
    shown_json = admin(env, "tenant", "show", tenant_id, "--json").json()
    assert shown_json["status"] == "active"
    assert [w["period"] for w in shown_json["usage"]["windows"]] == ["day", "month"]


def test_create_defaults_to_every_function_and_the_default_limits(env: dict[str, str]) -> None:
    tenant = create(env, new_id("plain"))
    assert tenant["functions"] == ["*"]
    assert tenant["limits"]["requests_per_minute"] == 60
    assert tenant["limits"]["max_concurrent"] == 8
    assert tenant["limits"]["daily_budget_usd"] == 5.0


def test_duplicate_tenant_is_refused_with_exit_1(env: dict[str, str]) -> None:
    tenant_id = new_id("dup")
    create(env, tenant_id)
    again = admin(env, "tenant", "create", tenant_id, "--name", "Again")
    assert again.code == 1
    assert "already exists" in again.err
    assert tenant_id in again.err
    assert again.out == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["tenant", "create", "Bad_ID", "--name", "x"], "Bad_ID"),
        (["tenant", "create", "a", "--name", "x"], "'a'"),
        (["tenant", "create", "okid", "--name", "x", "--rpm", "0"], "'0'"),
        (["tenant", "create", "okid", "--name", "x", "--tpm", "ten"], "'ten'"),
        (["tenant", "create", "okid", "--name", "x", "--daily-usd", "-1"], "'-1'"),
        (["tenant", "create", "okid", "--name", "x", "--monthly-usd", "lots"], "'lots'"),
        (["tenant", "create", "okid", "--name", "x", "--monthly-usd", "nan"], "'nan'"),
        (["tenant", "create", "okid", "--name", "  "], "blank"),
        (["tenant", "create", "okid", "--name", "x", "--functions", "text/nope"], "text/nope"),
        (["tenant", "set-limits", "okid", "--concurrency", "-3"], "'-3'"),
        (["tenant", "set-limits", "okid"], "nothing to change"),
        (["key", "issue", "okid", "--scopes", "summarize"], "summarize"),
        (["key", "revoke", "not-a-key"], "not-a-key"),
        (["usage", "okid", "--day", "2025-02-30"], "2025-02-30"),
        (["usage", "okid", "--day", "yesterday"], "yesterday"),
        (["usage", "okid", "--month", "2025-13"], "2025-13"),
    ],
)
def test_bad_values_exit_2_naming_the_value(env: dict[str, str], args: list[str], named: str) -> None:
    result = admin(env, *args)
    assert result.code == 2, (result.out, result.err)
    assert named in result.err
    assert "usage:" in result.err
    assert result.out == ""


def test_invalid_settings_exit_2_without_echoing_secrets(env: dict[str, str]) -> None:
    result = admin({**env, "SKF_MODEL_PROVIDER": "azure_openai"}, "tenant", "list")
    assert result.code == 2
    assert "SKF_AZURE_OPENAI_ENDPOINT is required" in result.err
    # pydantic would quote every setting as the input; the account key is one of them.
    assert "AccountKey" not in result.err
    assert env["SKF_API_KEY_PEPPER"] not in result.err


async def test_issue_list_and_revoke_keys(env: dict[str, str], store: TableStore) -> None:
    tenant_id = new_id("keys")
    create(env, tenant_id, "--functions", "text/summarize,text/translate")

    issued_text = admin(env, "key", "issue", tenant_id, "--name", "ci", "--scopes", "text/summarize")
    assert issued_text.code == 0, issued_text.err
    secrets_printed = [line for line in issued_text.out.splitlines() if line.startswith("skf_")]
    assert len(secrets_printed) == 1
    assert issued_text.out.count(secrets_printed[0]) == 1  # printed once
    assert "cannot be shown again" in issued_text.out

    issued = admin(env, "key", "issue", tenant_id, "--json").json()
    assert set(issued) >= {"key_id", "tenant_id", "key"}
    assert issued["tenant_id"] == tenant_id
    assert issued["key"].startswith(f"skf_{issued['key_id']}_")
    assert "key_hash" not in issued

    # The key works for the service: same pepper, same tables.
    settings = make_settings(env)
    tenants = make_tenant_store(settings, store)
    record = await tenants.get_key(issued["key_id"])
    assert record is not None
    assert await tenants.verify(issued["key"], record)

    secrets_and_hashes = [
        secrets_printed[0],
        issued["key"],
        record.key_hash,
        hash_key(secrets_printed[0], settings.api_key_pepper.get_secret_value()),
    ]
    listings = {
        "all": admin(env, "key", "list"),
        "table": admin(env, "key", "list", "--tenant", tenant_id),
        "json": admin(env, "key", "list", "--tenant", tenant_id, "--json"),
    }
    for kind, listing in listings.items():
        assert listing.code == 0, listing.err
        assert issued["key_id"] in listing.out, kind
        for value in secrets_and_hashes:
            assert value not in listing.out, kind
        assert "key_hash" not in listing.out, kind
    table = listings["table"].out.splitlines()
    assert table[0].split() == ["KEY", "ID", "TENANT", "NAME", "SCOPES", "STATUS", "CREATED", "LAST", "USED"]
    assert len(table) == 3  # header and this tenant's two keys only
    listed = listings["json"].json()
    assert {k["key_id"] for k in listed} == {issued["key_id"], secrets_printed[0].split("_")[1]}
    assert {tuple(k["scopes"]) for k in listed} == {("text/summarize",), ("*",)}
    assert all(k["status"] == "active" for k in listed)

    revoked = admin(env, "key", "revoke", issued["key_id"])
    assert revoked.code == 0, revoked.err
    assert f"revoked key {issued['key_id']}" in revoked.out
    after = admin(env, "key", "list", "--tenant", tenant_id, "--json").json()
    statuses = {k["key_id"]: k["status"] for k in after}
    assert statuses[issued["key_id"]] == "revoked"
    assert statuses[secrets_printed[0].split("_")[1]] == "active"


def test_a_scope_outside_the_tenants_functions_is_refused(env: dict[str, str]) -> None:
    tenant_id = new_id("narrow")
    create(env, tenant_id, "--functions", "text/summarize")
    result = admin(env, "key", "issue", tenant_id, "--scopes", "chat/chat")
    assert result.code == 1
    assert "chat/chat" in result.err


def test_disable_and_enable(env: dict[str, str]) -> None:
    tenant_id = new_id("toggle")
    create(env, tenant_id)
    disabled = admin(env, "tenant", "disable", tenant_id)
    assert disabled.code == 0, disabled.err
    assert f"tenant {tenant_id} is disabled" in disabled.out
    assert admin(env, "tenant", "show", tenant_id, "--json").json()["status"] == "disabled"
    enabled = admin(env, "tenant", "enable", tenant_id, "--json")
    assert enabled.code == 0, enabled.err
    assert enabled.json()["status"] == "active"
    assert admin(env, "tenant", "show", tenant_id, "--json").json()["status"] == "active"


def test_set_limits_changes_only_the_given_fields(env: dict[str, str]) -> None:
    tenant_id = new_id("limits")
    before = create(env, tenant_id, "--rpm", "7", "--tpm", "7000", "--monthly-usd", "20")
    result = admin(env, "tenant", "set-limits", tenant_id, "--tpm", "500", "--daily-usd", "0.25")
    assert result.code == 0, result.err
    after = admin(env, "tenant", "show", tenant_id, "--json").json()
    assert after["limits"]["tokens_per_minute"] == 500
    assert after["limits"]["daily_budget_nano"] == 250_000_000
    for unchanged in ("requests_per_minute", "max_concurrent", "monthly_budget_nano"):
        assert after["limits"][unchanged] == before["limits"][unchanged]
    assert after["limits"]["requests_per_minute"] == 7
    assert after["functions"] == ["*"]
    assert after["name"] == before["name"]
    assert after["status"] == "active"

    narrowed = admin(env, "tenant", "set-limits", tenant_id, "--functions", "chat/chat", "--json").json()
    assert narrowed["functions"] == ["chat/chat"]
    assert narrowed["limits"] == after["limits"]


def test_usage_of_a_tenant_without_traffic_is_all_zeros(env: dict[str, str]) -> None:
    tenant_id = new_id("idle")
    create(env, tenant_id, "--daily-usd", "2", "--monthly-usd", "30")
    table = admin(env, "usage", tenant_id)
    assert table.code == 0, table.err
    lines = {line.split("  ")[0]: line.split() for line in table.out.splitlines() if line}
    now = datetime.now(UTC)
    assert f"day {now:%Y-%m-%d}" in table.out
    assert f"month {now:%Y-%m}" in table.out
    assert lines["spent USD"][-2:] == ["0.000000", "0.000000"]
    assert lines["held USD"][-2:] == ["0.000000", "0.000000"]
    assert lines["budget USD"][-2:] == ["2.000000", "30.000000"]
    assert lines["remaining USD"][-2:] == ["2.000000", "30.000000"]
    for counter in ("requests", "prompt tokens", "completion tokens", "expired holds"):
        assert lines[counter][-2:] == ["0", "0"], counter
    assert "in flight now: 0" in table.out
    assert "flagged" not in table.out

    data = admin(env, "usage", tenant_id, "--month", "2024-02", "--expired", "--json").json()
    assert data["in_flight"] == 0
    assert data["expired"] == []
    [month] = data["windows"]
    assert month["window"] == "month-202402"
    assert month["budget_nano"] == month["remaining_nano"] == 30 * 10**9
    for field in (
        "spent_nano",
        "held_nano",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "expired_holds",
    ):
        assert month[field] == 0, field


async def test_sweep_charges_an_expired_hold_and_usage_flags_it(
    env: dict[str, str], store: TableStore
) -> None:
    tenant_id = new_id("swept")
    create(env, tenant_id, "--functions", "text/summarize")
    tenants = make_tenant_store(make_settings(env), store)
    tenant = await tenants.require_tenant(tenant_id)
    # A hold admitted ten minutes ago with a one-second lease: what a killed worker leaves.
    admitted = datetime.now(UTC) - timedelta(minutes=10)
    ledger = Ledger(store=store, lease_seconds=1, min_answer_tokens=16, clock=lambda: admitted)
    hold = await ledger.admit(
        tenant,
        price=Price(Decimal("1"), Decimal("2")),
        prompt_tokens_bound=100,
        requested_max_tokens=50,
        function="text/summarize",
        key_id="0123456789ab",
    )
    day = f"{admitted:%Y-%m-%d}"
    before = admin(env, "usage", tenant_id, "--day", day, "--json").json()["windows"][0]
    assert before["held_nano"] == hold.amount_nano
    assert admin(env, "usage", tenant_id, "--json").json()["in_flight"] == 1

    swept = admin(env, "sweep")
    assert swept.code == 0, swept.err
    assert swept.out.startswith("charged ")
    assert int(swept.out.split()[1]) == 1  # this module's tables hold no other hold
    assert admin(env, "sweep", "--json").json() == {"charged": 0}

    data = admin(env, "usage", tenant_id, "--day", day, "--expired", "--json").json()
    [window] = data["windows"]
    assert window["held_nano"] == 0
    assert window["spent_nano"] == window["expired_nano"] == hold.amount_nano
    assert window["expired_holds"] == 1
    [audit] = data["expired"]
    assert audit["request_id"] == hold.request_id
    assert audit["amount_nano"] == hold.amount_nano
    assert audit["function"] == "text/summarize"
    assert audit["flagged"] is True
    assert data["in_flight"] == 0

    text = admin(env, "usage", tenant_id, "--day", day, "--expired").out
    assert "1 (flagged)" in text
    assert hold.request_id in text


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "show", "{t}"],
        ["tenant", "disable", "{t}"],
        ["tenant", "enable", "{t}"],
        ["tenant", "set-limits", "{t}", "--rpm", "5"],
        ["key", "issue", "{t}"],
        ["key", "list", "--tenant", "{t}"],
        ["usage", "{t}"],
    ],
)
def test_unknown_tenant_exits_1_with_a_clear_message(env: dict[str, str], args: list[str]) -> None:
    tenant_id = new_id("ghost")
    result = admin(env, *(arg.format(t=tenant_id) for arg in args))
    assert result.code == 1
    assert result.err.strip() == f"error: unknown tenant '{tenant_id}'"
    assert result.out == ""


def test_unknown_key_exits_1(env: dict[str, str]) -> None:
    result = admin(env, "key", "revoke", "0123456789ab")
    assert result.code == 1
    assert result.err.strip() == "error: unknown key '0123456789ab'"


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "list"],
        ["tenant", "create", "unreachable", "--name", "x", "--json"],
        ["key", "issue", "unreachable", "--json"],
        ["usage", "unreachable"],
        ["sweep"],
    ],
)
def test_unreachable_storage_exits_3_quickly(env: dict[str, str], args: list[str]) -> None:
    port = free_port()  # nothing listens here
    closed = {**env, "SKF_STORAGE_CONNECTION_STRING": development_connection_string(port)}
    result = admin(closed, *args, timeout=30)
    assert result.code == 3
    assert result.err == f"error: storage unreachable (http://127.0.0.1:{port}/devstoreaccount1)\n"
    assert result.out == ""
    assert result.seconds < 10


async def test_audit_lists_a_tenants_recent_calls_without_prompt_text(
    functions_app_functions: list[Any], functions_service: Any, stub: Any
) -> None:
    from sk_core.accounts import Tenant
    from sk_core.composition import get_service
    from tests.support.hosts import FunctionsHost

    service = get_service()
    tenant_id = new_id("audit")
    await service.tenants.create_tenant(Tenant(id=tenant_id, display_name="Audit"))
    issued = await service.tenants.issue_key(tenant_id)
    host = FunctionsHost(functions_app_functions, {"x-api-key": issued.secret})
    stub.script({"content": "ok", "prompt_tokens": 50, "completion_tokens": 5})
    prompt = "confidential merger plans for audit check"
    ok = await host.request("POST", "/api/v1/summarize", json_body={"text": prompt})
    bad = await host.request("POST", "/api/v1/summarize", json_body={"text": ""})
    assert (ok.status, bad.status) == (200, 422)
    await service.audit.aclose()  # flush the background writes
    rows = await service.audit.recent(tenant_id)
    assert [(r["status"], r["code"]) for r in rows] == [(422, "validation_error"), (200, "")]
    newest_ok = rows[1]
    assert (newest_ok["prompt_tokens"], newest_ok["completion_tokens"]) == (50, 5)
    assert newest_ok["key_id"] == issued.record.key_id
    assert newest_ok["trace_id"] == ok.headers["x-trace-id"]
    assert newest_ok["cost_nano"] == round(ok.json()["cost_usd"] * 1e9)
    assert all(prompt not in str(r) for r in rows)
    connection = service.settings.storage_connection_string.get_secret_value()
    env = {
        **SERVICE_ENV,
        "SKF_MODEL_BASE_URL": service.settings.model_base_url,
        "SKF_STORAGE_CONNECTION_STRING": connection,
    }
    result = admin(env, "audit", tenant_id, "--json")
    assert result.code == 0, result.err
    assert [row["status"] for row in result.json()] == [422, 200]


async def test_cache_stats_and_purge_by_tenant_and_function(env: dict[str, str], store: TableStore) -> None:
    from sk_core.cache import Slot
    from sk_core.composition import make_cache
    from tests.test_cache import sample_answer

    acme, globex = new_id("cache"), new_id("cache")
    for tenant_id in (acme, globex):
        create(env, tenant_id)
    cache = make_cache(make_settings(env), store)
    answer = sample_answer(time.time(), 600)
    for tenant_id, function, key in (
        (acme, "text/summarize", "a1"),
        (acme, "text/translate", "a2"),
        (globex, "text/summarize", "g1"),
    ):
        assert await cache.put(Slot(tenant_id, function, key, 600), answer)

    stats = admin(env, "cache", "stats", "--json")
    assert stats.code == 0, stats.err
    mine = {(r["scope"], r["function"]): r["entries"] for r in stats.json() if r["scope"] in (acme, globex)}
    assert mine == {(acme, "text/summarize"): 1, (acme, "text/translate"): 1, (globex, "text/summarize"): 1}

    purged = admin(env, "cache", "purge", "--tenant", acme, "--function", "text/summarize", "--json")
    assert (purged.code, purged.json()["deleted"]) == (0, 1), purged.err
    assert admin(env, "cache", "purge", "--tenant", acme, "--json").json()["deleted"] == 1
    after = {r["scope"] for r in admin(env, "cache", "stats", "--json").json()}
    assert acme not in after
    assert globex in after  # another tenant's answers are untouched
    assert admin(env, "cache", "purge", "--tenant", "no-such-tenant").code == 1
    assert admin(env, "cache", "purge", "--tenant", acme, "--function", "nope/nope").code == 2


async def test_admin_keys_are_issued_listed_and_revoked_apart_from_tenant_keys(
    env: dict[str, str], store: TableStore
) -> None:
    issued = admin(env, "admin-key", "issue", "--name", "ops", "--json")
    assert issued.code == 0, issued.err
    data = issued.json()
    assert data["key"].startswith(f"skfadm_{data['key_id']}_")
    assert data["scopes"] == ["admin"]
    assert "key_hash" not in data
    # Stored hashed, with the service's pepper, where tenant keys are not.
    settings = make_settings(env)
    tenants = make_tenant_store(settings, store)
    record = await tenants.get_key(data["key_id"], admin=True)
    assert record is not None
    assert record.key_hash == hash_key(data["key"], settings.api_key_pepper.get_secret_value())
    assert await tenants.get_key(data["key_id"]) is None

    listing = admin(env, "admin-key", "list")
    assert listing.code == 0, listing.err
    assert data["key_id"] in listing.out
    assert data["key"] not in listing.out
    assert record.key_hash not in listing.out
    assert data["key_id"] not in admin(env, "key", "list").out  # not a tenant key

    revoked = admin(env, "admin-key", "revoke", data["key"])  # the whole key works too
    assert revoked.code == 0, revoked.err
    assert f"revoked admin key {data['key_id']}" in revoked.out
    statuses = {k["key_id"]: k["status"] for k in admin(env, "admin-key", "list", "--json").json()}
    assert statuses[data["key_id"]] == "revoked"
    # A tenant key id is not an admin key id: nothing to revoke there.
    assert admin(env, "admin-key", "revoke", "0123456789ab").code == 1


def test_usage_csv_has_a_line_per_window_in_exact_usd(env: dict[str, str]) -> None:
    tenant_id = new_id("csv")
    create(env, tenant_id, "--daily-usd", "1.25", "--monthly-usd", "30")
    result = admin(env, "usage", tenant_id, "--days", "3", "--csv")
    assert result.code == 0, result.err
    header, *lines = result.out.splitlines()
    assert header.split(",")[:4] == ["tenant_id", "period", "label", "spent_usd"]
    rows = [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines]
    now = datetime.now(UTC)
    assert [r["period"] for r in rows] == ["day", "day", "day", "month"]
    assert rows[2]["label"] == f"{now:%Y-%m-%d}"
    assert rows[3]["label"] == f"{now:%Y-%m}"
    assert [r["budget_usd"] for r in rows] == ["1.250000000"] * 3 + ["30.000000000"]
    assert [r["remaining_nano"] for r in rows] == ["1250000000"] * 3 + ["30000000000"]
    assert all(r["tenant_id"] == tenant_id and r["spent_nano"] == "0" for r in rows)
    # Default windows (today and this month) as CSV too.
    assert len(admin(env, "usage", tenant_id, "--csv").out.splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["usage", "okid", "--days", "0", "--csv"], "'0'"),
        (["usage", "okid", "--days", "401", "--csv"], "'401'"),
        (["usage", "okid", "--days", "-2", "--csv"], "-2"),
        (["usage", "okid", "--days", "3", "--day", "2025-01-01"], "not allowed"),
        (["admin-key", "revoke", "nope"], "'nope'"),
    ],
)
def test_bad_usage_and_admin_key_values_exit_2(env: dict[str, str], args: list[str], named: str) -> None:
    result = admin(env, *args)
    assert result.code == 2, (result.out, result.err)
    assert named in result.err
    assert result.out == ""


def test_the_cli_says_when_no_storage_is_configured() -> None:
    """With none of the storage settings, the CLI uses local development storage, and
    says so on stderr every time (keys issued into the wrong store would go unnoticed)."""
    storage = ("SKF_STORAGE_CONNECTION_STRING", "AzureWebJobsStorage", "SKF_STORAGE_ACCOUNT_ENDPOINT")
    bare = {k: v for k, v in os.environ.items() if k not in storage}
    silent = subprocess.run(
        [sys.executable, "-m", "sk_core.admin", "--help"], cwd=ROOT, env=bare, capture_output=True, text=True
    )
    assert silent.returncode == 0  # help needs no store
    unset = subprocess.run(
        [sys.executable, "-m", "sk_core.admin", "tenant", "show", "nobody"],
        cwd=ROOT, env=bare, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "no storage configured" in unset.stderr
    assert "127.0.0.1:10002" in unset.stderr  # where it looked
    closed = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    named = subprocess.run(
        [sys.executable, "-m", "sk_core.admin", "tenant", "show", "nobody"],
        cwd=ROOT, env={**bare, "SKF_STORAGE_CONNECTION_STRING": closed},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "no storage configured" not in named.stderr
