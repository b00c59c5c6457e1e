"""The schema the migrations build is the schema the tables describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from docqueue.store import upgrade
from docqueue.store.tables import metadata


def test_migrated_schema_equals_tables(engine: Engine) -> None:
    """Alembic finds nothing to change between the migrated database and the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    """Running the migrations on a migrated store changes nothing and raises nothing."""
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() is not None
        assert compare_metadata(context, metadata) == []
