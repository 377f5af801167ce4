"""What the scripts answer, by name: each status a script returns as an integer."""

from __future__ import annotations

from enum import IntEnum


class Stage(IntEnum):
    """stage_snapshot.lua and activate_snapshot.lua."""

    UNRESERVED = -1  # the version was never reserved
    STALE = 0  # a version as new or newer is active (or was, before a retirement)
    DONE = 1  # staged (stage) or activated (activate)
    MOVED = 2  # activate: another version is active than the caller expected
    INCOMPLETE = -2  # activate: the staged version lost ids (it expired)
    TAKEN = -3  # stage: another writer holds the same version number (Redis lost its state)


class Patch(IntEnum):
    """patch_account.lua."""

    NOT_LISTED = 0  # the version does not list the account, or is gone
    UNCHANGED = 1  # it holds this revision or a newer one already
    STAGED = 2  # changed a version that is not the active one
    PUSHED = 3  # changed the active version, and told near caches


class Place(IntEnum):
    """place_account.lua."""

    IDLE = 0  # the bucket has no active version
    MOVED = 1  # another version is active than the caller named
    STALE = 2  # the version holds a newer revision, or a removal noted after it
    PLACED = 3  # put before the first follower the version lists
    APPENDED = 4  # put last: the version lists none of the followers given


class Retire(IntEnum):
    """retire_bucket.lua."""

    IDLE = 0  # no active version
    RETIRED = 1
    MOVED = 2  # another version is active than the caller expected
