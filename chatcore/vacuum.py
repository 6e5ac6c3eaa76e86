"""Chatcore vacuums the outbox itself while it sends (issue 5). PostgreSQL only.

Every event's outbox row is written by its send and deleted moments later
(chatcore.outbox), so at 4,000 direct messages/s the table gains 40,000 dead rows every
five seconds. Autovacuum visits a database at most once a minute (autovacuum_naptime),
and until it does the table and its index grow with dead rows and every send's writes
to them cost more. Measured with the send statement alone on one connection: PostgreSQL's
CPU per message rose from 0.13 to 0.26 ms within a minute, the outbox at 1,400 pages for
a few live rows; vacuumed every second or two, it stayed at 0.13 ms.

A VACUUM is not free beyond its own work: it updates the table's statistics, and so
every connection plans its statements on the outbox again, the send statement among
them (2 ms each here). Hence a VACUUM only after many rows, and none when chatcore is
quiet.
"""

from __future__ import annotations

import asyncio
import logging

from chatcore.db import Database

log = logging.getLogger("longtail.chatcore.vacuum")

# Seconds between looks; outbox rows written since the last VACUUM that make one worth
# its re-planning. Direct messages write two rows each: a VACUUM every second and a
# quarter at 4,000 messages/s, every five at 1,000, every 25 at 200.
VACUUM_INTERVAL = 1.0
VACUUM_AFTER_ROWS = 10_000
# SKIP_LOCKED: another chatcore's VACUUM, or autovacuum's, is already doing the work.
VACUUM = "VACUUM (SKIP_LOCKED) outbox"
# Only the table's owner (or a superuser) may vacuum it; otherwise PostgreSQL answers
# each VACUUM with a warning and does nothing.
MAY_VACUUM = "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'outbox'::regclass"


class OutboxVacuum:
    def __init__(
        self,
        db: Database,
        interval: float = VACUUM_INTERVAL,
        after_rows: int = VACUUM_AFTER_ROWS,
    ) -> None:
        self._db = db
        self._interval = interval
        self._after_rows = after_rows
        self._written = 0

    def note_written(self, rows: int) -> None:
        """`rows` outbox rows were written (each is deleted as soon as it is published)."""
        self._written += rows

    async def vacuum_if_due(self) -> bool:
        """VACUUM the outbox if enough rows were written since the last; True if it ran."""
        if self._written < self._after_rows:
            return False
        written, self._written = self._written, 0
        try:
            async with self._db.sql_transaction(implicit=True) as tx:
                assert tx.driver is not None
                await tx.driver.execute(VACUUM)
        except BaseException:
            self._written += written
            raise
        return True

    async def may_vacuum(self) -> bool:
        async with self._db.sql_transaction(implicit=True) as tx:
            assert tx.driver is not None
            return bool(await tx.driver.fetchval(MAY_VACUUM))

    async def run(self) -> None:
        """Vacuum as sends go on, until cancelled; database errors are logged, not fatal."""
        try:
            allowed = await self.may_vacuum()
        except Exception:
            log.exception("outbox vacuum: could not check the outbox's owner; not vacuuming")
            return
        if not allowed:
            log.warning(
                "outbox vacuum: chatcore's database role does not own the outbox table;"
                " it is left to autovacuum, and sends slow down under sustained load"
            )
            return
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.vacuum_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox vacuum failed, will retry: %s", exc)
