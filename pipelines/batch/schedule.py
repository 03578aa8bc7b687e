"""Scoring jobs on cron schedules (APScheduler 3), with retries and a JSON status file.

Each job runs ``anomaly score`` in a child process, so a crashing or memory-hungry job cannot
take the scheduler down. A job never overlaps itself (``max_instances=1``; runs missed while it
was busy are coalesced into one). A failed run is retried ``retries`` times, ``retry_delay``
seconds apart, except when it failed on its input or configuration (exit 2): that needs a fix,
not a retry. The status file shows every job's last run, result and next run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from pipelines.batch.options import ScoreOptions
from pipelines.batch.plan import fill_template
from pipelines.train.config import load_yaml
from training.errors import ConfigError, shown

log = logging.getLogger(__name__)

TOP_KEYS = {"jobs", "status_file", "tracking_uri", "timezone", "history"}
JOB_KEYS = {"name", "cron", "model", "input", "output", "options", "retries", "retry_delay",
            "timeout"}
OPTION_KEYS = {"keep", "on_error", "resume", "engine", "spark_master", "chunk_rows",
               "maps_dir", "decode_workers"}
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_EXIT_USER = 2


@dataclass
class JobSpec:
    """One scheduled scoring job, as written in the jobs file."""

    name: str
    cron: str
    model: str
    input: str
    output: str
    options: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    retry_delay: float = 30.0
    timeout: float | None = None


@dataclass
class Schedule:
    """A jobs file: its jobs and where their status goes."""

    jobs: list[JobSpec]
    status_file: str
    folder: Path
    tracking_uri: str | None = None
    timezone: str | None = None
    history: int = 20


def _unknown(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _dow(field_: str, where: str) -> str:
    """A cron day-of-week field in APScheduler's terms (cron counts 0 = Sunday, APScheduler
    0 = Monday), with numbers turned into day names."""
    if field_ in ("*", "?"):
        return "*"
    days: list[str] = []
    for item in field_.lower().split(","):
        if re.fullmatch(r"[a-z]{3}(-[a-z]{3})?", item):
            days.append(item)
            continue
        m = re.fullmatch(r"(\*|\d)(?:-(\d))?(?:/(\d+))?", item)
        if not m:
            raise ConfigError(f"{where}: day-of-week {item!r} is not valid cron")
        lo = 0 if m[1] == "*" else int(m[1])
        hi = 6 if m[1] == "*" else int(m[2]) if m[2] else (6 if m[3] else lo)
        if hi > 7 or lo > hi:
            raise ConfigError(f"{where}: day-of-week {item!r} is out of range 0-7")
        days.extend(_DAYS[d] for d in range(lo, hi + 1, int(m[3] or 1)))
    return ",".join(dict.fromkeys(days))


def cron_trigger(expr: str, timezone: str | None = None, where: str = "cron") -> CronTrigger:
    """A trigger from a 5-field cron (minute hour day month weekday) or a 6-field one with
    seconds first (``*/5 * * * * *`` = every 5 seconds)."""
    parts = str(expr).split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise ConfigError(f"{where}: {expr!r} has {len(parts)} fields; use 5 (minute hour day "
                          "month weekday) or 6 (second first)")
    second, minute, hour, day, month, dow = parts
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_dow(dow, where), timezone=timezone)
    except ConfigError:  # _dow's, already naming where
        raise
    except ValueError as e:
        raise ConfigError(f"{where}: {expr!r} is not a valid cron expression: {e}") from None


def load_jobs(path: str | Path) -> Schedule:
    """Read and validate a jobs file; unknown keys are errors naming the key."""
    path = Path(path)
    raw = load_yaml(str(path))
    _unknown(set(raw), TOP_KEYS, str(path))
    jobs_raw = raw.get("jobs")
    if not isinstance(jobs_raw, list) or not jobs_raw:
        raise ConfigError(f"{path}: 'jobs' must be a non-empty list")
    tz = raw.get("timezone")
    if tz is not None:
        if not isinstance(tz, str):
            raise ConfigError(f"{path}: timezone: expected a name such as Europe/Paris, got "
                              f"{shown(tz)}")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{path}: timezone: {tz!r} is not a time zone this machine "
                              "knows (an IANA name such as Europe/Paris or UTC)") from None
    history = raw.get("history", 20)
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise ConfigError(f"{path}: history: expected a positive whole number of runs, got "
                          f"{shown(history)}")
    status_file = raw.get("status_file")
    if status_file is not None and not isinstance(status_file, str):
        raise ConfigError(f"{path}: status_file: expected a file name, got {shown(status_file)}")
    jobs: list[JobSpec] = []
    for i, j in enumerate(jobs_raw):
        where = f"{path}: jobs[{i}]"
        if not isinstance(j, dict):
            raise ConfigError(f"{where}: expected a mapping")
        _unknown(set(j), JOB_KEYS, where)
        missing = [k for k in ("name", "cron", "model", "input", "output") if not j.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing}")
        for key in ("name", "model", "input", "output"):
            if not isinstance(j[key], str):
                raise ConfigError(f"{where}: {key}: expected text, got {shown(j[key])}")
        where = f"{path}: job '{j['name']}'"
        opts = j.get("options") or {}
        if not isinstance(opts, dict):
            raise ConfigError(f"{where}: options must be a mapping")
        _unknown(set(opts), OPTION_KEYS, f"{where} options")
        job = JobSpec(name=str(j["name"]), cron=str(j["cron"]), model=str(j["model"]),
                      input=str(j["input"]), output=str(j["output"]), options=dict(opts),
                      retries=j.get("retries", 0), retry_delay=j.get("retry_delay", 30.0),
                      timeout=j.get("timeout"))
        if not isinstance(job.retries, int) or job.retries < 0:
            raise ConfigError(f"{where}: retries must be a non-negative integer")
        if not isinstance(job.retry_delay, (int, float)) or job.retry_delay < 0:
            raise ConfigError(f"{where}: retry_delay must be a non-negative number of seconds")
        if job.timeout is not None and (not isinstance(job.timeout, (int, float))
                                        or job.timeout <= 0):
            raise ConfigError(f"{where}: timeout must be a positive number of seconds")
        if isinstance(opts.get("keep"), str):
            opts["keep"] = [c.strip() for c in opts["keep"].split(",")]
        try:
            ScoreOptions(model=job.model, input=job.input, output=job.output, **opts).check()
            score_command(job, datetime.now(), None)  # the output template fills in
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        trigger = cron_trigger(job.cron, tz, f"{where} cron")
        if trigger.get_next_fire_time(None, datetime.now(trigger.timezone)) is None:
            raise ConfigError(f"{where} cron: {job.cron!r} never fires (no such date)")
        if any(job.name == other.name for other in jobs):
            raise ConfigError(f"{where}: two jobs are named {job.name!r}")
        jobs.append(job)
    status = status_file or f"{path.with_suffix('')}.status.json"
    folder = path.resolve().parent
    if (folder / status).is_dir():
        raise ConfigError(f"{path}: status_file: {folder / status} is a folder; name a file")
    return Schedule(jobs=jobs, status_file=str(folder / status), folder=folder,
                    tracking_uri=raw.get("tracking_uri"), timezone=tz, history=history)


def score_command(job: JobSpec, when: datetime, tracking_uri: str | None) -> list[str]:
    """The ``anomaly score`` command line of one run (run date filled into the output)."""
    # The run's date filled in; {stem} and {name} left for the job to fill per input.
    output = fill_template(job.output, {"date": when.strftime("%Y-%m-%d"),
                                        "time": when.strftime("%H%M%S"),
                                        "datetime": when.strftime("%Y-%m-%dT%H%M%S")},
                           keep=("stem", "name"))
    cmd = [sys.executable, "-m", "pipelines.cli", "score", "--model", job.model,
           "--input", job.input, "--output", output]
    o = job.options
    if o.get("keep"):
        cmd += ["--keep", ",".join(o["keep"])]
    for key in ("on_error", "engine", "spark_master", "chunk_rows", "maps_dir", "decode_workers"):
        if o.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(o[key])]
    if o.get("resume"):
        cmd.append("--resume")
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    return cmd


class StatusFile:
    """The JSON status of every job, rewritten atomically after each change."""

    def __init__(self, path: str, history: int):
        self.path = Path(path)
        self.history = history
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {"jobs": {}}

    def update(self, name: str, **fields: Any) -> None:
        """Merge ``fields`` into job ``name``'s entry; a ``run`` field is appended to its runs."""
        with self._lock:
            entry = self.data["jobs"].setdefault(name, {"runs": []})
            run = fields.pop("run", None)
            entry.update(fields)
            if run is not None:
                entry["runs"] = (entry["runs"] + [run])[-self.history:]
            self.data["updated"] = _now()
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(timespec="seconds") if dt else None


def run_once(job: JobSpec, schedule: Schedule, status: StatusFile,
             next_run: Any = None) -> str:
    """Run ``job`` now with its retries; record it in the status file; return the result."""
    start, started = time.perf_counter(), _now()
    status.update(job.name, state="running", last_start=started)
    attempts, code, message = 0, -1, ""
    while True:
        attempts += 1
        cmd = score_command(job, datetime.now(), schedule.tracking_uri)
        log.info("job %s: attempt %d: %s", job.name, attempts, " ".join(cmd[2:]))
        try:
            proc = subprocess.run(cmd, cwd=schedule.folder, capture_output=True, text=True,
                                  timeout=job.timeout)
            code = proc.returncode
            lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            message = (proc.stdout.strip().splitlines() or [""])[-1] if code == 0 else (
                next((x for x in reversed(lines) if x.startswith("error:")), lines[-1] if lines
                     else f"exit code {code}"))
        except subprocess.TimeoutExpired:
            code, message = -1, f"timed out after {job.timeout}s"
        if code == 0:
            break
        log.warning("job %s: attempt %d failed (exit %d): %s", job.name, attempts, code, message)
        if code == _EXIT_USER or attempts > job.retries:
            break
        time.sleep(job.retry_delay)
    result = "ok" if code == 0 else "failed"
    run = {"start": started, "end": _now(), "result": result, "exit_code": code,
           "attempts": attempts, "seconds": round(time.perf_counter() - start, 3),
           "message": message[:500]}
    fields: dict[str, Any] = {"state": "idle", "last_end": run["end"], "last_result": result,
                              "last_exit_code": code, "last_message": run["message"],
                              "attempts": attempts, "run": run}
    if next_run is not None:
        fields["next_run"] = _iso(next_run())
    status.update(job.name, **fields)
    log.info("job %s: %s after %d attempt(s): %s", job.name, result, attempts, message)
    return result


def run_schedule(schedule: Schedule, duration: float | None = None) -> None:
    """Run every job on its cron until interrupted (SIGINT/SIGTERM) or ``duration`` seconds."""
    status = StatusFile(schedule.status_file, schedule.history)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max(2, len(schedule.jobs)))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone=schedule.timezone)

    def skipped(event: JobEvent) -> None:
        log.warning("job %s: still running, this run is skipped", event.job_id)
        entry = status.data["jobs"].get(event.job_id, {})
        status.update(event.job_id, overlaps_skipped=entry.get("overlaps_skipped", 0) + 1)

    scheduler.add_listener(skipped, EVENT_JOB_MAX_INSTANCES)
    for job in schedule.jobs:
        trigger = cron_trigger(job.cron, schedule.timezone, f"job '{job.name}' cron")

        def next_run(trigger: CronTrigger = trigger) -> datetime | None:
            # From the trigger, not scheduler.get_job: shutdown holds the scheduler's lock
            # while it waits for this very job to finish.
            return trigger.get_next_fire_time(None, datetime.now(trigger.timezone))

        scheduler.add_job(run_once, trigger, args=[job, schedule, status, next_run],
                          id=job.name, name=job.name)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler.start()
    try:
        for job in schedule.jobs:
            status.update(job.name, cron=job.cron, state="idle",
                          next_run=_iso(scheduler.get_job(job.name).next_run_time))
        log.info("scheduler started with %d job(s); status in %s", len(schedule.jobs),
                 schedule.status_file)
        stop.wait(duration)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.info("stopping: waiting for running jobs to finish")
        scheduler.shutdown(wait=True)
        for job in schedule.jobs:
            status.update(job.name, state="stopped", next_run=None)


def read_status(path: str | Path) -> dict[str, Any]:
    """The status file's content; :class:`ConfigError` if the scheduler never wrote it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no status file yet; start the jobs with "
                          "`anomaly schedule JOBS.yaml`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{p}: not a status file this scheduler wrote (not JSON); point "
                          "--status-file at the one it writes") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs", {}), dict):
        raise ConfigError(f"{p}: not a status file this scheduler wrote (no 'jobs' mapping)")
    return data


def format_status(data: dict[str, Any]) -> str:
    """One line per job: last run, result, next run."""
    from pipelines.cli.text import format_table

    rows = [{"job": name, "cron": e.get("cron", ""), "state": e.get("state", ""),
             "last run": e.get("last_start") or "never", "result": e.get("last_result", ""),
             "attempts": e.get("attempts", ""), "next run": e.get("next_run") or "-",
             "message": (e.get("last_message") or "")[:60]}
            for name, e in sorted(data.get("jobs", {}).items())]
    if not rows:
        return "no jobs"
    return format_table(rows, list(rows[0]))
