"""Session fixtures for the scoring service's end-to-end tests.

One real ``mlflow server`` on loopback holds three registered models, trained once:
``bc`` (AE, @champion), ``bc-vae`` (VAE, @champion) and ``bc-reload`` (v1 = the AE, v2 = the
VAE, @champion on v1) for the reload test. Services run as real ``anomaly serve`` processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import MlflowServer, free_port, stop_process, wait_http

EPOCHS = 15


@dataclass
class Registry:
    """The running registry and what it holds."""

    server: MlflowServer
    uri: str
    data: Path  # breast-cancer CSV with id and malignant columns


@pytest.fixture(scope="session")
def svc_registry(tmp_path_factory, breast_cancer_csv) -> Registry:
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.train.config import TrainConfig
    from pipelines.train.run import run_training

    server = MlflowServer(tmp_path_factory.mktemp("svc-mlflow")).start()
    try:
        for name, kind in (("bc", "ae"), ("bc-vae", "vae")):
            cfg = TrainConfig(data=str(breast_cancer_csv), name=name, kind=kind,
                              label_column="malignant", id_column="id", alias="champion",
                              experiment="service-tests", model={"max_epochs": EPOCHS})
            run_training(cfg, tracking_uri=server.uri)
        client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
        mlflow.set_registry_uri(server.uri)
        for source in ("bc", "bc-vae"):
            mv = client.get_model_version(source, "1")
            mlflow.register_model(mv.source, "bc-reload")
        client.set_registered_model_alias("bc-reload", "champion", "1")
    except BaseException:
        server.stop()
        raise
    yield Registry(server=server, uri=server.uri, data=Path(breast_cancer_csv))
    server.stop()


class Service:
    """``anomaly serve`` as a subprocess on a free loopback port."""

    def __init__(self, folder: Path, models: list[str], tracking_uri: str,
                 env: dict[str, str] | None = None, cache_dir: Path | None = None):
        self.folder = Path(folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cache_dir = cache_dir or self.folder / "cache"
        self.cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(self.port),
                    "--tracking-uri", tracking_uri, "--cache-dir", str(self.cache_dir)]
        for m in models:
            self.cmd += ["--model", m]
        # A service that starts once gains nothing from the ONNX graph it would write for
        # its next start (seconds of CPU in the background on a 2-core runner):
        # test_service_start.py turns it on.
        self.env = {**os.environ, "ANOMALY_REGISTRY_TIMEOUT_S": "3",
                    "ANOMALY_REGISTRY_RETRIES": "0", "ANOMALY_GRAPH_RUNTIME": "false",
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = None

    def start(self) -> Service:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / f"serve-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.folder)
        try:
            wait_http(f"{self.url}/healthz", self.proc, timeout=120)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None:
            self.log.close()


@pytest.fixture(scope="session")
def service_factory(tmp_path_factory):
    """Start services; every one is stopped at the end of the session."""
    started: list[Service] = []

    def start(models: list[str], tracking_uri: str, env: dict[str, str] | None = None,
              cache_dir: Path | None = None) -> Service:
        svc = Service(tmp_path_factory.mktemp("service"), models, tracking_uri, env, cache_dir)
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()
