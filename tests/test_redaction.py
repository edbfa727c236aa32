"""Secrets in URLs are redacted before they reach spans or logs (issues 15, 20)."""

from __future__ import annotations

import logging
import typing

import pytest
from tornado import httpclient, web

import divak
import divak.client
from divak import redaction
from divak.logs import TextFormatter
from divak.redaction import (
    INVALID_URL,
    redact_query,
    redact_uri,
    redact_url,
    redacted_query_params,
)
from divak.testing import SpanRecorder
from tests.conftest import flush, listen, run

NAMES = [
    "token",
    "api_key",
    "password",
    "access_token",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "key",
    "private_token",
    "auth",
    "sig",
    "signature",
    "AWSAccessKeyId",
    "X-Goog-Signature",
    "apikey",
    "client_secret",
    "code",
    "secret",
    # issue 20, item 9
    "refresh_token",
    "id_token",
    "passwd",
    "pwd",
    "jwt",
    "sessionid",
    "jsessionid",
    "auth_token",
    "private_key",
    "credentials",
    "x-api-key",
]


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_name_is_redacted_in_every_shape(name: str) -> None:
    assert redact_query(f"a=1&{name}=s3cr3t&b=2") == f"a=1&{name}=REDACTED&b=2"
    assert redact_uri(f"/x?{name}=s3cr3t") == f"/x?{name}=REDACTED"
    assert (
        redact_url(f"https://h.example/x?{name}=s3cr3t")
        == f"https://h.example/x?{name}=REDACTED"
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # case-insensitive names
        ("TOKEN=a&Api_Key=b", "TOKEN=REDACTED&Api_Key=REDACTED"),
        # ";"-separated parameters
        ("page=2;token=t;x=1", "page=2;token=REDACTED;x=1"),
        ("page=2&;token=t", "page=2&;token=REDACTED"),
        # percent-encoded and "+"-encoded names are decoded for the comparison
        ("%74oken=t&api%5Fkey=k", "%74oken=REDACTED&api%5Fkey=REDACTED"),
        # values that look like names are not names
        ("q=token&token", "q=token&token"),
        # empty values are redacted too, so their presence tells nothing
        ("password=", "password=REDACTED"),
        # similar names are left alone
        ("tokens=1&monkey=2&authority=3", "tokens=1&monkey=2&authority=3"),
        # repeated names
        ("token=a&token=b", "token=REDACTED&token=REDACTED"),
        ("", ""),
        ("plain", "plain"),
    ],
)
def test_redact_query(query: str, expected: str) -> None:
    assert redact_query(query) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a?b=c", "https://example.com/a?b=c"),
        ("https://u:pw@example.com/a", "https://REDACTED:REDACTED@example.com/a"),
        (
            "https://u@example.com:8443/a",
            "https://REDACTED:REDACTED@example.com:8443/a",
        ),
        ("http://h/a?token=t#frag", "http://h/a?token=REDACTED"),
        (
            "http://h/a;jsessionid=1;password=p/b",
            "http://h/a;jsessionid=REDACTED;password=REDACTED/b",
        ),
        ("http://[::1]:8080/?sig=1", "http://[::1]:8080/?sig=REDACTED"),
        # invalid URLs never appear raw
        ("http://[::1/x?token=t", INVALID_URL),
        ("http://h:99999999/x", INVALID_URL),
        ("http://h:port/x?token=t", INVALID_URL),
        ("not a url token=t", INVALID_URL),
        ("/relative?token=t", INVALID_URL),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # origin-form
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a?b=c", "/a?b=c"),
        ("/a?token=t&b=c", "/a?token=REDACTED&b=c"),
        ("/a?b=c;access_token=t", "/a?b=c;access_token=REDACTED"),
        ("/users/me@example.com", "/users/me@example.com"),
        # user information inside a path or a query (issue 20, item 9)
        ("//user:pw@evil/x", "//REDACTED:REDACTED@evil/x"),
        ("/proxy//user:pw@evil/x", "/proxy//REDACTED:REDACTED@evil/x"),
        ("/p/http%3A%2F%2Fu%3Apw%40h%2Fx", "/p/http%3A%2F%2FREDACTED:REDACTED%40h%2Fx"),
        ("/a?next=http://u:pw@h/&x=1", "/a?next=http://REDACTED:REDACTED@h/&x=1"),
        ("/npm/@scope/pkg", "/npm/@scope/pkg"),
        ("/a//@b", "/a//@b"),
        ("/a;password=p/b?x=1", "/a;password=REDACTED/b?x=1"),
        ("/a#access_token=t", "/a"),
        ("/a?x=1#access_token=t", "/a?x=1"),
        # absolute-form, userinfo as the semantic conventions write it
        ("http://user:PW@host/x", "http://REDACTED:REDACTED@host/x"),
        (
            "http://user:PW@host:81/x?token=t",
            "http://REDACTED:REDACTED@host:81/x?token=REDACTED",
        ),
        ("http://host?token=t", "http://host?token=REDACTED"),
        ("http://user:PW@host", "http://REDACTED:REDACTED@host"),
        ("HTTPS://a:b@host/", "HTTPS://REDACTED:REDACTED@host/"),
        # invalid absolute-form never appears raw
        ("http://user:PW@host:port/x", INVALID_URL),
        ("ht tp://user:PW@host/x", INVALID_URL),
        # authority-form (CONNECT) and asterisk-form
        ("host.example:443", "host.example:443"),
        ("u:pw@host.example:443", "REDACTED:REDACTED@host.example:443"),
        ("*", "*"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_fast_path_returns_the_same_object() -> None:
    uri = "/a/very/ordinary/path/" + "x" * 50
    assert redact_uri(uri) is uri


def test_settings_extend_the_default_names() -> None:
    names = redacted_query_params({"divak_redacted_query_params": ["Session", "otp"]})
    assert names >= redaction.DEFAULT_REDACTED_QUERY_PARAMS
    assert {"session", "otp"} <= names
    assert redact_uri("/a?SESSION=s&otp=1&token=t", names) == (
        "/a?SESSION=REDACTED&otp=REDACTED&token=REDACTED"
    )
    assert redact_uri("/a?session=s") == "/a?session=s"  # default set unchanged
    assert redacted_query_params({}) == redaction.DEFAULT_REDACTED_QUERY_PARAMS
    assert redacted_query_params(None) == redaction.DEFAULT_REDACTED_QUERY_PARAMS
    assert "otp" in redacted_query_params({"divak_redacted_query_params": "OTP"})
    with pytest.raises(TypeError):
        redacted_query_params({"divak_redacted_query_params": [1, 2]})


def test_client_keeps_its_name() -> None:
    assert divak.client.redact_url is redact_url


# -- Issue 20, item 9: every outlet, over real requests -----------------------


class Leak(typing.NamedTuple):
    """A request that carries a secret, ``{secret}`` in the target or headers."""

    item: str
    target: str
    headers: dict[str, str] = {}
    #: Whether the name is redacted by an application setting only (Sentry,
    #: started before any application, knows the default names only).
    setting_only: bool = False

    def secret(self) -> str:
        return "Hunter2" + "".join(c for c in self.item if c.isalnum())

    def request(self) -> tuple[str, dict[str, str]]:
        secret = self.secret()
        headers = {k: v.format(secret=secret) for k, v in self.headers.items()}
        return self.target.format(secret=secret), headers


LEAKS = [
    *(
        Leak(name, f"/a?page=2&{name}={{secret}}")
        for name in (
            "refresh_token",
            "id_token",
            "passwd",
            "pwd",
            "jwt",
            "sessionid",
            "auth_token",
            "private_key",
            "credentials",
            "client_secret",
        )
    ),
    Leak("x-api-key", "/a?x-api-key={secret}"),
    Leak("X-Api-Key header", "/a", {"X-Api-Key": "{secret}"}),
    Leak(";jsessionid=", "/a;jsessionid={secret}/b"),
    Leak("//user:pass@ in a path", "//user:{secret}@evil.example/a"),
    Leak("Referer", "/a", {"Referer": "https://shop.example/cb?token={secret}"}),
    Leak("instance", "/a;otp={secret}/b", setting_only=True),
]


class Refused(
    divak.RequestTracker,
    divak.ErrorLogger,
    divak.ErrorWriter,
    divak.Logger,
    web.RequestHandler,
):
    def get(self) -> None:
        self.logger.info("refusing")
        raise web.HTTPError(403)


class LeakApp(divak.Recorder, divak.Application):
    """Every outlet on: combined access log, problem documents, captured headers."""

    def __init__(self, spans: SpanRecorder) -> None:
        super().__init__(
            [(r"/.*", Refused)],
            access_log_format="combined",
            problem_details=True,
            divak_capture_request_headers=["x-api-key", "user-agent"],
            divak_redacted_query_params=["otp"],
        )
        self.set_divak_service("leaks")
        self.add_divak_reporter(spans)
        self.add_divak_propagator(divak.RequestIdPropagation())


@pytest.mark.parametrize("leak", LEAKS, ids=[leak.item for leak in LEAKS])
def test_no_secret_reaches_logs_spans_or_error_documents(
    leak: Leak,
    log_records: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    target, headers = leak.request()
    spans = SpanRecorder()

    async def go() -> httpclient.HTTPResponse:
        app = LeakApp(spans)
        port = listen(app)
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{target}", headers=headers, raise_error=False
        )
        app._test_server.stop()
        await flush(app)
        return response

    response = run(go())
    assert response.code == 403
    formatter = TextFormatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in log_records)
    assert "GET " in logged and "failed with 403" in logged  # the lines are there
    assert len(spans.spans) == 1
    outlets = {
        "log": logged,
        "span": spans.spans[0].to_json(),
        "response": f"{response.headers!r}\n{response.body.decode()}",
    }
    secret = leak.secret()
    assert {name: secret in text for name, text in outlets.items()} == {
        "log": False,
        "span": False,
        "response": False,
    }, outlets
