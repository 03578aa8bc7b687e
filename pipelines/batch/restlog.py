"""A batch job's MLflow run through a tracking server's REST API, in a thread of the job.

For an ``http(s)://`` tracking URI a job on a cached graph needs no helper process at all: the
version check and the run are a handful of calls to MLflow's documented REST API (``/api/2.0/
mlflow/...``, artifacts through the server's ``mlflow-artifacts`` proxy), made with the
standard library in a thread while the job scores. The same steps and guarantees as
:class:`~pipelines.batch.runlog.RunLog`: the version confirmed before any output is committed,
the run opened with the job's tags, parameters and ``inputs.txt``, finished with its metrics
and ``summary.json`` or marked failed.

Honoured from MLflow's environment: ``MLFLOW_TRACKING_TOKEN`` (bearer) or
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (basic),
``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (retries of refused connections, 429 and 5xx, with
exponential backoff, as MLflow's client). Whatever else a server may need (client
certificates, a custom CA or auth plugin), and an experiment whose artifacts are not served
by the tracking server, go through the helper process, which uses MLflow's own client.
"""

from __future__ import annotations

import base64
import getpass
import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from pipelines.batch.runlog import ModelMoved, RunLog, RunRequest
from pipelines.registry.download import NOT_FOUND_CODES, no_such_version
from pipelines.registry.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING
from pipelines.registry.uri import parse_model_uri
from training.errors import AnomalyError, RegistryUnavailable

_RETRY = {429, 500, 502, 503, 504}
_ARTIFACTS = "mlflow-artifacts"


def _number(name: str, default: float) -> float:
    """A numeric MLflow setting from the environment; its default when unset or malformed."""
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


class _RestError(Exception):
    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


class RestClient:
    """The few REST calls a batch job makes, with MLflow's auth, timeout and retries."""

    def __init__(self, tracking_uri: str):
        self.base = tracking_uri.rstrip("/")
        self.timeout = _number("MLFLOW_HTTP_REQUEST_TIMEOUT", 120.0)
        self.retries = int(_number("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
        self.backoff = _number("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2.0)
        self.headers = {"User-Agent": "ae-anomaly"}
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:  # MLflow's own order: basic auth first, then a token
            pair = f"{user}:{password}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> dict[str, Any]:
        """``/api/2.0/mlflow/<endpoint>``; the JSON answer."""
        url = f"{self.base}/api/2.0/mlflow/{endpoint}"
        if params:
            url += "?" + urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        answer = self._send(method, url, data, "application/json")
        return json.loads(answer or b"{}")

    def put_artifact(self, path: str, text: str) -> None:
        """Upload ``text`` to ``path`` under the server's artifact root."""
        url = f"{self.base}/api/2.0/{_ARTIFACTS}/artifacts/{quote(path)}"
        self._send("PUT", url, text.encode(), "application/octet-stream")

    def _send(self, method: str, url: str, data: bytes | None, content_type: str) -> bytes:
        headers = {**self.headers, **({"Content-Type": content_type} if data is not None
                                      else {})}
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as e:
                raw = e.read()
                if e.code not in _RETRY or attempt == self.retries:
                    try:
                        err = json.loads(raw)
                    except ValueError:
                        err = {}
                    raise _RestError(e.code, str(err.get("error_code", "")),
                                     str(err.get("message") or raw[:300] or e.reason)
                                     ) from None
            except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
                if attempt == self.retries:
                    raise _RestError(None, "", str(getattr(e, "reason", e))) from None
            time.sleep(min(self.backoff * 2 ** attempt, 60.0))
        raise AssertionError("unreachable")


class RestRunLog:
    """:class:`~pipelines.batch.runlog.RunLog`'s interface over the REST API, its calls made
    in a thread while the job scores (urllib waits on the network with the GIL released)."""

    def __init__(self, tracking_uri: str):
        self.client = RestClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self.waited = 0.0
        self._artifacts: str | None = None  # the run's folder under the artifact root
        self._delegate: RunLog | None = None
        self._error: AnomalyError | None = None
        self._thread: threading.Thread | None = None

    def start(self, request: RunRequest) -> RestRunLog:
        """Confirm the version and open the run in a thread; returns self."""
        self._thread = threading.Thread(target=self._open, args=(request,), daemon=True,
                                        name="mlflow-run")
        self._thread.start()
        return self

    def confirm(self) -> str:
        """As :meth:`RunLog.confirm`: the run id once the version is confirmed."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.waited += time.perf_counter() - t0
        if self._delegate is not None:
            try:
                self.run_id = self._delegate.confirm()
            finally:
                self.waited += self._delegate.waited
                self._delegate.waited = 0.0
        if self._error is None and self.run_id is None:
            self._error = RegistryUnavailable(f"registry at {self.tracking_uri}: no run was "
                                              "opened for this job")
        if self._error is not None:
            raise self._error
        return self.run_id

    def finish(self, metrics: dict[str, float] | None = None, summary: str = "",
               error: str | None = None) -> None:
        """As :meth:`RunLog.finish`."""
        try:
            self.confirm()
        except AnomalyError:
            self._fail_quietly()
            self.close()
            if error is None:
                raise
            return
        if self._delegate is not None:
            self._delegate.finish(metrics, summary, error)
            return
        now = int(time.time() * 1000)
        try:
            if error is not None:
                self.client.call("POST", "runs/set-tag", {"run_id": self.run_id, "key": "error",
                                                          "value": error[:500]})
                self._end("FAILED", now)
                return
            self.client.call("POST", "runs/log-batch", {"run_id": self.run_id, "metrics": [
                {"key": k, "value": float(v), "timestamp": now, "step": 0}
                for k, v in (metrics or {}).items()]})
            self.client.put_artifact(f"{self._artifacts}/summary.json", summary)
            self._end("FINISHED", now)
        except _RestError as e:
            self._fail_quietly()
            if error is None:
                raise RegistryUnavailable(f"registry unreachable at {self.tracking_uri}: "
                                          f"logging the run failed: {e}") from None

    def _fail_quietly(self) -> None:
        """Best effort: a run this job opened is not left running."""
        if self.run_id is None or self._delegate is not None:
            return
        try:
            self._end("FAILED", int(time.time() * 1000))
        except _RestError:
            pass

    def close(self) -> None:
        """Nothing to stop but a delegate helper."""
        if self._delegate is not None:
            self._delegate.close()

    def _end(self, status: str, now: int) -> None:
        self.client.call("POST", "runs/update", {"run_id": self.run_id, "status": status,
                                                 "end_time": now})

    def _open(self, req: RunRequest) -> None:
        try:
            if self._moved(req):
                return
            experiment = self._experiment(req.experiment)
            location = urlparse(experiment.get("artifact_location", ""))
            if location.scheme != _ARTIFACTS or location.netloc:
                # Artifacts not served by this tracking server: MLflow's client writes them.
                self._delegate = RunLog().start(req)
                return
            tags = {"mlflow.user": _user(), "mlflow.source.name": sys.argv[0] or "anomaly",
                    "mlflow.source.type": "LOCAL", **req.tags}
            run = self.client.call("POST", "runs/create", {
                "experiment_id": experiment["experiment_id"], "run_name": req.run_name,
                "start_time": int(time.time() * 1000), "user_id": tags["mlflow.user"],
                "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]})["run"]
            self.run_id = run["info"]["run_id"]
            artifact_uri = urlparse(run["info"]["artifact_uri"])
            self._artifacts = artifact_uri.path.strip("/")
            self.client.call("POST", "runs/log-batch", {"run_id": self.run_id, "params": [
                {"key": k, "value": str(v)} for k, v in req.params.items()]})
            self.client.put_artifact(f"{self._artifacts}/inputs.txt", req.inputs_text)
        except AnomalyError as e:
            self._error = e
        except _RestError as e:
            self._error = RegistryUnavailable(f"registry unreachable at {self.tracking_uri}: "
                                              f"{e}")
        except Exception as e:  # noqa: BLE001 - an answer of the wrong shape, a bug: no output
            self._error = RegistryUnavailable(f"registry at {self.tracking_uri} answered "
                                              f"unexpectedly: {e!r}")

    def _moved(self, req: RunRequest) -> bool:
        """Resolve the URI; True (and ModelMoved kept) when it names another version."""
        parsed = parse_model_uri(req.model_uri, registered_only=True)
        try:
            if parsed.alias:
                mv = self.client.call("GET", "registered-models/alias",
                                      params={"name": parsed.name, "alias": parsed.alias})
            else:
                mv = self.client.call("GET", "model-versions/get",
                                      params={"name": parsed.name, "version": parsed.version})
        except _RestError as e:
            if e.code in NOT_FOUND_CODES or e.status == 404:
                raise no_such_version(parsed, self.tracking_uri, str(e)) from None
            raise
        version = mv["model_version"]
        if str(version["version"]) != req.version or version.get("run_id") != req.model_run_id:
            self._error = ModelMoved(str(version["version"]))
            return True
        return False

    def _experiment(self, name: str) -> dict[str, Any]:
        """The experiment ``name``, created (with the model-training kind tag) if missing."""
        try:
            exp = self.client.call("GET", "experiments/get-by-name",
                                   params={"experiment_name": name})["experiment"]
        except _RestError as e:
            if e.code not in NOT_FOUND_CODES and e.status != 404:
                raise
            try:
                self.client.call("POST", "experiments/create", {
                    "name": name, "tags": [{"key": EXPERIMENT_KIND_TAG,
                                            "value": MODEL_TRAINING}]})
            except _RestError as created:
                if created.code != "RESOURCE_ALREADY_EXISTS":  # another job made it
                    raise
            return self.client.call("GET", "experiments/get-by-name",
                                    params={"experiment_name": name})["experiment"]
        if not any(t.get("key") == EXPERIMENT_KIND_TAG for t in exp.get("tags", [])):
            self.client.call("POST", "experiments/set-experiment-tag", {
                "experiment_id": exp["experiment_id"], "key": EXPERIMENT_KIND_TAG,
                "value": MODEL_TRAINING})
        return exp


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
