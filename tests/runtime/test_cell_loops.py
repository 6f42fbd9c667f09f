"""The event loops cells run in (tetra_magic/runtime/cell.py), in-process: the items of a
--map shard share one loop, made and closed around them, also where the worker calls the
runtime from inside its own running loop, as RunPod's published worker does."""

from __future__ import annotations

import asyncio

from tetra_magic.runtime import cell


async def _item(index: int) -> tuple[int, bool]:
    await asyncio.sleep(0)
    return index, asyncio.get_running_loop().is_running()


def _shard() -> tuple[list[tuple[int, bool]], set[int]]:
    """Three items in one shard's loop: their results, and the loops they ran in."""
    results, loops = [], set()
    with cell.one_loop():
        for index in range(3):
            results.append(cell._in_own_loop(asyncio, _item(index)))
            loops.add(id(cell._shard_loop["loop"]))
    return results, loops


def test_a_shards_items_share_one_loop() -> None:
    results, loops = _shard()
    assert results == [(0, True), (1, True), (2, True)] and len(loops) == 1
    assert cell._shard_loop == {}  # closed and gone once the shard ends


def test_a_shard_runs_inside_the_workers_own_running_loop() -> None:
    async def worker() -> tuple[list[tuple[int, bool]], set[int]]:
        outer = asyncio.get_running_loop()
        shard = _shard()
        assert asyncio.get_running_loop() is outer  # the worker's loop is its own again
        return shard

    results, _ = asyncio.run(worker())
    assert results == [(0, True), (1, True), (2, True)]
