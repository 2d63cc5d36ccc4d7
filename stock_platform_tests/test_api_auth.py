"""The API's bearer tokens (STOCK_PLATFORM_API_TOKENS): every endpoint but /health, REST and WebSocket alike."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from stock_platform.assets.lake import ensure_snapshot_table
from stock_platform.lib.tables import PRECOMBINE, SNAPSHOT_KEYS, SNAPSHOT_TABLE
from stock_platform.resources.lake import LakeResource
from stock_platform.serving.api import create_app
from stock_platform.serving.auth import hash_token, new_token
from stock_platform.settings import SettingsError, load_settings
from stock_platform_tests.lake_writer import batch

TOKEN, OTHER = new_token(), new_token()  # (token, hash) pairs


@pytest.fixture
def client(tmp_path):
    lake = LakeResource(uri=str(tmp_path / "lake"))
    ensure_snapshot_table(lake)
    lake.upsert(SNAPSHOT_TABLE, batch(2, dt.date(2024, 7, 1), dt.date(2024, 7, 31)), keys=SNAPSHOT_KEYS,
                order_by=PRECOMBINE)
    with TestClient(create_app(lake, token_hashes=(TOKEN[1], OTHER[1]))) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/tickers", "/prices/T000", "/predictions/T000", "/evaluation", "/dashboard",
                                  "/docs", "/openapi.json", "/", "/no-such-path"])
def test_every_endpoint_but_health_needs_a_listed_token(client, path):
    missing = client.get(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token is required" in missing.json()["detail"]
    for header in (bearer("not-a-listed-token"), bearer(TOKEN[1]), {"Authorization": f"Basic {TOKEN[0]}"}):
        wrong = client.get(path, headers=header)
        assert wrong.status_code == (401 if header["Authorization"].startswith("Basic") else 403), header
    for token in (TOKEN[0], OTHER[0]):  # either listed token (a rotation holds two)
        assert client.get(path, headers=bearer(token), follow_redirects=False).status_code in (200, 307, 404)
    assert client.get("/health").status_code == 200


def test_the_websocket_handshake_needs_a_listed_token(client):
    for headers, status in (({}, 401), (bearer("wrong"), 403)):
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/ws/updates", headers=headers):
                pass
        assert denied.value.status_code == status
    with client.websocket_connect("/ws/updates", headers=bearer(TOKEN[0])) as ws:
        assert ws.receive_json()["type"] == "cursor"


def test_tokens_are_configured_as_hashes(tmp_path):
    env = {"STOCK_PLATFORM_HOME": str(tmp_path)}
    assert load_settings(env).api_token_hashes == ()
    listed = load_settings(env | {"STOCK_PLATFORM_API_TOKENS": f" {TOKEN[1]}, {OTHER[1]} "}).api_token_hashes
    assert listed == (TOKEN[1], OTHER[1]) and hash_token(TOKEN[0]) == TOKEN[1]
    with pytest.raises(SettingsError, match="STOCK_PLATFORM_API_TOKENS: entry 2 is not a token hash") as bad:
        load_settings(env | {"STOCK_PLATFORM_API_TOKENS": f"{TOKEN[1]},{OTHER[0]}"})  # a token in place of its hash
    assert OTHER[0] not in str(bad.value)
