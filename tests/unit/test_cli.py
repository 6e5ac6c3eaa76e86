"""The process runner's own settings: what `longtail chatcore|gateway|dev` does at start."""

from __future__ import annotations

import gc

from longtail.cli import settle_heap


class Startup:
    """Stands in for what starting builds and keeps."""


def test_what_starting_built_is_left_out_of_full_collections_and_garbage_is_not():
    kept = [Startup() for _ in range(1000)]
    garbage = [Startup()]
    garbage.append(garbage)  # a cycle only the collector can free
    del garbage
    try:
        settle_heap()
        walked = [o for o in gc.get_objects() if isinstance(o, Startup)]
        assert walked == [], "no generation's collection walks what starting built"
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
    # Unfrozen, they are tracked again; the cycle was collected before the freeze.
    assert sum(isinstance(o, Startup) for o in gc.get_objects()) == len(kept)
