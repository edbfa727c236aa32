"""New correlation ids: random UUIDs version 4, unique across threads and forks."""

from __future__ import annotations

import os
import re
import threading
import uuid

import pytest

from divak.propagation.requestid import new_request_id

#: RFC 9562's canonical text form of a UUID version 4.
UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def well_formed(value: str) -> bool:
    parsed = uuid.UUID(value)
    return (
        UUID4.fullmatch(value) is not None
        and str(parsed) == value
        and parsed.version == 4
        and parsed.variant == uuid.RFC_4122
    )


def test_ids_are_unique_random_uuid4s() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(well_formed(value) for value in ids)
    # Every hexadecimal digit that is random takes all of its values.
    for position in (0, 9, 15, 20, 35):
        assert len({value[position] for value in ids}) == 16, position
    assert {value[19] for value in ids} >= set("89ab")


def test_ids_are_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def draw(found: list[str]) -> None:
        start.wait()
        found.extend(new_request_id() for _ in range(3_000))

    threads = [threading.Thread(target=draw, args=(found,)) for found in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [value for found in results for value in found]
    assert len(ids) == 8 * 3_000
    assert len(set(ids)) == len(ids)
    assert all(well_formed(value) for value in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    before = new_request_id()  # the parent has random bytes left over
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave at once
        try:
            os.close(reading)
            text = "\n".join(new_request_id() for _ in range(100))
            os.write(writing, text.encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        child = pipe.read().split("\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent = [new_request_id() for _ in range(100)]
    assert len(child) == 100 and all(well_formed(value) for value in child)
    assert not set(child) & set(parent)
    assert before not in child
