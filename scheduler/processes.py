"""``dt-scheduler serve --processes N``: N server processes on one port, under one supervisor.

Each process is a full replica, exactly as separate replicas are (its own Redis connections,
promoters, relays, work streams and health service: the design already runs N replicas on one
Redis). They listen on the same port with SO_REUSEPORT, and the kernel spreads incoming connections
over them: connections, not calls (a gRPC channel stays with the process that accepted it).

The supervisor (the process the pod runs) serves nothing itself. It

- checks the ports once (a taken port: one line, exit code 2) and picks the port when --port is 0;
- starts the processes (multiprocessing's "spawn": fresh interpreters handed the Config), each in a
  process group of its own so that a terminal's Ctrl-C reaches the supervisor alone;
- prints ``READY host:port`` once every process serves;
- forwards SIGTERM and SIGINT to them and waits while each drains as a single replica does (a second
  signal, forwarded too, stops them at once); exit code 0 when they all ended cleanly;
- when a process ends unexpectedly, stops the others and exits 1, so that Kubernetes restarts the
  container and counts it (a process restarted in place would hide a crash loop, and the pod would
  stay ready at part of its capacity meanwhile);
- with --metrics-port, serves the metrics of every process merged (prometheus_client's multiprocess
  mode, in a temporary directory it creates and removes).

A process whose supervisor is gone (SIGKILL) sees its pipe close and shuts down as on SIGTERM.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from . import logs, ports
from .config import Config

log = logging.getLogger(__name__)

# How a process may end after the supervisor forwarded a signal: its own clean exit, or killed by the
# signal when it came before the process had installed its handlers (while it was still importing).
CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)


def supervise(cfg: Config) -> int:
    """Run ``cfg.processes`` server processes on one port until a signal; the exit code."""
    problem = ports.taken(cfg)
    if problem:
        return _refuse(problem)
    port = cfg.port or ports.pick_free(cfg.host)
    metrics_dir = None
    if cfg.metrics_port is not None:
        try:
            metrics_dir = tempfile.mkdtemp(prefix="dt-metrics-")
        except OSError as exc:
            return _refuse(f"--metrics-port (DT_METRICS_PORT) with --processes (DT_PROCESSES): no directory for the "
                           f"metrics of the processes ({exc.strerror}): set TMPDIR to a writable directory")
        # Read by prometheus_client when each process imports it: their metrics go to files there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return asyncio.run(Supervisor(cfg, port, metrics_dir).run())
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _refuse(line: str) -> int:
    logs.fatal(line)
    return 2


@dataclasses.dataclass
class _Child:
    index: int  # 1..N, the "process" of its log lines
    process: BaseProcess
    pipe: Connection  # it reports ("ready", port) or ("error", line); closed when it ends
    ready: bool = False
    error: str | None = None  # the one line of a startup error it reported


class Supervisor:
    def __init__(self, cfg: Config, port: int, metrics_dir: str | None) -> None:
        self.cfg = cfg
        self.port = port
        self.metrics_dir = metrics_dir
        self.children: list[_Child] = []
        self.events: asyncio.Queue[tuple[str, _Child]] = asyncio.Queue()
        self.stopping = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # honoured from now on
            loop.add_signal_handler(sig, self._on_signal, sig)
        metrics = None
        if self.metrics_dir is not None:
            try:
                metrics = _serve_merged_metrics(self.cfg)
            except OSError as exc:
                return _refuse(f"--metrics-port (DT_METRICS_PORT): cannot listen on {self.cfg.host}:"
                               f"{self.cfg.metrics_port}: {exc.strerror}")
        try:
            self._start_children(loop)
            return await self._watch()
        finally:
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()

    def _start_children(self, loop: asyncio.AbstractEventLoop) -> None:
        context = multiprocessing.get_context("spawn")
        for index in range(1, self.cfg.processes + 1):
            here, there = context.Pipe()
            cfg = dataclasses.replace(self.cfg, port=self.port, process=index)
            process = context.Process(target=_child_main, args=(cfg, there), name=f"dt-scheduler-{index}")
            try:
                process.start()
            except BaseException:
                self._forward(signal.SIGKILL)
                raise
            finally:
                there.close()
            child = _Child(index, process, here)
            self.children.append(child)
            loop.add_reader(here.fileno(), self._read, child)
            loop.add_reader(process.sentinel, self._on_exit, child)

    async def _watch(self) -> int:
        """Until every process has ended: announce when all serve, stop all when one fails."""
        outcome: int | None = None  # decided by a process that ended unexpectedly
        unclean = announced = False
        for _ in self.children:
            while True:
                kind, child = await self.events.get()
                if kind == "exit":
                    break
                if not self.stopping and all(c.ready for c in self.children):
                    announced = True
                    logs.ready(f"{self.cfg.host}:{self.port}",  # --dapr-port is a fixed port here (config.py)
                               None if self.cfg.dapr_port is None else f"{self.cfg.host}:{self.cfg.dapr_port}")
                    log.info("serving on %s:%d with %d processes (pids %s)", self.cfg.host, self.port,
                             len(self.children), ", ".join(str(c.process.pid) for c in self.children))
            code = child.process.exitcode
            if self.stopping:
                if code not in CLEAN_EXITS:
                    unclean = True
                if code not in CLEAN_EXITS and child.error is None:  # a startup error was said once already
                    log.warning("process %d (pid %d) %s while stopping", child.index, child.process.pid, _ended(code))
                continue
            self.stopping = True
            if child.error is not None:
                outcome = _refuse(child.error)
            else:
                outcome = 1
                log.error("process %d (pid %d) %s: stopping the others", child.index, child.process.pid, _ended(code))
            self._forward(signal.SIGTERM)
        if outcome is not None:
            return outcome
        if not announced:
            log.info("stopped while starting")
        return 1 if unclean else 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping:
            log.warning("%s again: the processes stop at once", sig.name)
        else:
            log.info("%s: stopping the %d processes", sig.name, len(self.children))
        self.stopping = True
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for child in self.children:
            if child.process.exitcode is None:
                try:
                    os.kill(child.process.pid, sig)
                except ProcessLookupError:  # it ended meanwhile: its sentinel says so
                    pass

    def _read(self, child: _Child) -> bool:
        """Take one message from a process; False once its pipe is closed."""
        try:
            kind, value = child.pipe.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.pipe.fileno())
            return False
        if kind == "ready":
            child.ready = True
            self.events.put_nowait(("ready", child))
        elif kind == "error":
            child.error = value
        return True

    def _on_exit(self, child: _Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        while not child.pipe.closed and child.pipe.poll() and self._read(child):
            pass  # what it said before it ended (a startup error)
        loop.remove_reader(child.pipe.fileno())
        child.pipe.close()
        child.process.join()
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.process.pid, self.metrics_dir)  # its live gauges go
        self.events.put_nowait(("exit", child))


def _ended(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _serve_merged_metrics(cfg: Config):
    """The metrics endpoint of the supervisor: every process's metrics, merged."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, _thread = start_http_server(cfg.metrics_port, addr=cfg.host, registry=registry)
    return server


def _child_main(cfg: Config, supervisor: Connection) -> None:
    """One server process (``cfg.process`` of ``cfg.processes``), started by the supervisor."""
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor alone, which forwards it once
    logs.configure(cfg.log_level, cfg.log_format, cfg.replica, process=cfg.process)
    from . import runner  # here, not at the top: the supervisor itself never serves

    runner.use_uvloop()
    sys.exit(asyncio.run(runner.serve(cfg, supervisor)))
