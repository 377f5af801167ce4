"""The threaded and asyncio near caches stay twins: same methods in the same order, and
the same source in every method that is not about threads or event loops, up to
``async``/``await`` and the name of the Redis side they wrap."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from types import ModuleType

import pytest

from cache import aio, near
from cache.aio import AsyncNearCache
from cache.near import NearCache

# A thread per process against a task per event loop: these may differ, and only these.
LIFECYCLE = {"__init__", "_subscribe", "_stopped", "_pause", "_ensure_started", "close"}


def method_names(cls: type) -> list[str]:
    names = [name for name, value in vars(cls).items() if inspect.isfunction(value)]
    return ["close" if name == "aclose" else name for name in names]


def normalised(cls: type, name: str) -> str:
    source = textwrap.dedent(inspect.getsource(getattr(cls, name)))
    source = re.sub(r'\)( -> [^:]+)?:\n\s+"""(.|\n)*?"""\n', r")\1:\n", source, count=1)
    source = source.replace("async def ", "def ").replace("await ", "")
    source = source.replace("self.reader", "self.cache").replace(".aclose()", ".close()")
    # A signature ruff wraps at another width once ``async`` is in it.
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", re.sub(r"\s+", " ", source)))


def test_the_drivers_have_the_same_methods_in_the_same_order() -> None:
    assert method_names(NearCache) == method_names(AsyncNearCache)


@pytest.mark.parametrize("name", sorted(set(method_names(NearCache)) - LIFECYCLE))
def test_each_shared_method_is_the_same_code(name: str) -> None:
    assert normalised(NearCache, name) == normalised(AsyncNearCache, name)


@pytest.mark.parametrize("module", [near, aio])
def test_no_driver_has_a_constant_of_its_own(module: ModuleType) -> None:
    """Retry counts, intervals and limits live in cache.nearcore (or cache.keys)."""
    tree = ast.parse(inspect.getsource(module))
    constants = [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id.isupper()
    ]
    assert constants == []


@pytest.mark.parametrize("cls", [NearCache, AsyncNearCache])
def test_no_driver_reaches_into_the_state(cls: type) -> None:
    """The state changes only through its locked methods, never a field set from outside."""
    source = inspect.getsource(cls)
    assert not re.findall(r"self\.state\.\w+\s*=[^=]", source)
    assert not re.findall(r"self\.state\._", source)
