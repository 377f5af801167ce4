"""A gateway in miniature: pick an upstream account per request from the scheduling cache.

    .venv/bin/uvicorn gateway:app --app-dir examples

It reads the system `sched run` (`make run`) runs, found as `sched` finds it (its
.run/system.json), or the servers of SCHED_REDIS_URL and SCHED_DATABASE_URL, with a
worker running (``celery -A tasks worker -Q rebuild,outbox,last_used``).

- ``GET /pick?group=0&platform=openai[&force=true][&exclude=7&exclude=9]``: the least
  recently used schedulable account of the best priority, by ``pick_async`` from the
  index the process's near cache keeps of the bucket (no database read, no scan),
  awaited without blocking the event loop; the use is recorded on the way (batched, no
  Celery message per request). ``exclude``: accounts this request already tried (100 at
  most). 422 naming the bad value for a query that is not one (a group that is not an
  integer >= 0, a platform outside 1-64 characters, a force that is not a boolean), 400
  for a platform not in ``SCHED_PLATFORMS``, 503 when the bucket has no schedulable
  account left. Served by a plain Starlette route that checks the query itself and
  answers bytes encoded once: FastAPI's validation and response model cost several
  times the pick.
- ``GATEWAY_PICK=scan``: ``/pick`` the way this example picked before ``pick_async``,
  kept for comparison (``python -m benchmarks gateway`` loads both): a FastAPI route with
  a response model, the whole schedulable list by ``list_schedulable_async``, two
  ``min()`` scans over it (best priority, then least recently used, this process's own
  recent picks laid over the cache's times), the use recorded with
  ``record_last_used``. Its cost grows with the bucket; the default
  (``GATEWAY_PICK=index``) does not. Accounts marked with ``mark_unschedulable`` are
  left out by ``pick_async`` only.
- ``GET /healthz``: 200 when Redis answers, else 503 with a one-line JSON reason.
- ``POST /admin/accounts/{id}``: an example of an admin hook, not an admin API: change an
  account's status, admin switch, priority or rate limit in the database, then enqueue
  the rebuild of its buckets. Behind ``Authorization: Bearer <GATEWAY_ADMIN_TOKEN>``;
  refused while GATEWAY_ADMIN_TOKEN is unset.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from cache import MAX_ID, Account, InvalidBucket, brief
from tasks import list_schedulable_async, pick_async, record_last_used, request_rebuild, runtime
from tasks.buckets import account_buckets, bucket_for, check_platform
from tasks.ops.errors import one_line, scrub
from tasks.ops.reach import use_running_system
from tasks.source import SqlWriter
from tasks.web import aio

logger = logging.getLogger(__name__)

EPOCH = datetime.min.replace(tzinfo=UTC)
# Own picks are remembered until the cache surely has them (touches are flushed about
# every half second); then the cache's time is as new and the entry can go.
LOCAL_MEMORY = timedelta(seconds=10)


class LeastRecentlyUsed:
    """The scan (``GATEWAY_PICK=scan``): the least recently used account of the best
    priority, from the whole list.

    Touches reach the cache in batches, so requests served by this process within one
    flush would all see the same least-recently-used account; the picker merges its
    own recent picks with the cache's times to spread them at once. Other processes
    see them after the next flush.
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._picked: dict[int, datetime] = {}
        self._last = EPOCH

    def pick(
        self, accounts: Sequence[Account], exclude: Collection[int] = ()
    ) -> tuple[Account, datetime] | None:
        """The account to use and the time of this use; None when there is none."""
        if exclude:
            accounts = [account for account in accounts if account.id not in exclude]
        if not accounts:
            return None
        with self._lock:
            best = min(account.priority for account in accounts)
            tier = [account for account in accounts if account.priority == best]
            chosen = min(tier, key=lambda a: (self._used(a), a.id))
            # Strictly increasing, so two picks in one clock tick still order.
            now = max(self._clock(), self._last + timedelta(microseconds=1))
            self._last = now
            self._picked[chosen.id] = now
            if len(self._picked) > 10_000:
                self._forget(now - LOCAL_MEMORY)
            return chosen, now

    def _used(self, account: Account) -> datetime:
        return max(account.last_used_at or EPOCH, self._picked.get(account.id, EPOCH))

    def _forget(self, before: datetime) -> None:
        self._picked = {k: v for k, v in self._picked.items() if v >= before}


class Picked(BaseModel):
    """What the gateway tells about the account it chose: never a credential."""

    id: int
    name: str
    platform: str
    type: str
    priority: int
    previous_use: datetime | None
    bucket: str


class AdminChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "disabled", "error"] | None = None
    schedulable: bool | None = None
    priority: int | None = Field(default=None, ge=0)
    rate_limited_for_seconds: float | None = Field(default=None, gt=0, le=86_400)
    clear_rate_limit: bool = False


class GatewaySettings(BaseSettings):
    """The example's own settings, apart from the system's SCHED_* ones."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    # The bearer token of the admin endpoint; unset, the endpoint refuses every call.
    admin_token: SecretStr | None = None
    # How /pick chooses: pick_async's index, or the scan it replaced (for comparison).
    pick: Literal["index", "scan"] = "index"


def require_admin(authorization: str | None = Header(default=None)) -> None:
    token = GatewaySettings().admin_token
    if token is None or not token.get_secret_value():
        raise HTTPException(
            status_code=403, detail="admin endpoint disabled: set GATEWAY_ADMIN_TOKEN to enable it"
        )
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="admin endpoint: Authorization: Bearer <GATEWAY_ADMIN_TOKEN> needed",
            headers={"WWW-Authenticate": "Bearer"},
        )


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # No SCHED_* URL set: the system `sched run` runs, as every `sched` command finds it.
    use_running_system(required=False)
    yield
    await aio.aclose()


app = FastAPI(title="sched gateway example", lifespan=lifespan)
# Read once: /pick asks for every request.
pick_mode = GatewaySettings().pick
picker = LeastRecentlyUsed()


@app.get("/healthz", response_model=None)
def healthz() -> dict[str, str] | JSONResponse:
    try:
        runtime.get_cache().ping()
    except Exception as exc:  # down is an answer here, not a crash
        reason = scrub(one_line(f"redis: {type(exc).__name__}: {exc}", 300))
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": reason})
    return {"status": "ok"}


MAX_EXCLUDED = 100
# What FastAPI takes for a boolean in a query.
TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


class BadQuery(ValueError):
    """A query /pick cannot take; its message names the bad value."""


def pick_query(query: QueryParams) -> tuple[int, str, bool, tuple[int, ...]]:
    """``(group, platform, force, exclude)`` of a /pick query; :class:`BadQuery` naming
    the first bad value (unknown parameters are ignored)."""
    group = _whole("group", query.get("group"), MAX_ID)
    platform = query.get("platform")
    if platform is None:
        raise BadQuery("platform: missing")
    if not 1 <= len(platform) <= 64:
        raise BadQuery(f"platform: 1 to 64 characters, got {brief(platform, 80)}")
    force = query.get("force")
    if force is not None and force.lower() not in TRUE | FALSE:
        raise BadQuery(f"force: a boolean (true or false), got {brief(force, 80)}")
    excluded = query.getlist("exclude")
    if len(excluded) > MAX_EXCLUDED:
        raise BadQuery(f"exclude: at most {MAX_EXCLUDED} accounts, got {len(excluded)}")
    exclude = tuple(_whole("exclude", value, MAX_ID) for value in excluded)
    return group, platform, force is not None and force.lower() in TRUE, exclude


def _whole(name: str, raw: str | None, most: int) -> int:
    if raw is None:
        raise BadQuery(f"{name}: missing")
    if not raw.isdecimal() or len(raw) > 19 or int(raw) > most:
        raise BadQuery(f"{name}: an integer from 0 to {most}, got {brief(raw, 80)}")
    return int(raw)


JSON = "application/json"


def failed(status: int, detail: str) -> Response:
    return Response(msgspec.json.encode({"detail": detail}), status, media_type=JSON)


async def pick_route(request: Request) -> Response:
    """``GET /pick`` with the pick API (the default)."""
    try:
        group, platform, force, exclude = pick_query(request.query_params)
    except BadQuery as exc:
        return failed(422, str(exc))
    try:
        account = await pick_async(group, platform, has_force=force, exclude=exclude)
    except InvalidBucket as exc:
        # An unknown platform is the caller's mistake, not an outage: 400, naming the
        # configured ones (UnknownPlatform is an InvalidBucket).
        return failed(400, str(exc))
    if account is None:
        return failed(503, f"no schedulable {platform} account in group {group}")
    picked = {
        "id": account.id,
        "name": account.name,
        "platform": account.platform,
        "type": account.type,
        "priority": account.priority,
        "previous_use": account.last_used_at,
        "bucket": str(bucket_for(group, platform, force, runtime.settings())),
    }
    return Response(msgspec.json.encode(picked), media_type=JSON)


async def scan_route(
    group: int = Query(ge=0, description="group id, 0 for accounts in no group"),
    platform: str = Query(min_length=1, max_length=64),
    force: bool = False,
    exclude: Annotated[list[int] | None, Query(max_length=100)] = None,
) -> Picked:
    """``GET /pick`` with ``GATEWAY_PICK=scan``: the route as it was before the pick API."""
    try:
        check_platform(platform, runtime.settings())
        account = await scan_pick(group, platform, force, exclude or ())
    except InvalidBucket as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    if account is None:
        detail = f"no schedulable {platform} account in group {group}"
        raise HTTPException(status_code=503, detail=detail)
    return Picked(
        id=account.id,
        name=account.name,
        platform=account.platform,
        type=account.type,
        priority=account.priority,
        previous_use=account.last_used_at,
        bucket=str(bucket_for(group, platform, force, runtime.settings())),
    )


if pick_mode == "scan":
    app.get("/pick", response_model=Picked)(scan_route)
else:
    app.add_route("/pick", pick_route, methods=["GET"])


def openapi() -> dict[str, Any]:
    """FastAPI's schema, with the plain /pick route described as the scan route is
    (FastAPI lists only its own routes)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        if pick_mode != "scan":
            documented = FastAPI(title=app.title)
            documented.get("/pick", response_model=Picked)(scan_route)
            described = get_openapi(title=app.title, version=app.version, routes=documented.routes)
            schema["paths"]["/pick"] = described["paths"]["/pick"]
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                described.get("components", {}).get("schemas", {})
            )
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = openapi  # type: ignore[method-assign]


async def scan_pick(
    group: int, platform: str, force: bool, exclude: Collection[int]
) -> Account | None:
    """``GATEWAY_PICK=scan``: the list, two ``min()`` scans, the use recorded."""
    accounts = await list_schedulable_async(group, platform, has_force=force)
    chosen = picker.pick(accounts, exclude)
    if chosen is None:
        return None
    account, used_at = chosen
    record_last_used(account.id, used_at)
    return account


@app.post(
    "/admin/accounts/{account_id}",
    tags=["example only"],
    summary="Example admin hook (bearer GATEWAY_ADMIN_TOKEN): change an account",
    dependencies=[Depends(require_admin)],
)
def change_account(account_id: int, change: AdminChange) -> dict[str, Any]:
    """An example, not an admin API: no audit, one shared token. Changes the account in
    the database and asks for the rebuild of its buckets."""
    from tasks.source import AccountNotFound

    changes = change.model_dump(
        exclude_none=True, exclude={"rate_limited_for_seconds", "clear_rate_limit"}
    )
    now = datetime.now(UTC)
    if change.rate_limited_for_seconds is not None:
        changes["rate_limited_at"] = now
        changes["rate_limit_reset_at"] = now + timedelta(seconds=change.rate_limited_for_seconds)
    elif change.clear_rate_limit:
        changes.update(rate_limited_at=None, rate_limit_reset_at=None)
    if not changes:
        raise HTTPException(status_code=422, detail="no change given")
    source: Any = runtime.get_source()
    try:
        account = SqlWriter(source).update_account(account_id, **changes)
    except AccountNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    # The outbox poller would rebuild these too; asking now makes the change visible
    # in the time of one rebuild instead of one poll interval later.
    buckets = sorted(str(b) for b in account_buckets(account, rules=runtime.settings()))
    for bucket in buckets:
        request_rebuild(bucket)
    return {"id": account.id, "revision": account.revision, "rebuilds_requested": buckets}
