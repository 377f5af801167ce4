# One image for every Python service of docker-compose.yml: db-init, worker, beat, flower.
# Each service passes its command; they are the same commands that work outside compose
# (`sched db init`, `celery -A tasks worker ...`, `celery -A tasks beat ...`, `sched flower`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # celeryconfig.py is a top-level module next to the packages; `celery -A tasks` and
    # the `sched` script import it from here whatever the working directory.
    PYTHONPATH=/app

WORKDIR /app

# Exactly what was tested: the lock's export for the services (the runtime with the
# postgres and flower extras), every file checked against its hash, nothing resolved
# here; then the project itself, without dependencies.
COPY requirements/build.txt requirements/image.txt ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/build.txt \
 && pip install --require-hashes --no-deps -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY cache ./cache
COPY tasks ./tasks
COPY celeryconfig.py ./
RUN pip install --no-deps --no-build-isolation ".[postgres,flower]"

# No service needs root; beat keeps its schedule file in /tmp.
RUN useradd --system --uid 10001 --home-dir /app sched
USER sched

CMD ["sched", "--help"]
