"""Failures over a real server: pages get the site's HTML, /api gets JSON, and tracebacks are logged masked."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from mailer.runtime import Runtime
from tests.conftest import LogLines, serve


def test_wrong_method_on_a_page_is_405_with_allow_and_a_page(live: str) -> None:
    """A PUT to the sign-up form's URL is a 405 page that names the allowed methods, not a 404."""
    response = httpx.put(f"{live}/subscribe", timeout=10)
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert response.headers["Content-Type"].startswith("text/html")
    assert "許可されていない操作です" in response.text
    assert "ページが見つかりません" not in response.text
    assert response.headers["X-Frame-Options"] == "DENY"


def test_unknown_api_path_is_a_json_404_in_the_error_shape(live: str) -> None:
    """Under /api/ a wrong URL answers JSON `{"error": {"code", "message"}}`, not a page."""
    response = httpx.get(f"{live}/api/nothing", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found"}}


def test_unknown_page_stays_an_html_404(live: str) -> None:
    """Outside /api/ a wrong URL is still the site's HTML not-found page."""
    response = httpx.get(f"{live}/apinothing", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "ページが見つかりません" in response.text


def test_api_validation_errors_and_failures_are_json(runtime: Runtime, logged: LogLines) -> None:
    """Under /api/ a bad parameter is a 422 `invalid` and a failure a 500 `internal` with a neutral message."""
    from mailer.web.app import create_app

    app = create_app(runtime)

    def probe(count: int) -> dict[str, int]:
        if count == 0:
            raise RuntimeError("probe failed")
        return {"count": count}

    app.add_api_route("/api/probe", probe, methods=["GET"])  # the API's routes are not written yet
    with serve(app, int(runtime.settings.base_url.rsplit(":", 1)[1])) as url:
        invalid = httpx.get(f"{url}/api/probe", params={"count": "many"}, timeout=10)
        failed = httpx.get(f"{url}/api/probe", params={"count": "0"}, timeout=10)
    assert invalid.status_code == 422
    assert invalid.json()["error"]["code"] == "invalid"
    assert "count" in invalid.json()["error"]["message"]
    assert "many" not in invalid.text  # the input is never echoed: it may be an address
    assert failed.status_code == 500
    assert failed.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "probe failed" not in failed.text
    assert any("RuntimeError: probe failed" in line for line in logged.lines)


def test_failure_is_logged_with_its_traceback_and_no_address(
    runtime: Runtime, live: str, logged: LogLines
) -> None:
    """A sign-up the database fails is a neutral 500 page, logged once with the traceback, addresses masked."""
    with runtime.engine.begin() as connection:  # the store breaks under the running server
        connection.execute(text("ALTER TABLE subscribers RENAME TO subscribers_gone"))
    response = httpx.post(f"{live}/subscribe", data={"email": "Leak.Me@example.com"}, timeout=10)
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/html")
    assert "leak.me" not in response.text.casefold()
    assert "Traceback" not in response.text
    [record] = [r for r in logged.records if r.getMessage().startswith("web.error")]
    assert record.exc_info is not None
    assert "leak.me@example.com" in str(record.exc_info[1])  # the SQL parameters name the address
    [line] = [line for line in logged.lines if "web.error" in line]
    assert "Traceback (most recent call last)" in line
    assert "route=/subscribe" in line
    assert "subscribers" in line  # the failing statement is there to read
    assert "leak.me" not in line.casefold()
    assert "<address>" in line
    # The server's own handlers mask nothing: the exception must not reach them.
    assert not any(r.name.startswith("uvicorn") and r.exc_info for r in logged.records)
