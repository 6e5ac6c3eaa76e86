"""`longtail migrate`: Alembic, driven from code on the async engine's connection."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from chatcore.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to run on every start."""
    async with db.engine.connect() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
        await conn.commit()
