"""How a job reaches a worker: the local process pool, or Celery."""
