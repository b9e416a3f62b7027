"""HttpSession: requests' environment lookups once per origin, with the same answers."""

from __future__ import annotations

import pytest
import requests
import responses

from drivesync.graph.client import GraphClient, HttpSession


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count requests' proxy lookups in the environment (one per call)."""
    calls: list[str] = []
    real = requests.sessions.get_environ_proxies

    def spy(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", spy)
    return calls


def test_same_settings_as_requests_per_host(
    monkeypatch: pytest.MonkeyPatch, counted: list[str]
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    ours, plain = HttpSession(), requests.Session()
    for url in ("https://graph.example/v1.0/me", "https://internal.example/upload?x=1"):
        args = (url, {}, None, None, None)
        assert ours.merge_environment_settings(*args) == plain.merge_environment_settings(*args)
    got = ours.merge_environment_settings("https://graph.example/v1.0/me", {}, None, None, None)
    assert got["proxies"]["https"] == "http://proxy.example:3128"
    assert got["verify"] == "/etc/ssl/bundle.pem"
    bypass = ours.merge_environment_settings("https://internal.example/x", {}, None, None, None)
    assert "https" not in bypass["proxies"]


def test_environment_read_once_per_origin(counted: list[str]) -> None:
    session = HttpSession()
    for path in ("a", "b", "c?q=1"):
        session.merge_environment_settings(f"https://graph.example/{path}", {}, None, None, None)
    assert len(counted) == 1
    session.merge_environment_settings("https://other.example/a", {}, None, None, None)
    assert len(counted) == 2
    # An explicit argument is part of the key: it is merged, not ignored.
    got = session.merge_environment_settings(
        "https://graph.example/a", {"https": "http://explicit:1"}, None, False, None
    )
    assert got["proxies"]["https"] == "http://explicit:1" and got["verify"] is False
    # The caller may change what it gets without changing the next answer.
    got["proxies"]["https"] = "changed"
    again = session.merge_environment_settings("https://graph.example/a", {}, None, None, None)
    assert again["proxies"].get("https") != "changed"


@responses.activate
def test_graph_client_uses_it(counted: list[str]) -> None:
    responses.get("https://graph.example/v1.0/me", json={"id": "1"})
    client = GraphClient(lambda force: "t", base_url="https://graph.example/v1.0")
    assert isinstance(client.session, HttpSession)
    assert isinstance(client.plain_session, HttpSession)
    for _ in range(3):
        assert client.me() == {"id": "1"}
    assert len(counted) == 1
