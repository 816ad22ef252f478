"""The per-connection meter and reader, on an in-memory stream: what a read may take in each phase,
and why (and how often) a connection is cut off. The running proxy's side is in e2e/test_bounds.py
and e2e/test_head_deadline.py."""

import asyncio
import logging

import pytest

from keybrake_addon.bounds import ConnectionCutOff, Meter, MeteredReader

TIMEOUT_S = 0.2


def metered(head_bytes: int = 10) -> tuple[asyncio.StreamReader, Meter, MeteredReader]:
    stream = asyncio.StreamReader()
    meter = Meter(head_bytes, TIMEOUT_S)
    return stream, meter, MeteredReader(stream, meter, "192.0.2.1:4000")


def closures(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "closed the connection" in record.getMessage()]


def test_a_head_over_its_size_bound_is_cut_off_once_with_that_reason(caplog):
    async def scenario():
        stream, meter, reader = metered()
        stream.feed_data(b"GET / HTTP/1.1\r\nX-Filler: yyyyyyyy")
        assert await reader.read(65536) == b"GET / HTTP"  # the head's budget, no more
        with pytest.raises(ConnectionCutOff, match="over its size bound"):
            await reader.read(65536)  # held back until the deadline, which passes
        await asyncio.sleep(0.05)  # let a late timer fire, if one is still armed

    caplog.set_level(logging.INFO, logger="keybrake")
    asyncio.run(scenario())
    assert closures(caplog) == ["keybrake: closed the connection of 192.0.2.1:4000: request head over its size bound"]


def test_a_silent_connection_is_cut_off_at_the_deadline_once(caplog):
    async def scenario():
        _, _, reader = metered()
        with pytest.raises(ConnectionCutOff, match="not complete in time"):
            await reader.read(65536)

    caplog.set_level(logging.INFO, logger="keybrake")
    asyncio.run(scenario())
    assert closures(caplog) == ["keybrake: closed the connection of 192.0.2.1:4000: request head not complete in time"]


def test_a_spent_head_budget_waits_for_the_body_phase_rather_than_cutting():
    async def scenario():
        stream, meter, reader = metered()
        stream.feed_data(b"0123456789" + b"body")
        assert await reader.read(65536) == b"0123456789"
        asyncio.get_running_loop().call_later(0.05, lambda: meter.await_body(4, declared=True))
        return await reader.read(65536)

    assert asyncio.run(scenario()) == b"body"


def test_a_kept_alive_connection_has_no_clock_until_its_next_head_begins():
    async def scenario():
        stream, meter, reader = metered()
        meter.await_head(start_clock=False)
        pending = asyncio.ensure_future(reader.read(65536))
        await asyncio.sleep(TIMEOUT_S * 2)
        assert not pending.done(), "an idle kept-alive connection was cut off"
        stream.feed_data(b"GET")
        assert await pending == b"GET"
        assert meter.deadline is not None  # its first byte started the clock
        with pytest.raises(ConnectionCutOff, match="not complete in time"):
            await reader.read(65536)

    asyncio.run(scenario())


def test_an_idle_kept_alive_connection_is_cut_off_quietly_at_the_idle_deadline(caplog):
    async def scenario():
        stream = asyncio.StreamReader()
        meter = Meter(10, header_timeout_s=5.0, idle_timeout_s=TIMEOUT_S)
        reader = MeteredReader(stream, meter, "192.0.2.1:4000")
        meter.await_head(start_clock=False)  # the request is in; the answer is not out yet
        pending = asyncio.ensure_future(reader.read(65536))
        await asyncio.sleep(TIMEOUT_S * 2)
        assert not pending.done(), "the idle clock ran before the answer went out"
        meter.start_idle_clock()
        with pytest.raises(ConnectionCutOff, match="idle past the keep-alive timeout"):
            await pending

    caplog.set_level(logging.INFO, logger="keybrake")
    asyncio.run(scenario())
    assert closures(caplog) == []  # routine: logged at debug only


def test_the_first_byte_of_a_next_head_swaps_the_idle_deadline_for_the_heads():
    async def scenario():
        stream = asyncio.StreamReader()
        meter = Meter(10, header_timeout_s=TIMEOUT_S, idle_timeout_s=60.0)
        reader = MeteredReader(stream, meter, "192.0.2.1:4000")
        meter.await_head(start_clock=False)
        meter.start_idle_clock()
        stream.feed_data(b"GET")
        assert await reader.read(65536) == b"GET"
        with pytest.raises(ConnectionCutOff, match="not complete in time"):
            await reader.read(65536)

    asyncio.run(scenario())


def test_the_idle_clock_does_not_replace_a_head_already_begun():
    async def scenario():
        meter = Meter(10, header_timeout_s=TIMEOUT_S, idle_timeout_s=60.0)
        MeteredReader(asyncio.StreamReader(), meter, "192.0.2.1:4000")
        head_deadline = meter.deadline
        meter.start_idle_clock()
        assert meter.deadline == head_deadline

    asyncio.run(scenario())
