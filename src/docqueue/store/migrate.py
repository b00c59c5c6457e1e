"""Bringing a database to the newest schema with the Alembic migrations shipped in this package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, func, select

from docqueue.store.engine import write_transaction

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration that runs this package's migrations on `engine`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision` in one transaction; concurrent callers wait for each other."""
    config = alembic_config(engine)
    with write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(0x646F6371)))  # "docq"
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
