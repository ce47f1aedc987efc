"""transport/eager.py: a coroutine runs at once and becomes a task only when it waits."""

from __future__ import annotations

import asyncio

import pytest

from kanal.transport import eager


async def test_a_coroutine_that_never_waits_needs_no_task() -> None:
    done: list[str] = []

    async def answer() -> None:
        done.append("answered")

    assert eager.start(answer()) is None
    assert done == ["answered"]  # before start() returned


async def test_a_waiting_coroutine_is_finished_by_a_task() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    second: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def answer() -> None:
        seen.append(await first)
        await asyncio.sleep(0)  # a bare yield
        try:
            await second
        except ValueError as error:
            seen.append(str(error))

    task = eager.start(answer())
    assert task is not None and seen == []
    first.set_result(1)
    second.set_exception(ValueError("from the future"))
    await asyncio.wait_for(task, 1)
    assert seen == [1, "from the future"]


@pytest.mark.parametrize("first_step", [True, False], ids=["waiting", "before-first-step"])
async def test_cancelling_the_task_cancels_the_coroutine_and_what_it_waits_on(
    first_step: bool,
) -> None:
    """Cancelled while it waits, or before the loop ran its first step (then _finish never
    runs and start()'s done callback ends the coroutine)."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def answer() -> None:
        try:
            await never
        finally:
            cleaned.append("finally")

    task = eager.start(answer())
    assert task is not None
    if first_step:
        await asyncio.sleep(0)  # one loop iteration: the task's first step runs, it now waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"] and never.cancelled()


async def test_an_error_before_the_first_wait_reaches_the_caller() -> None:
    async def broken() -> None:
        raise RuntimeError("at once")

    with pytest.raises(RuntimeError, match="at once"):
        eager.start(broken())
