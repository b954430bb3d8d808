"""RedisRateLimiter on a real 3-node Redis Cluster (started by the test on loopback).

A cluster client has no one connection pool: the limiter sends its script through the
client's command API, which routes the key to the node holding its slot and follows
MOVED/ASK redirections -- also while the key's slot moves to another node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from _loop_lag import LoopLag
from _redis_servers import cli, redis_cluster
from redis.asyncio.cluster import RedisCluster

from rtc_segment._credentials import Credentials
from rtc_segment._redis import RedisRateLimiter
from rtc_segment.testing import max_in_window


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    with redis_cluster(3) as ports:
        yield ports


@pytest.fixture
async def cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    await client.initialize()
    yield client
    await client.aclose()


async def acquire_times(limiter: RedisRateLimiter, count: int) -> list[float]:
    went: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        went.append(arrived := asyncio.get_running_loop().time())
        # The send "arrives" as it goes: its round trip is the time since then.
        limiter.observe_round_trip(asyncio.get_running_loop().time() - arrived)

    await asyncio.gather(*(one() for _ in range(count)))
    return went


def node_of(ports: list[int], key: str) -> tuple[int, str]:
    """The port and node id holding ``key``'s slot."""
    slot = int(cli(ports[0], "cluster", "keyslot", key))
    for line in cli(ports[0], "cluster", "nodes").splitlines():
        node_id, address, *_, ranges = line.split(maxsplit=8)
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        for part in ranges.split():
            if part.startswith("["):
                continue
            low, _, high = part.partition("-")
            if int(low) <= slot <= int(high or low):
                return port, node_id
    raise AssertionError(f"no node holds slot {slot}")


async def test_a_cluster_client_is_accepted_and_holds_the_ceiling(
    cluster: RedisCluster, loop_lag: LoopLag
) -> None:
    qps = 100.0
    credentials = Credentials("AKLTclusteraccount", "secret")
    limiter = RedisRateLimiter(cluster, key=RedisRateLimiter.key_for(credentials), qps=qps)
    went = await acquire_times(limiter, 150)
    assert max_in_window(went, loop_lag.window()) <= qps  # (tests/_loop_lag.py)
    assert limiter.stats.reservations == 150
    assert limiter.stats.failures == 0
    assert await cluster.exists(limiter.key) == 1


def test_an_accounts_action_keys_share_one_cluster_slot() -> None:
    credentials = Credentials("AKLTclusteraccount", "secret")
    key = RedisRateLimiter.key_for(credentials)
    # The fingerprint is a hash tag: Redis Cluster hashes only what is inside {...}.
    assert f"{{{credentials.account_fingerprint}}}" in key
    tagged = {RedisRateLimiter.key_for(credentials, action) for action in ("A", "B", "C")}
    assert len({key.split("{", 1)[1].split("}", 1)[0] for key in tagged}) == 1


async def test_the_key_moving_to_another_node_mid_run_is_followed(
    cluster: RedisCluster, cluster_ports: list[int], loop_lag: LoopLag
) -> None:
    qps = 100.0
    key = "{resharded}:GetSegmentTask"
    limiter = RedisRateLimiter(cluster, key=key, qps=qps)
    before = await acquire_times(limiter, 40)
    source_port, source_id = node_of(cluster_ports, key)
    target_port = next(port for port in cluster_ports if port != source_port)
    _, target_id = node_of_port(cluster_ports, target_port)
    slot = cli(source_port, "cluster", "keyslot", key).strip()
    # The documented resharding steps for one slot, while the limiter keeps going.
    moving = asyncio.create_task(acquire_times(limiter, 60))
    # (In threads: the limiter's callers run on this loop meanwhile.)
    await asyncio.to_thread(cli, target_port, "cluster", "setslot", slot, "importing", source_id)
    await asyncio.to_thread(cli, source_port, "cluster", "setslot", slot, "migrating", target_id)
    await asyncio.to_thread(
        cli, source_port, "migrate", "127.0.0.1", str(target_port), "", "0", "5000", "keys", key
    )
    for port in cluster_ports:
        await asyncio.to_thread(cli, port, "cluster", "setslot", slot, "node", target_id)
    assert not moving.done()  # the move happened while reservations went on
    during = await moving
    after = await acquire_times(limiter, 40)
    assert node_of(cluster_ports, key)[0] == target_port
    went = before + during + after
    assert len(went) == 140
    assert limiter.stats.failures == 0
    assert max_in_window(went, loop_lag.window()) <= qps  # (tests/_loop_lag.py)


def node_of_port(ports: list[int], wanted: int) -> tuple[int, str]:
    for line in cli(ports[0], "cluster", "nodes").splitlines():
        node_id, address = line.split()[:2]
        if int(address.split("@")[0].rsplit(":", 1)[1]) == wanted:
            return wanted, node_id
    raise AssertionError(f"no node on port {wanted}")


async def test_a_stale_view_of_the_cluster_costs_one_redirection_not_a_reset(
    cluster: RedisCluster, cluster_ports: list[int], loop_lag: LoopLag
) -> None:
    # The client believes the key lives on another node (a view from before a move). Had
    # the first burst of reservations gone out together, each would come back MOVED, and
    # after `reinitialize_steps` of them redis-py closes every connection under the
    # commands still in flight. The first reservation goes alone and corrects the view.
    qps = 200.0
    key = "{stale-view}:GetSegmentTask"
    holder, _ = node_of(cluster_ports, key)
    other = next(port for port in cluster_ports if port != holder)
    slot = int(cli(cluster_ports[0], "cluster", "keyslot", key))
    wrong = cluster.get_node(host="127.0.0.1", port=other)
    assert wrong is not None
    cluster.nodes_manager.slots_cache[slot] = [wrong]
    before = moved_answers(other)
    limiter = RedisRateLimiter(cluster, key=key, qps=qps)
    went = await acquire_times(limiter, 40)
    assert len(went) == 40
    # Counted by the node that was asked wrongly (its error replies by kind), whatever
    # redis-py's version does with them.
    assert moved_answers(other) - before == 1
    assert limiter.stats.failures == 0
    assert max_in_window(went, loop_lag.window()) <= qps  # (tests/_loop_lag.py)


def moved_answers(port: int) -> int:
    """How many MOVED redirections the node on ``port`` has answered (INFO errorstats)."""
    for line in cli(port, "info", "errorstats").splitlines():
        if line.startswith("errorstat_MOVED:"):
            return int(line.split("count=")[1].split(",")[0])
    return 0


async def test_the_cluster_client_breaking_under_reservations_loses_none(
    cluster: RedisCluster, loop_lag: LoopLag
) -> None:
    # redis-py closes every connection of a cluster client for a topology refresh (after
    # MOVED answers, on CLUSTERDOWN) while other commands are in flight on them; those fail
    # inside redis-py (AttributeError: 'NoneType' object has no attribute 'writelines').
    # The limiter takes that for a lost connection: retried, never raised to a caller.
    qps = 200.0
    limiter = RedisRateLimiter(cluster, key="{breaking}:GetSegmentTask", qps=qps)
    await acquire_times(limiter, 1)  # the first reservation has settled the view
    reservations = asyncio.create_task(acquire_times(limiter, 120))
    for _ in range(15):  # over the first half second of the run
        await asyncio.sleep(0.03)
        await cluster.aclose()  # what redis-py itself does for a refresh
    assert not reservations.done()
    went = await reservations
    assert len(went) == 120
    assert max_in_window(went, loop_lag.window()) <= qps  # (tests/_loop_lag.py)
