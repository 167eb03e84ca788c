"""A cancel that races the meter's answer must win: the poller stops (no second master on the bus).

On Python 3.11 ``asyncio.wait_for`` returns the inner result when the answer and the cancel land in the
same loop iteration, and the cancel is lost: after a reload the old poller kept polling beside the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from gateway.meters.driver import read_block
from gateway.meters.regmap import Block


class _AnswerOnDemand:
    """A Modbus client whose answer is a future the test resolves (the ModbusReader protocol)."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[Any]] = []

    def _request(self) -> Awaitable[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        return self._request()

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        return self._request()


async def test_a_cancel_in_the_same_iteration_as_the_answer_ends_the_read_cancelled() -> None:
    client = _AnswerOnDemand()
    task = asyncio.create_task(read_block(client, Block("holding", 0, 2), 1, 1.0))
    while not client.pending:
        await asyncio.sleep(0)
    # the answer arrives and the reload cancels the poller in the same loop iteration
    client.pending[0].set_result(ReadHoldingRegistersResponse(registers=[1, 2]))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_the_answer_alone_is_returned() -> None:
    client = _AnswerOnDemand()
    task = asyncio.create_task(read_block(client, Block("holding", 0, 2), 1, 1.0))
    while not client.pending:
        await asyncio.sleep(0)
    client.pending[0].set_result(ReadHoldingRegistersResponse(registers=[7, 9]))
    assert await task == [7, 9]


class _SwallowingClient(_AnswerOnDemand):
    """Like pymodbus: the client waits for its answer with asyncio.wait_for, which on 3.11 returns an
    answer that races a cancel and drops the cancel."""

    async def _wait(self) -> Any:
        return await asyncio.wait_for(super()._request(), 5.0)  # the library's code, not ours

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        return self._wait()


async def test_a_cancel_dropped_inside_the_client_still_ends_the_read_cancelled() -> None:
    client = _SwallowingClient()
    task = asyncio.create_task(read_block(client, Block("holding", 0, 2), 1, 1.0))
    while not client.pending:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # the client's wait_for is now waiting on its own waiter
    client.pending[0].set_result(ReadHoldingRegistersResponse(registers=[1, 2]))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
