"""Start real server processes on loopback for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200, failing early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class MlflowServer:
    """``mlflow server`` with a SQLite store and proxied artifacts in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.log = open(self.folder / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ})
        wait_http(f"{self.uri}/health", self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def stop_process(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    """Terminate ``proc`` (if running), killing it after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SparkCluster:
    """A Spark standalone cluster on loopback: one master and one worker, each its own JVM
    process started with pyspark's ``spark-class``.

    Args:
        folder: logs and the worker's work directory.
        cores: the worker's cores (executors get them all).
    """

    def __init__(self, folder: Path, cores: int = 1, memory: str = "2g"):
        import pyspark

        self.folder = Path(folder)
        self.home = Path(pyspark.__file__).parent
        self.port, self.ui_port, self.worker_ui_port = free_port(), free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.cores, self.memory = cores, memory
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    @property
    def env(self) -> dict[str, str]:
        """The environment of the cluster's processes (and of a driver that joins it):
        everything bound to and advertised on 127.0.0.1."""
        return {**os.environ, "SPARK_HOME": str(self.home), "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_NO_DAEMONIZE": "1"}

    def _start(self, name: str, *args: str) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.logs.append(log)
        cmd = [str(self.home / "bin" / "spark-class"), *args]
        self.procs.append(subprocess.Popen(cmd, cwd=self.folder, stdout=log,
                                           stderr=subprocess.STDOUT, env=self.env))

    def start(self, timeout: float = 120.0) -> SparkCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                        "--port", str(self.port), "--webui-port", str(self.ui_port))
            wait_http(f"http://127.0.0.1:{self.ui_port}/json/", self.procs[0], timeout)
            self._start("worker", "org.apache.spark.deploy.worker.Worker", self.url,
                        "--host", "127.0.0.1", "--cores", str(self.cores),
                        "--memory", self.memory, "--webui-port", str(self.worker_ui_port),
                        "--work-dir", str(self.folder / "work"))
            deadline = time.monotonic() + timeout
            while self.alive_workers() < 1:
                if time.monotonic() > deadline or self.procs[1].poll() is not None:
                    raise RuntimeError(f"no worker registered with {self.url}; see "
                                       f"{self.folder / 'worker.log'}")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def alive_workers(self) -> int:
        """Workers the master reports ALIVE."""
        state = httpx.get(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5.0).json()
        return sum(w.get("state") == "ALIVE" for w in state.get("workers", []))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        for log in self.logs:
            log.close()
