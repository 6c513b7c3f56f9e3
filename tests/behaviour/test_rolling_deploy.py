"""A rolling deploy from the original gcache: its pods and ours on one Redis and prefix.

The original (2.0.5, the release the README follows, and 3.0.0, its latest) runs in its own venv
from PyPI (``tests._pypi``), a pod in a subprocess (``_original_deploy_worker.py``); ours runs
with ``GCacheConfig(legacy_compat=True)``. In both directions an invalidation by one library
makes the other serve the new value, the two share entries (one computes, the other hits), and
neither meets ``WRONGTYPE`` or any other error.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from gcache import CacheLayer, Envelope, GCache, GCacheKeyConfig, JsonSerializer
from tests._pypi import original_python
from tests.conftest import sample

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "urn:deploy"
WORKER = Path(__file__).with_name("_original_deploy_worker.py")
REMOTE_ONLY = GCacheKeyConfig(ttl_sec={CacheLayer.REMOTE: 300}, ramp={CacheLayer.REMOTE: 100})
ROUNDS = 12


class OriginalPod:
    """The original library's process, driven one JSON command at a time."""

    def __init__(self, version: str, url: str) -> None:
        self.process = subprocess.Popen(
            [str(original_python(version)), "-I", str(WORKER), url, PREFIX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the original's pod exited (code {self.process.poll()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def read(self, use_case: str, uid: str) -> tuple[Any, int]:
        answer = self.ask(op="read", use_case=use_case, id=uid)
        return answer["value"], answer["runs"]

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture(params=["2.0.5", "3.0.0"])
def original(request: pytest.FixtureRequest, redis_admin_url: str) -> Iterator[OriginalPod]:
    # The original runs SETEX and FLUSHALL, which the application login may not: the admin's.
    pod = OriginalPod(request.param, redis_admin_url)
    yield pod
    pod.close()


class OursPod:
    """Our library with legacy_compat, its use cases named as the original's pod names them."""

    def __init__(self, cache: GCache, database: redis.Redis, is_async: bool, use_cases: list[str]) -> None:
        self.cache, self.is_async = cache, is_async
        self.runs = dict.fromkeys(use_cases, 0)
        self.functions: dict[str, Callable[..., Any]] = {}
        for use_case in use_cases:
            options: dict[str, Any] = {"track_for_invalidation": use_case != "GetName"}
            if use_case == "GetProfile":
                options.update(serializer=JsonSerializer(), envelope=Envelope.JSON)
            self.functions[use_case] = self._function(database, use_case, options)

    def _function(self, database: redis.Redis, use_case: str, options: dict[str, Any]) -> Callable[..., Any]:
        def value(uid: str) -> dict[str, Any]:
            self.runs[use_case] += 1
            raw = database.get(f"db:{uid}")
            return {"id": uid, "version": raw.decode() if isinstance(raw, bytes) else raw}

        decorate = self.cache.cached(
            key_type="user", id_arg="uid", use_case=use_case, default_config=REMOTE_ONLY, **options
        )
        if self.is_async:

            async def read_async(uid: str) -> dict[str, Any]:
                return value(uid)

            return decorate(read_async)

        def read_sync(uid: str) -> dict[str, Any]:
            return value(uid)

        return decorate(read_sync)

    async def read(self, use_case: str, uid: str) -> tuple[Any, int]:
        with self.cache.enable():
            function = self.functions[use_case]
            result = await function(uid) if self.is_async else function(uid)
        return result, self.runs[use_case]

    async def invalidate(self, uid: str) -> None:
        if self.is_async:
            await self.cache.ainvalidate("user", uid)
        else:
            self.cache.invalidate("user", uid)


def _past_the_watermark() -> None:
    # Watermarks are milliseconds: a read in the invalidation's millisecond is refused its write
    # (conservatively); the next millisecond's is not. Not a wait for another party.
    time.sleep(0.003)


@pytest.fixture
def ours(
    make_cache: Callable[..., GCache], redis_client: redis.Redis, is_async: bool, original: OriginalPod
) -> OursPod:
    cache = make_cache(legacy_compat=True, urn_prefix=PREFIX)
    return OursPod(cache, redis_client, is_async, original.ask(op="errors")["use_cases"])


@pytest.mark.parametrize("use_case", ["GetUser", "GetProfile"])
async def test_invalidations_cross_both_ways_and_entries_are_shared(
    use_case: str,
    original: OriginalPod,
    ours: OursPod,
    redis_client: redis.Redis,
    registry: CollectorRegistry,
) -> None:
    if use_case not in ours.functions:
        pytest.skip("the JSON envelope is the original 3.0's")
    uid = "u1"
    for round in range(ROUNDS):
        version = f"v{round}"
        redis_client.set(f"db:{uid}", version)
        ours_first = round % 4 in (0, 1)
        if round % 2:
            original.ask(op="invalidate", id=uid)
        else:
            await ours.invalidate(uid)
        _past_the_watermark()
        expected = {"id": uid, "version": version}
        if ours_first:
            value, _ = await ours.read(use_case, uid)
            assert value == expected, f"round {round}: ours served {value}"
            other, other_runs = original.read(use_case, uid)
            assert other == expected, f"round {round}: the original served {other}"
            again, _ = await ours.read(use_case, uid)
            assert again == expected
        else:
            other, other_runs = original.read(use_case, uid)
            assert other == expected, f"round {round}: the original served {other}"
            value, _ = await ours.read(use_case, uid)
            assert value == expected, f"round {round}: ours served {value}"
            again, runs_again = original.read(use_case, uid)
            assert (again, runs_again) == (expected, other_runs)
    # Each round computed once, by whichever library read first: the other hit its entry.
    assert ours.runs[use_case] + other_runs == ROUNDS
    assert ours.runs[use_case] == ROUNDS // 2
    assert original.ask(op="errors")["errors"] == []
    assert sample(registry, "gcache_error_counter_total") == 0
    watermark = redis_client.type("{" + f"{PREFIX}:user:{uid}" + "}#watermark")
    assert watermark == b"string"  # the original's, still: its pods read it with MGET


async def test_untracked_entries_are_shared(
    original: OriginalPod, ours: OursPod, redis_client: redis.Redis
) -> None:
    redis_client.set("db:u2", "first")
    value, runs = await ours.read("GetName", "u2")
    assert (value, runs) == ({"id": "u2", "version": "first"}, 1)
    assert original.read("GetName", "u2") == ({"id": "u2", "version": "first"}, 0)
    redis_client.set("db:u3", "third")
    assert original.read("GetName", "u3") == ({"id": "u3", "version": "third"}, 1)
    assert await ours.read("GetName", "u3") == ({"id": "u3", "version": "third"}, 1)
    assert redis_client.exists(f"{PREFIX}:user:u2#GetName", f"{PREFIX}:user:u3#GetName") == 2
    assert original.ask(op="errors")["errors"] == []
