"""Header and path smuggling through the real nginx running deploy/nginx.conf in front of
three gateway processes: ambiguous framing dies at nginx, chatcore's internal API is
never reached however its path is spelled, and forwarding headers grant nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.client import Client
from tests.e2e import conftest as e2e
from tests.e2e.cluster import Cluster, Proc, free_port
from tests.e2e.nginx import Nginx
from tests.security.rawhttp import Exchange, exchange, request

pytestmark = pytest.mark.e2e

# The e2e process cluster (chatcore + three gateways), shared by this module.
cluster = e2e.cluster
e2e_workdir = e2e.e2e_workdir
e2e_redis_url = e2e.e2e_redis_url
e2e_database_url = e2e.e2e_database_url

SECRET = "e2e-secret"  # the cluster's LONGTAIL_SECRET (tests/e2e/cluster.py)


@pytest.fixture(scope="module")
def nginx(cluster: Cluster, e2e_workdir) -> Iterator[Nginx]:
    workdir = e2e_workdir / "nginx-security"
    workdir.mkdir()
    proxy = Nginx(workdir, cluster.urls, free_port())
    checked = proxy.check()
    assert checked.returncode == 0, checked.stderr
    proxy.start()
    assert proxy.popen is not None
    asyncio.run(
        cluster.wait_ready(
            Proc("nginx", [], {}, workdir / "stderr.log", proxy.url, "/readyz", proxy.popen)
        )
    )
    yield proxy
    proxy.stop()


@pytest.fixture
async def user(http, nginx: Nginx) -> Client:
    return await Client(http, nginx.url).signup(f"nina{uuid.uuid4().hex[:6]}")


def host(nginx: Nginx) -> tuple[str, str]:
    return ("Host", nginx.url.removeprefix("http://"))


async def answers_stay_in_step(user: Client) -> None:
    """A desynchronised upstream connection would hand someone else's (or a smuggled
    request's) answer to the next client: every gateway, via nginx, answers its own."""
    for _ in range(6):  # twice round the three gateways
        me = await user.request("GET", "/api/me")
        assert me.status == 200 and me.body["id"] == user.user_id


def never_chatcore(got: Exchange) -> None:
    assert 200 not in got.statuses, got.raw[:300]
    assert b'"status":"ok"' not in got.raw and b"bad_secret" not in got.raw


# Each hides a second request in the body; a proxy and a gateway that disagreed on where
# the first ends would run it.
SMUGGLED = b"GET /internal/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
FRAMING = {
    "cl-and-te": ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], 400),
    "te-and-cl": ([("Transfer-Encoding", "chunked"), ("Content-Length", "66")], 400),
    "duplicate-cl": ([("Content-Length", "0"), ("Content-Length", "66")], 400),
    "te-with-space": ([("Content-Length", "5"), ("Transfer-Encoding", " chunked")], 400),
    # RFC 9112 6.1: a transfer coding the server does not know is 501, from nginx itself.
    "te-unknown": ([("Transfer-Encoding", "xchunked")], 501),
    "te-chunked-identity": ([("Transfer-Encoding", "chunked, identity")], 501),
}


@pytest.mark.parametrize("case", FRAMING)
async def test_ambiguous_framing_is_refused_by_nginx_and_smuggles_nothing(case, nginx, user):
    extra, status = FRAMING[case]
    head = [host(nginx), ("Authorization", f"Bearer {user.token}"), *extra]
    body = b"0\r\n\r\n" + SMUGGLED
    got = await exchange(nginx.url, request("POST", "/api/login", head, body))
    assert got.statuses == [status] and got.closed
    assert b"<center>nginx" in got.raw  # nginx's own page: no gateway saw it
    never_chatcore(got)
    await answers_stay_in_step(user)


@pytest.mark.parametrize(
    "header",
    [("X-Folded", "a\r\n b"), ("Authorization", "Bearer\r\n x"), ("X-Tab-Folded", "a\r\n\tb")],
    ids=["obs-fold", "obs-fold-authorization", "obs-fold-tab"],
)
async def test_obs_fold_headers_are_refused(header, nginx, user):
    got = await exchange(nginx.url, request("GET", "/api/me", [host(nginx), header]))
    assert got.statuses == [400] and got.closed
    await answers_stay_in_step(user)


def internal_targets(cluster: Cluster, nginx: Nginx) -> list[str]:
    core = cluster.chatcore.url
    return [
        f"{core}/internal/health",  # absolute URI naming chatcore
        f"{nginx.url}/internal/health",
        f"{core}/internal/users/1/events?after=0",
        "/internal/health",
        "/%2Finternal/health",
        "/%2finternal/health",
        "/./internal/health",
        "//internal/health",
        "/INTERNAL/health",
        "/Internal/health",
        "/%69nternal/health",
        "/api/../internal/health",
        "/api/%2e%2e/internal/health",
        "/api/%2E%2E/internal/health",
        "/internal%2Fhealth",
        "/.%2Finternal/health",
        "/internal;/health",
        "/internal/health%00",
        "/internal/health?x=1",
        "/internal/users/1/events?after=0",
        "/%2Finternal/users/1/events?after=0",
        "/%5Cinternal/health",
        "/internal%20/health",
        "\\internal\\health",
        "*",
    ]


async def test_chatcores_internal_api_is_unreachable_however_spelled(cluster, nginx, user):
    answers = {}
    for target in internal_targets(cluster, nginx):
        # Even the cluster's real secret opens nothing: the path never reaches chatcore.
        head = [host(nginx), ("Authorization", f"Bearer {SECRET}"), ("Connection", "close")]
        got = await exchange(nginx.url, request("GET", target, head))
        never_chatcore(got)
        nginx_refused = b"<center>nginx" in got.raw and got.statuses[0] in (400, 404)
        gateway_404 = got.statuses == [404] and b'"code":"not_found"' in got.raw
        answers[target] = (got.statuses, nginx_refused or gateway_404)
    assert {t: a for t, a in answers.items() if not a[1]} == {}
    await answers_stay_in_step(user)


async def test_a_host_header_naming_chatcore_still_reaches_only_gateways(cluster, nginx, user):
    core = ("Host", cluster.chatcore.url.removeprefix("http://"))
    for path in ("/internal/health", "/INTERNAL/health"):
        got = await exchange(nginx.url, request("GET", path, [core, ("Connection", "close")]))
        never_chatcore(got)
        assert got.statuses == [404]
    # What answers is a gateway: its readiness, which chatcore does not have.
    got = await exchange(nginx.url, request("GET", "/readyz", [core, ("Connection", "close")]))
    assert got.statuses == [200] and b'"ready"' in got.raw


SPOOFS = {
    "X-Forwarded-For": "127.0.0.1",
    "X-Real-IP": "127.0.0.1",
    "Forwarded": "for=127.0.0.1;proto=https",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "localhost",
    "X-Forwarded-User": "admin",
    "X-Remote-User": "admin",
    "X-User-Id": "1",
    "X-Original-URL": "/internal/health",
    "X-Rewrite-URL": "/internal/health",
}


async def test_forwarding_headers_grant_nothing(nginx, user, http):
    anonymous = Client(http, nginx.url)
    for path in ("/api/me", "/api/events?cursor=0&timeout=0", "/api/conversations"):
        resp = await anonymous.request("GET", path, headers=SPOOFS)
        assert (resp.status, resp.error_code) == (401, "unauthorized"), path
    # With a real session they change nothing about who you are.
    me = await user.request("GET", "/api/me", headers=SPOOFS)
    assert me.status == 200 and me.body == {"id": user.user_id, "username": user.username}
