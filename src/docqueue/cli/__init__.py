"""The `docqueue` command: serve, worker, submit, jobs, stats, db."""

from __future__ import annotations

from typing import Annotated

import typer

from docqueue.cli.jobs import jobs_app
from docqueue.cli.output import console, stats_table
from docqueue.cli.serve import serve
from docqueue.cli.submit import submit
from docqueue.dispatch.local import Supervisor
from docqueue.logs import configure_logging
from docqueue.settings import Settings
from docqueue.store import JobStore, upgrade

app = typer.Typer(
    name="docqueue",
    help="A durable, asynchronous job service for document work.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(jobs_app, name="jobs")
app.command()(serve)
app.command()(submit)
db_app = typer.Typer(help="The job store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and docqueue.toml, with command-line values on top."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings.model_validate(given)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="Child processes.")
    ] = None,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="Queues to serve, a,b.")
    ] = None,
    burst: Annotated[bool, typer.Option(help="Exit once the queues are empty.")] = False,
    imports: Annotated[
        str | None, typer.Option("--import", help="Modules with custom processors, a,b.")
    ] = None,
) -> None:
    """Run a worker: a supervisor and its child processes, until SIGTERM or Ctrl-C."""
    settings = load_settings(concurrency=concurrency, queues=queues, imports=imports)
    configure_logging(settings)
    store = JobStore.from_settings(settings)
    upgrade(store.engine)
    store.engine.dispose()
    supervisor = Supervisor(settings, burst=burst)
    supervisor.install_signal_handlers()
    supervisor.run()


@app.command()
def stats() -> None:
    """Jobs per queue and state, the age of the oldest waiting job, recent throughput."""
    store = JobStore.from_settings(load_settings())
    console.print(stats_table(store.stats()))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the job store's tables to the newest schema."""
    settings = load_settings()
    store = JobStore.from_settings(settings)
    upgrade(store.engine)
    console.print(f"job store at [bold]{store.engine.url.render_as_string()}[/] is up to date")
