"""/metrics is not on the API port by default (issue 27, defect 4): it lists every
tenant's id, tokens and spend. A container host in its own process, real HTTP."""

from __future__ import annotations

import httpx
import pytest

from scripts.devservices import free_port
from tests.support.hosts import container_fleet


def test_metrics_are_served_on_their_own_port_and_not_on_the_api_port(
    service_env: dict[str, str], api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    metrics_port = free_port()
    env = {**service_env, "SKF_METRICS_PORT": str(metrics_port)}
    with container_fleet(1, env, tmp_path_factory.mktemp("metrics-port")) as (base,):
        ok = httpx.post(
            f"{base}/api/v1/summarize", json={"text": "Count me."}, headers={"x-api-key": api_key}, timeout=30
        )
        assert ok.status_code == 200, ok.text
        on_api = httpx.get(f"{base}/metrics", timeout=10)
        assert on_api.status_code == 404
        assert "sk_" not in on_api.text
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200
        assert "gen_ai_client_token_usage" in scraped.text
        assert scraped.headers["x-content-type-options"] == "nosniff"
        # The metrics listener serves nothing else.
        assert (
            httpx.post(f"http://127.0.0.1:{metrics_port}/api/v1/summarize", json={}, timeout=10).status_code
            == 404
        )
