"""The Host header is the client's to choose: it opens no local page and builds no redirect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailer.runtime import Runtime
from mailer.web.app import PAGE_POLICY, create_app
from tests.conftest import Clock, make_settings, serve
from tests.local_site import LocalSite, local_site
from tests.services import free_port

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FORGED = "evil.example"


@pytest.fixture
def site(home: Path, database_url: str, clock: Clock) -> Iterator[LocalSite]:
    with local_site(home, database_url, clock) as served:
        served.sign_up("host@example.com")
        yield served


def outbox_paths(site: LocalSite) -> list[str]:
    [mail] = [p.name.split(":")[0] for p in (site.folder / "new").iterdir()]
    return ["/outbox", f"/outbox/{mail}", f"/outbox/{mail}/html"]


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LOCALHOST:1",
        "127.0.0.1",
        "127.0.0.1:9",
        "127.1.2.3",
        "[::1]",
        "[::1]:80",
    ],
)
def test_the_outbox_answers_loopback_names_with_any_port(site: LocalSite, host: str) -> None:
    """A browser on this machine reaches the outbox by any loopback name, whatever the port."""
    for path in outbox_paths(site):
        assert site.get(path, Host=host).status_code == 200, path


def test_the_outbox_answers_the_host_of_the_base_url(home: Path, database_url: str, clock: Clock) -> None:
    """MAILER_BASE_URL's own host and port open the outbox, as the links in its mails point there."""
    port = free_port()
    with local_site(home, database_url, clock, base_url=f"http://mailer.test:{port}") as served:
        served.sign_up("base@example.com")
        for path in outbox_paths(served):
            assert served.get(path, Host=f"mailer.test:{port}").status_code == 200
            assert served.get(path, Host="MAILER.test:" + str(port)).status_code == 200
            assert served.get(path, Host="mailer.test").status_code == 404  # another port: another site
            assert served.get(path, Host=f"mailer.test.{FORGED}:{port}").status_code == 404


@pytest.mark.parametrize(
    "host",
    [
        FORGED,
        f"{FORGED}:8000",
        "127.0.0.1.nip.io",  # a public name that resolves to loopback: DNS rebinding's kind
        "localhost.evil.example",
        "localhost.",
        "user@localhost",
        "localhost/x",
        "[::1",
        "",
    ],
)
def test_the_outbox_is_a_neutral_404_for_any_other_host(site: LocalSite, host: str) -> None:
    """A page of another site that resolves to 127.0.0.1 gets the not-found page, not the mail."""
    for path in outbox_paths(site):
        response = site.get(path, Host=host)
        assert response.status_code == 404, path
        assert "ページが見つかりません" in response.text
        assert "/confirm/" not in response.text
        assert "host@example.com" not in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/confirm/abc/",
        "/unsubscribe/abc/",
        "/subscribe/",
        "/healthz/",
        "/outbox/",
        "/outbox/nope/",
        "/static",
        "/static/",
        "//evil.example/",
        "/confirm//abc",
    ],
)
def test_no_answer_redirects_to_the_host_the_client_named(site: LocalSite, path: str) -> None:
    """No redirect is built from the Host header: a trailing slash is a 404 page, not a 307 away."""
    for method in ("GET", "POST", "HEAD"):
        for host in (FORGED, "localhost"):
            response = httpx.request(
                method, f"{site.url}{path}", headers={"Host": host}, timeout=10, follow_redirects=False
            )
            assert "location" not in response.headers, (method, path, host)
            assert FORGED not in response.text
    assert site.get("/confirm/abc/", Host=FORGED).status_code == 404
    assert "ページが見つかりません" in site.get("/confirm/abc/", Host=FORGED).text


def test_every_answer_carries_the_content_security_policy(site: LocalSite) -> None:
    """Pages, static files, errors and the outbox: no inline script, never framed; no HSTS on http."""
    for path in ("/", "/subscribe", "/nope", "/confirm/abc", "/static/site.css", "/outbox", "/healthz"):
        response = site.get(path)
        assert response.headers["Content-Security-Policy"] == PAGE_POLICY, path
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "Strict-Transport-Security" not in response.headers
    assert "default-src 'self'" in PAGE_POLICY
    assert "unsafe-inline" not in PAGE_POLICY
    form = site.get("/").text
    assert "<script>" not in form  # only <script src=...>, which the policy allows from the site
    assert "<style" not in form
    assert (
        site.get("/static/subscribe.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )


def test_https_base_url_adds_strict_transport_security(home: Path, database_url: str) -> None:
    """Behind HTTPS, every answer asks the browser to use HTTPS alone from now on."""
    runtime = Runtime(make_settings(home, database_url, "maildir:./outbox", base_url="https://mailer.test"))
    runtime.upgrade_db()
    try:
        with serve(create_app(runtime), free_port()) as url:
            for path in ("/", "/nope"):
                response = httpx.get(f"{url}{path}", timeout=10)
                assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
            # The outbox's own check: the base URL's host on the scheme's default port only.
            assert httpx.get(f"{url}/outbox", headers={"Host": "mailer.test"}, timeout=10).status_code == 200
            assert (
                httpx.get(f"{url}/outbox", headers={"Host": "mailer.test:443"}, timeout=10).status_code == 200
            )
            assert (
                httpx.get(f"{url}/outbox", headers={"Host": "mailer.test:80"}, timeout=10).status_code == 404
            )
    finally:
        runtime.close()
