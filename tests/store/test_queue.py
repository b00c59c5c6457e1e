"""Queue semantics of the JobStore, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from docqueue.errors import Conflict, IdempotencyKeyReused, NotFound, QueueFull
from docqueue.models import (
    Artifact,
    Cancelled,
    Completion,
    ErrorInfo,
    Failed,
    JobState,
    NewJob,
    Priority,
    Succeeded,
    utcnow,
)
from docqueue.store import JobStore

LEASE = 30.0


def claim(
    store: JobStore, n: int = 10, queues: tuple[str, ...] = ("default",), **kw: object
) -> list:
    """Claim for worker w1."""
    return store.claim("w1", list(queues), n, lease_seconds=LEASE, **kw)  # type: ignore[arg-type]


def test_priority_then_age_orders_the_claim(store: JobStore) -> None:
    """high before normal before low; equal priority in the order of submission; 0-9 works."""
    ids = {}
    for name, priority in [
        ("low", Priority.LOW),
        ("n1", Priority.NORMAL),
        ("high", Priority.HIGH),
        ("n2", Priority.NORMAL),
        ("nine", 9),
        ("zero", 0),
    ]:
        ids[store.enqueue(NewJob("noop", priority=priority))[0].id] = name
    order = [ids[job.id] for job in claim(store, 3)] + [ids[job.id] for job in claim(store, 10)]
    assert order == ["nine", "high", "n1", "n2", "low", "zero"]


def test_priority_names_and_range() -> None:
    """Named priorities map onto 0-9 and anything else is refused with a reason."""
    assert Priority.parse("high") == 8 and Priority.parse("LOW") == 2 and Priority.parse(7) == 7
    with pytest.raises(ValueError, match="use high, normal, low"):
        Priority.parse("urgent")
    with pytest.raises(ValueError, match="out of range"):
        Priority.parse(10)


def test_delayed_job_waits_for_its_time(store: JobStore) -> None:
    """A job with run_at in the future is scheduled, not claimable, until its time passes."""
    now = utcnow()
    job, _ = store.enqueue(NewJob("noop", run_at=now + timedelta(seconds=60)), now=now)
    assert job.status == JobState.SCHEDULED
    assert claim(store) == []
    assert not store.has_due(["default"])
    later = now + timedelta(seconds=61)
    assert store.has_due(["default"], now=later)
    claimed = store.claim("w1", ["default"], 10, lease_seconds=LEASE, now=later)
    assert [j.id for j in claimed] == [job.id]


def test_claim_takes_only_named_queues(store: JobStore) -> None:
    """A worker on queue a never sees jobs of queue b."""
    a, _ = store.enqueue(NewJob("noop", queue="a"))
    b, _ = store.enqueue(NewJob("noop", queue="b"))
    assert [j.id for j in claim(store, queues=("a",))] == [a.id]
    assert [j.id for j in claim(store, queues=("a", "b"))] == [b.id]


def test_queue_concurrency_limit(store: JobStore) -> None:
    """No more jobs of a limited queue run at once than its limit, across claims."""
    for _ in range(5):
        store.enqueue(NewJob("noop", queue="pdf"))
    store.enqueue(NewJob("noop", queue="other"))
    limits = {"pdf": 2}
    first = claim(store, 10, queues=("pdf", "other"), queue_limits=limits)
    assert sorted(j.queue for j in first) == ["other", "pdf", "pdf"]
    assert claim(store, 10, queues=("pdf",), queue_limits=limits) == []
    done = next(j for j in first if j.queue == "pdf")
    store.complete([Completion(done.id, done.attempt, Succeeded())])
    assert len(claim(store, 10, queues=("pdf",), queue_limits=limits)) == 1


def test_batched_claim_is_bounded_and_never_repeats(store: JobStore) -> None:
    """Claims return at most the limit and never the same job twice."""
    store.enqueue_many([NewJob("noop") for _ in range(25)])
    seen = [j.id for j in claim(store, 10)] + [j.id for j in claim(store, 10)]
    seen += [j.id for j in claim(store, 10)]
    assert len(seen) == 25 == len(set(seen))
    assert claim(store) == []


def test_expired_lease_is_reaped_and_fenced(store: JobStore) -> None:
    """A dead worker's job returns to the queue; its late completion is refused."""
    job, _ = store.enqueue(NewJob("noop"))
    now = utcnow()
    old = store.claim("dead", ["default"], 1, lease_seconds=1, now=now)[0]
    assert store.reap_expired(now=now + timedelta(seconds=0.5)) == 0
    later = now + timedelta(seconds=2)
    assert store.reap_expired(now=later) == 1
    reaped = store.get(job.id)
    assert reaped.status in (JobState.QUEUED, JobState.SCHEDULED)
    assert reaped.error is not None and reaped.error["type"] == "LeaseExpired"
    new = store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=later)[0]
    assert new.id == job.id and new.attempt == 2
    assert store.complete([Completion(job.id, old.attempt, Succeeded({"by": "dead"}))]) == [None]
    assert store.complete([Completion(job.id, new.attempt, Succeeded({"by": "w1"}))]) == [
        JobState.SUCCEEDED
    ]
    assert store.get(job.id).result == {"by": "w1"}


def test_a_batch_of_successes_fences_each_attempt_and_keeps_each_result(store: JobStore) -> None:
    """One completion call with a stale attempt among held ones: only the held ones succeed,
    each with its own result, artifacts and timeline entry; the stale one changes nothing."""
    ids = [store.enqueue(NewJob("noop", params={"n": n}))[0].id for n in range(3)]
    now = utcnow()
    first = {job.id: job for job in store.claim("w1", ["default"], 3, lease_seconds=1, now=now)}
    later = now + timedelta(seconds=2)
    store.heartbeat(
        "w1", [(i, first[i].attempt) for i in (ids[0], ids[2])], lease_seconds=LEASE, now=now
    )
    assert store.reap_expired(now=later) == 1  # ids[1]'s lease ran out
    again = store.claim("w2", ["default"], 1, lease_seconds=LEASE, now=later)[0]
    assert again.id == ids[1] and again.attempt == 2
    output = Artifact("a" * 64, 3, "text/plain", "out.txt", "output")
    batch = [
        Completion(i, first[i].attempt, Succeeded({"n": n}, (output,))) for n, i in enumerate(ids)
    ]
    assert store.complete(batch) == [JobState.SUCCEEDED, None, JobState.SUCCEEDED]
    assert [store.get(i).result for i in ids] == [{"n": 0}, None, {"n": 2}]
    assert store.get(ids[1]).status == JobState.RUNNING and store.get(ids[1]).worker_id == "w2"
    assert [len(store.artifacts(i)) for i in ids] == [1, 0, 1]
    succeeded = [[e for e in store.events(i) if e.type == "succeeded"] for i in ids]
    assert [len(events) for events in succeeded] == [1, 0, 1]
    assert succeeded[0][0].data == {"attempt": first[ids[0]].attempt}


def test_heartbeat_renews_and_reports_lost_jobs(store: JobStore) -> None:
    """Renewed leases survive the reaper; a cancelled job is reported lost to its worker."""
    a, _ = store.enqueue(NewJob("noop"))
    b, _ = store.enqueue(NewJob("noop"))
    now = utcnow()
    held = [(j.id, j.attempt) for j in store.claim("w1", ["default"], 2, lease_seconds=1, now=now)]
    later = now + timedelta(seconds=0.9)
    assert store.heartbeat("w1", held, lease_seconds=10, now=later) == []
    assert store.reap_expired(now=now + timedelta(seconds=5)) == 0
    store.cancel(b.id)
    assert store.heartbeat("w1", held, lease_seconds=10) == [b.id]
    assert store.heartbeat("other-worker", held, lease_seconds=10) == [a.id, b.id]


def test_retry_backoff_then_dead_letter(store: JobStore) -> None:
    """A retryable failure is rescheduled until max_attempts, then the job fails for good."""
    job, _ = store.enqueue(NewJob("noop", max_attempts=3))
    for attempt in (1, 2, 3):
        claimed = claim(store)[0]
        assert claimed.attempt == attempt
        error = ErrorInfo("Boom", f"attempt {attempt}")
        state = store.complete([Completion(job.id, attempt, Failed(error))])[0]
        assert state == (JobState.FAILED if attempt == 3 else JobState.SCHEDULED)
    final = store.get(job.id)
    assert final.status == JobState.FAILED and final.error == {
        "type": "Boom",
        "message": "attempt 3",
        "traceback": None,
    }
    types = [e.type for e in store.events(job.id)]
    assert types.count("retry_scheduled") == 2 and types[-1] == "failed"


def test_retry_waits_for_backoff(engine) -> None:  # type: ignore[no-untyped-def]
    """With a real backoff the retry is not claimable before its delay."""
    from docqueue.models import RetryPolicy

    store = JobStore(engine, retry_policy=RetryPolicy(base_delay=10, max_delay=10))
    job, _ = store.enqueue(NewJob("noop"))
    now = utcnow()
    claimed = store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=now)[0]
    store.complete([Completion(job.id, claimed.attempt, Failed(ErrorInfo("E", "x")))], now=now)
    retry_at = store.get(job.id).run_at
    assert now + timedelta(seconds=5) <= retry_at <= now + timedelta(seconds=10)
    assert store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=now) == []
    after = store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=retry_at)
    assert [j.attempt for j in after] == [2]


def test_backoff_starts_again_after_a_retry_by_hand(engine) -> None:  # type: ignore[no-untyped-def]
    """A manual retry grants a fresh set of attempts, and their backoff starts from the base
    delay again, not from where the attempt numbers have come to."""
    from docqueue.models import RetryPolicy

    store = JobStore(engine, retry_policy=RetryPolicy(base_delay=10, max_delay=10_000))
    job, _ = store.enqueue(NewJob("noop", max_attempts=6))
    now = utcnow()
    for attempt in range(1, 7):
        store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=now)
        store.complete([Completion(job.id, attempt, Failed(ErrorInfo("E", "x")))], now=now)
        now = store.get(job.id).run_at
    store.retry(job.id, now=now)
    (again,) = store.claim("w1", ["default"], 1, lease_seconds=LEASE, now=now)
    assert again.attempt == 7
    store.complete([Completion(job.id, 7, Failed(ErrorInfo("E", "x")))], now=now)
    assert store.get(job.id).run_at <= now + timedelta(seconds=10)


def test_input_error_fails_at_once(store: JobStore) -> None:
    """A permanent failure is never retried, whatever attempts remain."""
    job, _ = store.enqueue(NewJob("noop", max_attempts=5))
    claimed = claim(store)[0]
    outcome = Failed(ErrorInfo("InputError", "not a PDF"), permanent=True)
    assert store.complete([Completion(job.id, claimed.attempt, outcome)]) == [JobState.FAILED]
    assert claim(store) == []


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    """Waiting and running jobs can be cancelled; finished ones and unknown ids say why not."""
    queued, _ = store.enqueue(NewJob("noop"))
    running, _ = store.enqueue(NewJob("noop"))
    store.cancel(queued.id)
    claimed = claim(store)
    assert [j.id for j in claimed] == [running.id]
    assert store.cancel(running.id).status == JobState.CANCELLED
    assert store.complete([Completion(running.id, 1, Succeeded())]) == [None]
    assert store.get(running.id).status == JobState.CANCELLED
    with pytest.raises(Conflict, match="only queued, scheduled or running"):
        store.cancel(queued.id)
    with pytest.raises(NotFound):
        store.cancel(__import__("uuid").uuid4())


def test_processor_reported_cancellation(store: JobStore) -> None:
    """A processor that stops on a cancel check ends the job cancelled."""
    job, _ = store.enqueue(NewJob("noop"))
    claimed = claim(store)[0]
    assert store.complete([Completion(job.id, claimed.attempt, Cancelled())]) == [
        JobState.CANCELLED
    ]


def test_retry_by_hand(store: JobStore) -> None:
    """A failed job can be queued again with fresh attempts, numbered on from the last one, and
    without the old error; a queued one cannot."""
    job, _ = store.enqueue(NewJob("noop", max_attempts=1))
    claimed = claim(store)[0]
    store.complete([Completion(job.id, claimed.attempt, Failed(ErrorInfo("E", "x")))])
    again = store.retry(job.id)
    assert again.status == JobState.QUEUED and again.error is None
    assert (again.attempt, again.max_attempts) == (1, 2)
    with pytest.raises(Conflict):
        store.retry(job.id)
    [second] = claim(store)
    assert second.attempt == 2
    store.complete([Completion(job.id, second.attempt, Failed(ErrorInfo("E", "y")))])
    third = store.retry(job.id)  # one attempt again, not one per attempt made so far
    assert (third.attempt, third.max_attempts) == (2, 3)


def test_a_cancelled_attempt_cannot_complete_the_retried_job(store: JobStore) -> None:
    """Worker A runs attempt 1; the job is cancelled and retried, and worker B claims it: A's
    late outcome is refused (its attempt number is not the running one), B's is recorded."""
    job, _ = store.enqueue(NewJob("noop"))
    [first] = store.claim("a", ["default"], 1, lease_seconds=LEASE)
    store.cancel(job.id)
    store.retry(job.id)
    [second] = store.claim("b", ["default"], 1, lease_seconds=LEASE)
    assert second.attempt != first.attempt
    late = Completion(job.id, first.attempt, Succeeded({"by": "a"}))
    assert store.complete([late]) == [None]
    assert store.get(job.id).status == JobState.RUNNING
    assert store.complete([Completion(job.id, second.attempt, Succeeded({"by": "b"}))]) == [
        JobState.SUCCEEDED
    ]
    assert store.get(job.id).result == {"by": "b"}


def test_idempotency_key_returns_the_same_job(store: JobStore) -> None:
    """The same key with the same request gives the same job, never a second one; with another
    request (other params, operation, queue, priority or input file) it is refused."""
    first, created = store.enqueue(NewJob("noop", params={"a": 1}, idempotency_key="order-7"))
    later = datetime.now(UTC) + timedelta(hours=1)
    again, created_again = store.enqueue(
        NewJob("noop", params={"a": 1}, idempotency_key="order-7", run_at=later)
    )
    other, _ = store.enqueue(NewJob("noop", idempotency_key="order-8"))
    assert created and not created_again
    assert again.id == first.id and other.id != first.id
    document = Artifact("ab" * 32, 3, "application/pdf", "a.pdf", "input")
    for changed in (
        NewJob("noop", params={"a": 2}, idempotency_key="order-7"),
        NewJob("ingest", params={"a": 1}, idempotency_key="order-7"),
        NewJob("noop", params={"a": 1}, queue="pdf", idempotency_key="order-7"),
        NewJob("noop", params={"a": 1}, priority=9, idempotency_key="order-7"),
        NewJob("noop", params={"a": 1}, idempotency_key="order-7", input_artifacts=(document,)),
    ):
        with pytest.raises(IdempotencyKeyReused, match="order-7"):
            store.enqueue(changed)
    assert store.stats().total(JobState.QUEUED) == 2


def test_release_gives_back_without_counting(store: JobStore) -> None:
    """A gracefully stopping worker's job returns to the queue with its attempt uncounted."""
    job, _ = store.enqueue(NewJob("noop"))
    claimed = claim(store)[0]
    assert store.release([(job.id, claimed.attempt)]) == 1
    back = store.get(job.id)
    assert back.status == JobState.QUEUED and back.attempt == 0
    assert claim(store)[0].attempt == 1


def test_prune_removes_old_finished_jobs_only(store: JobStore) -> None:
    """Pruning deletes finished jobs past retention with their timelines, nothing else."""
    old, _ = store.enqueue(NewJob("noop"))
    recent, _ = store.enqueue(NewJob("noop"))
    waiting, _ = store.enqueue(NewJob("noop"))
    long_ago = utcnow() - timedelta(days=10)
    for job in claim(store, 2):
        when = long_ago if job.id == old.id else None
        store.complete([Completion(job.id, job.attempt, Succeeded())], now=when)
    store.prune(timedelta(days=7))
    with pytest.raises(NotFound):
        store.get(old.id)
    assert store.events(old.id) == []
    assert store.get(recent.id).status == JobState.SUCCEEDED
    assert store.get(waiting.id).status == JobState.QUEUED


def test_queue_full_refuses_whole_batch(engine) -> None:  # type: ignore[no-untyped-def]
    """Past max_queued the submission is refused and nothing of it is stored."""
    store = JobStore(engine, max_queued=2)
    store.enqueue(NewJob("noop"))
    with pytest.raises(QueueFull, match="already holds 2 waiting jobs"):
        store.enqueue_many([NewJob("noop"), NewJob("noop")])
    assert store.stats().total(JobState.QUEUED) == 1


def test_list_pages_with_cursor(store: JobStore) -> None:
    """Cursor pagination walks every job once, newest first, and filters by status."""
    made = [store.enqueue(NewJob("noop"))[0].id for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = store.list_jobs(limit=3, cursor=cursor)
        seen += [j.id for j in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(made))
    claim(store, 2)
    assert len(store.list_jobs(status=JobState.RUNNING).items) == 2


def test_timeline_and_stats(store: JobStore) -> None:
    """Each transition leaves an event; stats count per queue and state."""
    job, _ = store.enqueue(NewJob("noop", queue="q"))
    claimed = claim(store, queues=("q",))[0]
    store.report_progress([(job.id, claimed.attempt, 0.5, "half")])
    store.complete([Completion(job.id, claimed.attempt, Succeeded({"ok": True}))])
    assert [e.type for e in store.events(job.id)] == ["queued", "running", "progress", "succeeded"]
    stats = store.stats()
    assert stats.counts == {"q": {"succeeded": 1}} and stats.finished_last_minute == 1


def test_position_counts_jobs_ahead_up_to_a_bound(store: JobStore) -> None:
    """Position follows priority and age, and stops counting at the bound given."""
    made = [store.enqueue(NewJob("noop"))[0] for _ in range(5)]
    urgent, _ = store.enqueue(NewJob("noop", priority=Priority.HIGH))
    assert store.position(urgent) == 0
    assert [store.position(job) for job in made] == [1, 2, 3, 4, 5]
    assert store.position(made[-1], most=3) == 3
    claimed = claim(store, 1)[0]
    assert store.position(store.get(claimed.id)) is None


def test_concurrent_enqueues_share_transactions_and_keep_their_own_jobs(store: JobStore) -> None:
    """Many threads enqueue at once: every job is stored once with its own params, a repeated
    idempotency key gives one job to both callers, and a full queue refuses only the jobs that
    do not fit."""

    def submit(n: int) -> tuple[int, str, bool]:
        key = "shared" if n % 10 == 0 else None
        params = {"n": -1} if key else {"n": n}  # the same request under the same key
        job, created = store.enqueue(NewJob("noop", params, idempotency_key=key))
        return job.params["n"], str(job.id), created

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(submit, range(100)))
    keyed = [r for n, r in enumerate(results) if n % 10 == 0]
    assert len({job_id for _, job_id, _ in keyed}) == 1
    assert sum(created for _, _, created in keyed) == 1
    others = [r for n, r in enumerate(results) if n % 10]
    assert [params_n for params_n, _, _ in others] == [n for n in range(100) if n % 10]
    assert all(created for _, _, created in others)
    assert store.stats().total(JobState.QUEUED) == 91

    full = JobStore(store.engine, max_queued=95)

    def submit_to_full(n: int) -> str:
        try:
            full.enqueue(NewJob("noop", {"n": n}))
            return "stored"
        except QueueFull:
            return "refused"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(submit_to_full, range(10)))
    assert outcomes.count("stored") == 4
    assert store.stats().total(JobState.QUEUED) == 95


def test_one_batch_with_a_key_twice_and_a_known_key(store: JobStore) -> None:
    """In one transaction: a key stored before gives its job back, a key given twice makes one
    job that both get, and the jobs without a key are each made, in the order given."""
    before, _ = store.enqueue(NewJob("noop", {"n": 0}, idempotency_key="old"))
    results = store.enqueue_many(
        [
            NewJob("noop", {"n": 1}, idempotency_key="new"),
            NewJob("noop", {"n": 2}),
            NewJob("noop", {"n": 0}, idempotency_key="old"),
            NewJob("noop", {"n": 1}, idempotency_key="new"),
            NewJob("noop", {"n": 5}),
        ]
    )
    assert [(job.params["n"], created) for job, created in results] == [
        (1, True),
        (2, True),
        (0, False),
        (1, False),
        (5, True),
    ]
    assert results[3][0].id == results[0][0].id and results[2][0].id == before.id
    assert store.stats().total(JobState.QUEUED) == 4
    with pytest.raises(IdempotencyKeyReused, match="'twice'"):  # all of the batch or none
        store.enqueue_many(
            [
                NewJob("noop", {"n": 6}, idempotency_key="twice"),
                NewJob("noop", {"n": 7}),
                NewJob("noop", {"n": 8}, idempotency_key="twice"),
            ]
        )
    assert store.stats().total(JobState.QUEUED) == 4


def test_enqueue_on_an_event_loop_tells_each_job_its_position(store: JobStore) -> None:
    """Jobs enqueued at once from an event loop are stored once each and told their place
    in their queue; an idempotent replay gets the stored job with its place, a scheduled job
    has every due job ahead of it, and a refused one raises in its caller alone."""
    ahead, _ = store.enqueue(NewJob("noop", {"n": -1}))

    async def submit_all() -> list[Any]:
        news = [NewJob("noop", {"n": n}) for n in range(5)]
        news += [
            NewJob("noop", {"n": -1}, idempotency_key="k"),
            NewJob("noop", {"n": -1}, idempotency_key="k"),
            NewJob("noop", run_at=utcnow() + timedelta(hours=1)),
            NewJob("noop", {"n": -2}, idempotency_key="k"),
        ]
        return list(
            await asyncio.gather(
                *(store.enqueue_async(new) for new in news), return_exceptions=True
            )
        )

    outcomes = asyncio.run(submit_all())
    made = outcomes[:5]
    assert all(created for _, created, _ in made)
    assert sorted(position for _, _, position in made) == [1, 2, 3, 4, 5]
    for job, _, position in made:
        assert store.position(job) == position  # as read now: nothing was claimed meanwhile
    keyed, replay = outcomes[5], outcomes[6]
    assert keyed[0].id == replay[0].id and keyed[1] != replay[1]
    assert keyed[2] == replay[2] == store.position(keyed[0])
    scheduled, _, place = outcomes[7]
    assert scheduled.status is JobState.SCHEDULED and place == 7 == store.position(scheduled)
    assert isinstance(outcomes[8], IdempotencyKeyReused)
    assert store.stats().total(JobState.QUEUED) == 7 and store.position(ahead) == 0
