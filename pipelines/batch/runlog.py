"""A batch job's MLflow run, kept by a helper process while the job scores.

Importing MLflow and opening its store takes seconds, longer than scoring a small file through
a model's ONNX graph. When a job scores a cached table model through its graph
(:mod:`pipelines.batch.job`), it starts ``python -m pipelines.batch.runlog`` first and goes on
without MLflow; the helper, on the other core:

1. resolves the model URI in the registry and checks that it still names the cached version
   (an alias may have moved since it was cached);
2. creates the job's run (tags, parameters, ``inputs.txt``) and answers with its id;
3. waits for the job's end: logs its metrics and ``summary.json`` and finishes the run, or
   marks it failed with the job's error.

The job commits no output before step 1 has answered (:meth:`RunLog.confirm`), so it never
writes scores of a version the registry no longer names. One JSON line each way per step, on
the helper's stdin and stdout. A job that dies mid-way closes the helper's stdin: the run is
marked failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from pipelines.registry.download import FetchedModel, ModelCache
from pipelines.registry.uri import REGISTERED, parse_model_uri
from training import errors
from training.detector.graph_files import (
    GRAPH_DIR,
    graph_model_kind,
    graph_ready,
    graph_runtime_available,
)
from training.detector.image_params import IMAGE_KINDS
from training.errors import AnomalyError, ConfigError, RegistryUnavailable, first_line

GRAPH_ENV = "ANOMALY_GRAPH_RUNTIME"


def graph_enabled() -> bool:
    """Whether jobs may score through ONNX graphs (``ANOMALY_GRAPH_RUNTIME``, on by default)
    and the runtime is installed."""
    off = os.environ.get(GRAPH_ENV, "true").strip().lower() in ("0", "false", "no", "off")
    return not off and graph_runtime_available()


def cached_with_graph(uri: str, tracking_uri: str, cache_dir: Path | str | None,
                      maps: bool = False) -> tuple[FetchedModel, Path] | None:
    """The cached version of a registered model URI and its complete graph folder, or None
    (files only: nothing is loaded). An image model's job that writes anomaly maps
    (``maps``) scores with its networks, which the maps need, whatever the cache holds."""
    try:
        parsed = parse_model_uri(uri)
    except ConfigError:
        return None
    if parsed.kind != REGISTERED or not graph_enabled():
        return None
    fetched = ModelCache(cache_dir, tracking_uri).cached(uri)
    if fetched is None or not graph_ready(fetched.path / GRAPH_DIR):
        return None
    if maps and graph_model_kind(fetched.path / GRAPH_DIR) in IMAGE_KINDS:
        return None
    return fetched, fetched.path / GRAPH_DIR


# MLflow client settings the REST path (pipelines.batch.restlog) does not implement: with any of
# them set, the helper process (MLflow's own client) keeps the run.
_NEEDS_MLFLOW = ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
                 "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_AUTH",
                 "MLFLOW_TRACKING_AWS_SIGV4", "MLFLOW_WORKSPACE")


def rest_eligible(tracking_uri: str) -> bool:
    """Whether a job's run on ``tracking_uri`` can be kept through a tracking server's REST
    API (:mod:`pipelines.batch.restlog`), without MLflow's client."""
    scheme = urlparse(tracking_uri).scheme
    return scheme in ("http", "https") and not any(os.environ.get(v) for v in _NEEDS_MLFLOW)


def start_helper(uri: str, tracking_uri: str, cache_dir: Path | str | None = None,
                 maps: bool = False) -> RunLog | None:
    """The helper, started now, when a job of ``uri`` (writing anomaly maps: ``maps``) will
    score a cached graph and its run needs MLflow's client (a tracking server's REST API needs
    none: :mod:`pipelines.batch.restlog`); else None."""
    if rest_eligible(tracking_uri) or cached_with_graph(uri, tracking_uri, cache_dir,
                                                        maps) is None:
        return None
    return RunLog()


class ModelMoved(AnomalyError):
    """The registry names another version than the cached one: score again with that one."""

    def __init__(self, version: str):
        super().__init__(f"the registry now names version {version}")
        self.version = version


@dataclass
class RunRequest:
    """What the helper needs to resolve the model and open the run."""

    tracking_uri: str
    model_uri: str
    version: str  # the cached version the job scores with
    model_run_id: str | None
    experiment: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]
    inputs_text: str


class RunLog:
    """The job's side of the helper: start it, confirm the version, finish the run."""

    def __init__(self) -> None:
        """Start the helper: it imports MLflow while the job goes on, then waits for
        :meth:`start`."""
        self.run_id: str | None = None
        self.waited = 0.0  # seconds the job spent waiting in confirm()
        self._confirmed = False
        self._started = False
        self._closed = False
        self._error: AnomalyError | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.batch.runlog"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)

    def start(self, request: RunRequest) -> RunLog:
        """Ask the helper to confirm the version and open the run; returns self."""
        _send(self.proc.stdin, request.__dict__)
        self._started = True
        return self

    def confirm(self) -> str:
        """Wait until the registry has confirmed the version and the run is open.

        Returns:
            the run id.

        Raises:
            ModelMoved: the URI names another version now.
            ModelNotFoundError, RegistryUnavailable...: what resolving the URI or opening the
                run raised in the helper, as the same class.
        """
        if not self._confirmed:
            t0 = time.perf_counter()
            try:
                answer = self._receive()
            except AnomalyError as e:
                self._error = e
            else:
                if "moved" in answer:
                    self._error = ModelMoved(str(answer["moved"]))
                elif "error" in answer:
                    cls = getattr(errors, str(answer["error"]), None)
                    if not (isinstance(cls, type) and issubclass(cls, AnomalyError)):
                        cls = RegistryUnavailable
                    self._error = cls(str(answer["message"]))
                else:
                    self.run_id = str(answer["run_id"])
            self.waited += time.perf_counter() - t0
            self._confirmed = True
            if self._error is not None:
                self.close()
        if self._error is not None:
            raise self._error
        return self.run_id  # type: ignore[return-value]

    def finish(self, metrics: dict[str, float] | None = None, summary: str = "",
               error: str | None = None) -> None:
        """Log the job's metrics and summary (or its error) and finish the run.

        A job that failed before the registry answered leaves its error with the helper and
        does not wait for the answer: the helper marks the run failed once it has opened it."""
        if error is not None and not self._confirmed:
            if self._started and self.proc.poll() is None:
                try:
                    _send(self.proc.stdin, {"metrics": {}, "summary": "", "error": error})
                except RegistryUnavailable:
                    pass
            self.close()
            return
        if error is None:
            self.confirm()
        if self._error is None and self.proc.poll() is None:
            try:
                _send(self.proc.stdin, {"metrics": metrics or {}, "summary": summary,
                                        "error": error})
                answer = self._receive()
            except RegistryUnavailable:
                if error is None:
                    raise
            else:
                if "error" in answer and error is None:
                    raise RegistryUnavailable(str(answer["message"]))
        self.close()

    def close(self) -> None:
        """Stop the helper (an open run is marked failed; one never asked for anything is
        stopped at once, not left to finish importing MLflow)."""
        if self._closed:
            return
        self._closed = True
        if not self._started and self.proc.poll() is None:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()

    def _receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.seek(0)
            why = (self._stderr.read().strip().splitlines() or ["no message"])[-1]
            raise RegistryUnavailable(f"the MLflow run helper stopped ({why[:300]})")
        try:
            return json.loads(line)
        except ValueError:
            raise RegistryUnavailable(f"the MLflow run helper answered {line[:200]!r}") from None


def _send(stream: IO[str] | None, message: dict[str, Any]) -> None:
    try:
        stream.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
        stream.flush()  # type: ignore[union-attr]
    except (OSError, ValueError) as e:
        raise RegistryUnavailable(f"the MLflow run helper stopped ({e})") from None


def _serve(inp: IO[str], out: IO[str]) -> int:
    """The helper: one request, one run."""
    import mlflow

    from pipelines.registry.download import get_version
    from pipelines.registry.tracking import ensure_experiment, use_tracking_uri

    first = inp.readline()
    if not first:  # the job ended before it asked for a run
        return 0
    req = RunRequest(**json.loads(first))
    run = None
    try:
        uri = use_tracking_uri(req.tracking_uri)
        mv = get_version(parse_model_uri(req.model_uri, registered_only=True), uri)
        if str(mv.version) != req.version or mv.run_id != req.model_run_id:
            _answer(out, {"moved": str(mv.version)})
            return 0
        ensure_experiment(req.experiment)
        run = mlflow.start_run(run_name=req.run_name, tags=req.tags)
        mlflow.log_params(req.params)
        mlflow.log_text(req.inputs_text, "inputs.txt")
    except Exception as e:  # noqa: BLE001 - MLflow's store errors: the registry failed
        _fail(run, "opening the run failed")
        _answer(out, _error_answer(e, req.tracking_uri))
        return 0
    _answer(out, {"run_id": run.info.run_id})
    line = inp.readline()
    end = json.loads(line) if line else {"error": "the job stopped before it finished"}
    try:
        if end.get("error") is not None:
            mlflow.set_tag("error", str(end["error"])[:500] or "failed")
            mlflow.end_run("FAILED")
        else:
            mlflow.log_metrics({k: float(v) for k, v in end["metrics"].items()})
            mlflow.log_text(end["summary"], "summary.json")
            mlflow.end_run()
    except Exception as e:  # noqa: BLE001 - the job hears of it and says so
        _fail(run, "logging the run failed")
        _answer(out, {"error": "RegistryUnavailable", "message": f"logging the run failed: {e}"})
        return 0
    _answer(out, {"ok": True})
    return 0


def _error_answer(e: BaseException, tracking_uri: str) -> dict[str, str]:
    if isinstance(e, AnomalyError):
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": "RegistryUnavailable",
            "message": f"registry unreachable at {tracking_uri}: {first_line(e)}"}


def _fail(run: Any, why: str) -> None:
    """Best effort: a run that was opened is not left running."""
    if run is None:
        return
    import mlflow

    try:
        mlflow.set_tag("error", why)
        mlflow.end_run("FAILED")
    except Exception:  # noqa: BLE001, S110 - the store is failing already; the job reports it
        pass


def _answer(out: IO[str], message: dict[str, Any]) -> None:
    """One answer to the job; a job that has stopped listening is no error here."""
    try:
        _send(out, message)
    except RegistryUnavailable:
        pass


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the job decides, and its closed input tells the
    # helper to mark the run failed (MLflow's own exit hook would end it as finished).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol, sys.stdout = sys.stdout, sys.stderr  # what MLflow prints stays off the protocol
    try:
        code = _serve(sys.stdin, protocol)
    except Exception as e:  # noqa: BLE001 - one line in the log the job reads, no traceback
        print(f"{type(e).__name__}: {first_line(e, 500)}", file=sys.stderr)
        code = 1
    sys.stderr.flush()
    # Everything is committed and answered: skip MLflow's exit hooks (over half a second,
    # which the job would wait for).
    os._exit(code)
