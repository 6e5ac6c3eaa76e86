"""JSONP and the forever iframe put data inside JavaScript and HTML: no callback name
can inject code, and no message body can end the script element or the statement."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.client import messages
from tests.streams import count, read_stream

JSONP = "/api/events/jsonp"
IFRAME = "/api/events/iframe"

HOSTILE_CALLBACKS = [
    "alert(1)",
    "alert(1);cb",
    "cb;alert(1)",
    "cb//",
    "cb/*",
    "cb\nalert(1)",
    "cb\u2028alert(1)",
    "cb<script>",
    "</script><script>alert(1)</script>",
    "cb=1",
    "cb,alert",
    "cb[0]",
    "cb['x']",
    "cb()",
    "cb`x`",
    "a.b.c.d.e",
    ".cb",
    "cb.",
    "cb..x",
    "1cb",
    "-cb",
    "cb-x",
    "cb x",
    "",
    "x" * 65,
    "a." + "x" * 65,
    "caf\u00e9",
    "\uff43\uff42",  # fullwidth "cb"
    "cb%00",
    "cb\\u0028",
    "(function(){})",
    "{}",
    "a?.b",
]

# Everything that could end a <script>, open an HTML comment state, or end a JS line.
HOSTILE_BODY = (
    "</script><script>alert(1)</script> <!--<script> --> ]]> <\\/script> </SCRIPT >"
    " \u2028 line \u2029 para \"quoted\" 'single' \\ & &amp; \x7f end"
)


async def refusal(http, url: str, params: dict[str, str]) -> tuple[int, str, str, str]:
    """(status, content type, nosniff, error code) of one request."""
    timeout = aiohttp.ClientTimeout(total=5)  # an accepted iframe would stream for minutes
    async with http.get(url, params=params, timeout=timeout) as resp:
        body = await resp.content.read(300)
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = body[:60].decode(errors="replace")
        return (
            resp.status,
            resp.headers["Content-Type"],
            resp.headers.get("X-Content-Type-Options", ""),
            code,
        )


@pytest.mark.parametrize("path", [JSONP, IFRAME])
async def test_any_callback_that_is_not_a_plain_name_path_is_refused(path, pair, stack, http):
    _, bob = pair
    # A plain JSON 400, which a script tag cannot run and a browser will not sniff.
    refused = (400, "application/json; charset=utf-8", "nosniff", "invalid_callback")
    answers = {}
    for callback in HOSTILE_CALLBACKS:
        params = {"callback": callback, "cursor": "0", "timeout": "0", "token": bob.token}
        answers[callback] = await refusal(http, stack.urls[0] + path, params)
    assert {cb: a for cb, a in answers.items() if a != refused} == {}


async def test_only_the_last_callback_parameter_counts_and_none_is_echoed(pair, stack, http):
    _, bob = pair
    url = stack.urls[0] + JSONP + f"?cursor=0&timeout=0&token={bob.token}"
    async with http.get(url + "&callback=alert(1)&callback=cb") as resp:
        body = await resp.read()
        assert resp.status == 200 and body.startswith(b"/**/cb(") and b"alert" not in body
    async with http.get(url + "&callback=cb&callback=alert(1)") as resp:
        assert resp.status == 400


# Tornado turns control characters in arguments into spaces and strips the ends, so
# these arrive as the plain name "cb": answered, and nothing but "cb" is ever written.
NORMALISED_CALLBACKS = ["cb\n", " cb", "cb ", "cb\x00", "\tcb\r"]


@pytest.mark.parametrize("callback", NORMALISED_CALLBACKS, ids=repr)
async def test_callbacks_padded_with_blanks_or_controls_become_the_plain_name(
    callback, pair, stack, http
):
    _, bob = pair
    params = {"callback": callback, "cursor": "0", "timeout": "0", "token": bob.token}
    async with http.get(stack.urls[0] + JSONP, params=params) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"/**/cb({")
    url = stack.urls[0] + IFRAME + "?" + urlencode({**params, "callback": callback})
    got = await read_stream(http, url, {}, "iframe", count(1), deadline=5)
    assert b"parent.cb(m)" in got.raw


def jsonp_payload(body: bytes, callback: str) -> dict:
    prefix = f"/**/{callback}(".encode()
    assert body.startswith(prefix) and body.endswith(b");"), body[:80]
    return json.loads(body[len(prefix) : -2])


def inert_in_a_script(text: bytes) -> None:
    """Nothing in `text` can end a <script> element, start a comment state, or a new JS
    line: the characters that could are all \\u-escaped."""
    for raw in (b"<", b">", "\u2028".encode(), "\u2029".encode()):
        assert raw not in text, raw


async def test_jsonp_answers_start_with_a_comment_and_escape_hostile_bodies(pair, stack, http):
    alice, bob = pair
    assert (await alice.send(bob, HOSTILE_BODY)).status == 201
    url = stack.urls[1] + JSONP + f"?callback=app.on$Events_1&cursor=2&timeout=0&token={bob.token}"
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        body = await resp.read()
    assert body.startswith(b"/**/app.on$Events_1(")
    inert_in_a_script(body)
    assert b"&" not in body
    assert messages(jsonp_payload(body, "app.on$Events_1")["events"]) == [HOSTILE_BODY]


async def test_jsonp_errors_echo_nothing_executable(pair, stack, http):
    _, bob = pair
    cursor = "</script><script>alert(1)//\u2028"
    params = {"callback": "cb", "cursor": cursor, "token": bob.token}
    async with http.get(stack.urls[0] + JSONP, params=params) as resp:
        assert resp.status == 400
        body = await resp.read()
    inert_in_a_script(body)
    assert jsonp_payload(body, "cb")["error"]["code"] == "invalid_cursor"


class Scripts(HTMLParser):
    """The script elements of a page, as a browser's tokenizer splits them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self._in_script = False
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


async def test_iframe_scripts_carry_hostile_bodies_intact_and_inert(pair, stack, http):
    alice, bob = pair
    assert (await alice.send(bob, HOSTILE_BODY)).status == 201
    url = stack.urls[0] + IFRAME + f"?cursor=2&callback=app.onEvent&token={bob.token}"
    got = await read_stream(http, url, {}, "iframe", count(1))
    page = Scripts()
    page.feed(bytes(got.raw).decode())
    helper, *calls = page.scripts
    assert helper == "function p(m){try{parent.app.onEvent(m)}catch(e){}}"
    # Exactly our elements: the helper, then one p(...) per message, nothing else opened.
    assert set(page.tags) == {"html", "head", "meta", "title", "script", "body"}
    assert all(c.startswith("p(") and c.endswith(")") for c in calls), calls
    for call in calls:
        inert_in_a_script(call.encode())
    payloads = [json.loads(call[2:-1]) for call in calls]
    assert messages([p for p in payloads if "seq" in p]) == [HOSTILE_BODY]
