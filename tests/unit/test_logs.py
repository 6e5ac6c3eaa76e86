"""Request ids the gateway and chatcore make up for requests that came without one."""

from __future__ import annotations

import os
import re

from longtail.logs import begin_request


def test_made_up_request_ids_are_uuid_shaped_and_never_repeat():
    ids = [begin_request(None) for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert begin_request("trace-7") == "trace-7"


def test_a_forked_process_does_not_repeat_its_parents_ids():
    """Each process counts from its own random prefix, a child of a fork included."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent, then gone
        try:
            os.write(write, begin_request(None).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child_id = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent_ids = {begin_request(None) for _ in range(3)}
    assert re.fullmatch(r"[0-9a-f]{32}", child_id)
    assert child_id[:16] not in {i[:16] for i in parent_ids}
