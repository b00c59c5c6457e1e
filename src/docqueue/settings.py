"""Settings for every part of docqueue, read from DOCQUEUE_* variables and an optional docqueue.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Everything docqueue can be told; built once at start and passed in, never a global."""

    model_config = SettingsConfigDict(
        env_prefix="DOCQUEUE_", toml_file="docqueue.toml", extra="ignore"
    )

    #: Folder for runtime data (the SQLite file, stored files) when no URL says otherwise.
    home: Path = Path(".docqueue")
    #: SQLAlchemy URL of the job store; empty means a SQLite file under `home`.
    database_url: str = ""
    #: fsspec URL of the object storage; empty means a folder under `home`.
    storage_url: str = ""
    #: How jobs reach workers: `local` (workers claim from the store) or `celery`.
    dispatch: Literal["local", "celery"] = "local"
    #: Celery broker URL, used when `dispatch` is `celery`.
    broker_url: str = "redis://127.0.0.1:6379/0"

    #: Child processes per worker.
    concurrency: int = Field(default=2, ge=1)
    #: Queues a worker takes jobs from, in no particular order (priority decides).
    queues: Annotated[list[str], NoDecode] = ["default"]
    #: Most running jobs per queue across all workers; a queue not named here has no limit.
    queue_limits: dict[str, int] = {}
    #: Most jobs waiting in one queue before submissions get 429; 0 means no limit.
    max_queued: int = Field(default=0, ge=0)
    #: Seconds a claimed job stays leased without a heartbeat before the reaper takes it back.
    lease_seconds: float = Field(default=30.0, gt=0)
    #: Seconds a job may run before its child process is killed (a processor may set its own).
    job_timeout: float = Field(default=600.0, gt=0)
    #: Attempts a job gets before it fails for good (a processor may set its own).
    max_attempts: int = Field(default=3, ge=1)
    #: First retry delay in seconds; each later one doubles, up to `retry_max_delay`.
    retry_base_delay: float = Field(default=2.0, ge=0)
    #: Longest retry delay in seconds.
    retry_max_delay: float = Field(default=600.0, ge=0)
    #: Most jobs a worker claims ahead of its free children (see `prefetch_seconds`). By default
    #: 256 on PostgreSQL and 64 on SQLite, whose write lock is the whole database's: a worker's
    #: transaction of claims and outcomes holds every submission back while it runs.
    prefetch: int | None = Field(default=None, ge=0)
    #: Seconds of work (at the jobs' average run time) a worker holds ahead per child, so that a
    #: child that finishes starts its next job without waiting for the store. A job claimed
    #: ahead waits about this long at most; jobs longer than this are claimed one per free child.
    prefetch_seconds: float = Field(default=0.25, ge=0)
    #: Jobs that take less than this on average are handed to a child in chunks, one message
    #: for many jobs.
    short_job_seconds: float = Field(default=0.05, ge=0)
    #: Jobs a child runs before it is replaced by a fresh one; 0 means never.
    max_jobs_per_child: int = Field(default=1000, ge=0)
    #: Seconds running jobs get to finish after SIGTERM before they are released.
    shutdown_grace: float = Field(default=30.0, ge=0)
    #: Seconds between store polls of an idle worker where nothing wakes it. A commit wakes it
    #: at once on PostgreSQL (NOTIFY) and on SQLite under Linux (inotify); it then polls only
    #: for jobs that come due by the clock, every 0.2 s, and after a missed notification.
    poll_interval: float = Field(default=0.02, gt=0)
    #: Days finished jobs and their artifacts are kept; 0 keeps them forever.
    retention_days: float = Field(default=7.0, ge=0)
    #: Python modules imported at start that register custom processors.
    imports: Annotated[list[str], NoDecode] = []

    #: Most pages a document job may read; a client may ask for fewer (params.max_pages), not more.
    max_pages: int = Field(default=2000, ge=1)
    #: Largest upload the API accepts, in bytes; a bigger one gets 413 and nothing is kept.
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    #: Longest `?wait=` long-poll in seconds; a longer wait asked for is cut to this.
    max_wait_seconds: float = Field(default=60.0, ge=0)
    #: Secret the cron trigger `POST /v1/queue/process` must send in `X-Docqueue-Secret`;
    #: unset, the trigger refuses every call (403).
    process_secret: SecretStr | None = None
    #: `/readyz` wants a worker heard from within this many seconds; 0 skips that check
    #: (for installations that process only through the cron trigger).
    ready_worker_seconds: float = Field(default=60.0, ge=0)
    #: Threads that run the API's blocking endpoints (uploads, long-polls, store reads).
    api_threads: int = Field(default=100, ge=1)
    #: Processes that answer HTTP under `docqueue serve`: one is bound by Python's interpreter
    #: lock to about one core; more share the port and spread submissions over the cores.
    api_processes: int = Field(default=1, ge=1)

    #: Log format: `plain` for people, `json` for log collectors.
    log_format: Literal["plain", "json"] = "plain"
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then the environment, then docqueue.toml."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("queues", "imports", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Accept `a,b` as well as a JSON list, since people type lists in variables."""
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        """The job store URL, defaulting to a SQLite file under `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'docqueue.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        """The storage URL, defaulting to a folder under `home`."""
        if self.storage_url:
            return self.storage_url
        return (self.home / "files").resolve().as_uri()
