"""Log set-up: plain lines for people or JSON lines for collectors; job lines carry the job id."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from docqueue.settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message and job_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as JSON."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    """`time level logger [job id] message`."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one readable line."""
        job_id = getattr(record, "job_id", None)
        record.job_tag = f" [job {job_id}]" if job_id else ""
        return super().format(record)


def configure_logging(settings: Settings) -> None:
    """Send docqueue's logs to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            PlainFormatter("%(asctime)s %(levelname)-7s %(name)s%(job_tag)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
