"""Shared fixtures: a real redis-server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import settings

from m2_code_store.embedded import EmbeddedServerError
from simulators.redis_server import RedisServer, free_port

# No per-example deadline: on a loaded 2-core runner one slow example (200 ms by default) failed a
# property test as DeadlineExceeded or Flaky, which says nothing about the property.
settings.register_profile("repository", deadline=None, print_blob=True)
settings.load_profile("repository")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; each test gets it flushed via ``redis_url``."""
    data_dir = tmp_path_factory.mktemp("redis")
    for attempt in range(5):  # another process may take the port between free_port() and the bind
        try:
            server = RedisServer(port=free_port(), data_dir=data_dir).start()
            break
        except EmbeddedServerError:
            if attempt == 4:
                raise
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on the emptied session server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()
