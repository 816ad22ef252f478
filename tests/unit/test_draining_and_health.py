"""The drain's bookkeeping and report, and the health answers (no proxy needed)."""

import asyncio

import pytest

from keybrake_addon.draining import DrainReport, InFlight
from keybrake_addon.health import HealthServer, _request_line, health_answer


def test_in_flight_waits_until_the_last_call_is_answered():
    async def scenario():
        calls = InFlight()
        assert await calls.wait_empty(0)
        calls.add("a")
        calls.add("b")
        assert not await calls.wait_empty(0.01)
        asyncio.get_running_loop().call_later(0.01, calls.discard, "a")
        asyncio.get_running_loop().call_later(0.02, calls.discard, "b")
        assert await calls.wait_empty(1)
        calls.discard("never-added")  # a refused call's hooks: not counted as drained
        return calls.finished, len(calls)

    assert asyncio.run(scenario()) == (2, 0)


@pytest.mark.parametrize("report, expected", [
    (DrainReport(3, 0, 0, 1.23), "keybrake: drained 3 calls in flight in 1.2 s, settlements written; 0 left"),
    (DrainReport(0, 1, 0, 10.0), "keybrake: drained 0 calls in flight in 10.0 s; left 1 call in flight: "
                                 "its hold stays counted and shows as unknown until `keybrake reconcile`"),
    (DrainReport(1, 2, 1, 10.0), "keybrake: drained 1 call in flight in 10.0 s; left 2 calls in flight and left "
                                 "1 settlement unwritten: their holds stay counted and show as unknown until "
                                 "`keybrake reconcile`"),
])
def test_the_drain_report_says_what_was_drained_and_what_was_left(report, expected):
    assert report.message() == expected


async def _ready():
    return True


async def _not_ready():
    return False


@pytest.mark.parametrize("method, path, ready, status, body", [
    ("GET", "/healthz", _not_ready, 200, b'{"status":"ok"}'),  # up, whatever the ledger says
    ("GET", "/readyz", _ready, 200, b'{"status":"ready"}'),
    ("HEAD", "/readyz?probe=lb", _ready, 200, b'{"status":"ready"}'),
    ("GET", "/readyz", _not_ready, 503, b'{"status":"unavailable"}'),
    ("POST", "/readyz", _ready, 405, b'{"status":"method not allowed"}'),
    ("GET", "/readyz/../vault", _ready, 404, b'{"status":"not found"}'),
])
def test_health_answers_are_fixed_words(method, path, ready, status, body):
    answer = asyncio.run(health_answer(method, path, ready))
    assert (answer.status, answer.body) == (status, body)
    assert ("retry-after" in answer.headers) == (status == 503)


@pytest.mark.parametrize("head, expected", [
    (b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/readyz")),
    (b"GET /readyz\r\n\r\n", None),
    (b"GET readyz HTTP/1.1\r\n\r\n", None),
    (b"GET /readyz SPDY/3\r\n\r\n", None),
    (b"\r\n\r\n", None),
])
def test_request_line(head, expected):
    assert _request_line(head) == expected


def test_the_health_server_answers_one_request_and_closes():
    async def scenario():
        server = HealthServer(_ready)
        port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: lb\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)  # until the server closes
            writer.close()
            return answer
        finally:
            server.close()

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"status":"ready"}')
    assert b"connection: close" in answer
