"""`/v1/jobs/{id}/artifacts`: the files a job read and wrote, listed and downloaded."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from docqueue.api.deps import JobId, StorageDep, StoreDep
from docqueue.api.problems import problem_responses
from docqueue.api.schemas import ArtifactListOut, ArtifactOut
from docqueue.errors import NotFound
from docqueue.models import Artifact

router = APIRouter(prefix="/v1/jobs/{job_id}/artifacts", tags=["artifacts"])
PROBLEMS = problem_responses(404, 422)


@router.get("", responses=PROBLEMS)
def list_artifacts(job_id: JobId, store: StoreDep) -> ArtifactListOut:
    """The job's input and output files."""
    store.get(job_id)  # NotFound for an unknown job, rather than an empty list
    return ArtifactListOut(items=[ArtifactOut.of(job_id, a) for a in store.artifacts(job_id)])


@router.get(
    "/{name:path}",
    response_class=StreamingResponse,
    responses=problem_responses(
        404, 422, ok={"content": {"application/octet-stream": {}}, "description": "The bytes."}
    ),
)
def download_artifact(
    job_id: JobId,
    name: Annotated[str, Path(description="The artifact's name, as listed.")],
    store: StoreDep,
    storage: StorageDep,
) -> StreamingResponse:
    """The bytes of one artifact, streamed from storage, with its media type."""
    store.get(job_id)
    artifact = _named(store.artifacts(job_id), name, job_id)
    if not storage.exists(artifact.sha256):
        raise NotFound(f"the bytes of artifact {name!r} of job {job_id} are no longer stored")
    return StreamingResponse(
        storage.iter_bytes(artifact.sha256),
        media_type=artifact.media_type,
        headers={
            "Content-Disposition": _disposition(artifact.name),
            "Content-Length": str(artifact.size),
            "ETag": f'"{artifact.sha256}"',
        },
    )


def _named(artifacts: list[Artifact], name: str, job_id: UUID) -> Artifact:
    """The artifact called `name`, an output before an input of the same name."""
    matches = sorted((a for a in artifacts if a.name == name), key=lambda a: a.role != "output")
    if not matches:
        known = ", ".join(sorted({a.name for a in artifacts})) or "none"
        raise NotFound(f"job {job_id} has no artifact {name!r}; its artifacts: {known}")
    return matches[0]


def _disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact one in RFC 5987 form."""
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
