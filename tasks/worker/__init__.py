"""The Celery tasks: rebuilds, the outbox poller, last-use flushing, and their one retry
policy. A worker imports these modules through :data:`tasks.celery.app`'s ``include``."""
