"""The jobs file of ``anomaly schedule``: validation, cron translation, retries."""

from __future__ import annotations

from datetime import datetime

import pytest

from pipelines.batch.schedule import (
    JobSpec,
    StatusFile,
    cron_trigger,
    load_jobs,
    read_status,
    run_once,
    score_command,
)
from tests.servers import free_port
from training.errors import ConfigError

JOB = """jobs:
  - name: nightly
    cron: "0 2 * * 1-5"
    model: models:/m@champion
    input: "drops/*.parquet"
    output: "scored/{date}/{stem}.parquet"
    retries: 2
    options: {keep: [id], on_error: skip, resume: true}
"""


def _write(tmp_path, text):
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_status_beside_it(tmp_path):
    s = load_jobs(_write(tmp_path, JOB))
    assert [j.name for j in s.jobs] == ["nightly"]
    assert s.status_file == str(tmp_path / "jobs.status.json")
    assert s.jobs[0].options["keep"] == ["id"]


@pytest.mark.parametrize("text,key", [
    (JOB + "colour: blue\n", "'colour'"),
    (JOB.replace("retries: 2", "retrys: 2"), "'retrys'"),
    (JOB.replace("resume: true", "resume: true, chunk: 5"), "'chunk'"),
    (JOB.replace('cron: "0 2 * * 1-5"', 'cron: "0 2 *"'), "3 fields"),
    (JOB.replace("on_error: skip", "on_error: maybe"), "on_error"),
    (JOB.replace("    model: models:/m@champion\n", ""), "['model']"),
    (JOB + "timezone: Mars/Olympus\n", "timezone: 'Mars/Olympus' is not a time zone"),
    (JOB + "history: -1\n", "history: expected a positive whole number"),
    (JOB.replace("name: nightly", "name: [a]"), "name: expected text"),
    (JOB + "status_file: sub\n", "status_file: .* is a folder"),
    (JOB.replace('cron: "0 2 * * 1-5"', 'cron: "* * 31 2 *"'), "never fires"),
    (JOB.replace("{date}/{stem}", "{foo}/{stem}"), "nightly.*unknown placeholder {foo}"),
])
def test_bad_file_names_the_key(tmp_path, text, key):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_jobs(_write(tmp_path, text))


def test_the_run_date_fills_a_template_that_keeps_its_escapes():
    job = JobSpec(name="n", cron="* * * * *", model="models:/m@champion", input="in/*.csv",
                  output="out/{{raw}}/{date}/{stem}.csv")
    cmd = score_command(job, datetime(2026, 1, 2, 3, 4, 5), None)
    assert cmd[cmd.index("--output") + 1] == "out/{{raw}}/2026-01-02/{stem}.csv"


def test_a_bad_weekday_is_named_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_jobs(_write(tmp_path, JOB.replace('cron: "0 2 * * 1-5"', 'cron: "* * * * 8"')))
    assert str(e.value) == (f"{tmp_path / 'jobs.yaml'}: job 'nightly' cron: day-of-week '8' "
                            "is out of range 0-7")


def test_a_status_file_the_scheduler_did_not_write_is_named(tmp_path):
    for text in ("not json", '{"jobs": 5}', "[1, 2]"):
        (tmp_path / "s.json").write_text(text)
        with pytest.raises(ConfigError, match="not a status file this scheduler wrote"):
            read_status(tmp_path / "s.json")


def test_cron_weekdays_mean_what_cron_means():
    # cron: 0 = Sunday, 1-5 = Monday..Friday (APScheduler itself counts from Monday).
    t = cron_trigger("0 2 * * 1-5")
    fire = t.get_next_fire_time(None, datetime(2024, 6, 1, 0, 0).astimezone())  # a Saturday
    assert fire.strftime("%a %H:%M") == "Mon 02:00"
    t = cron_trigger("0 2 * * 0")
    fire = t.get_next_fire_time(None, datetime(2024, 6, 3, 0, 0).astimezone())  # a Monday
    assert fire.strftime("%a") == "Sun"
    six = cron_trigger("*/5 * * * * *")  # seconds first
    start = datetime(2024, 6, 3, 0, 0, 1).astimezone()
    assert six.get_next_fire_time(None, start).second == 5


def test_command_fills_the_run_date():
    job = JobSpec("j", "* * * * *", "models:/m/1", "in/*.csv", "out/{date}/{stem}.parquet",
                  {"keep": ["id"], "resume": True})
    cmd = score_command(job, datetime(2024, 1, 2), "sqlite:///x.db")
    assert cmd[cmd.index("--output") + 1] == "out/2024-01-02/{stem}.parquet"
    assert "--resume" in cmd and cmd[cmd.index("--keep") + 1] == "id"


def test_environment_failure_is_retried(tmp_path, monkeypatch):
    # Nothing listens on this port: the registry is unreachable, the environment's fault.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    sched = load_jobs(_write(tmp_path, f"""tracking_uri: http://127.0.0.1:{free_port()}
jobs:
  - name: flaky
    cron: "0 0 1 1 *"
    model: models:/m@champion
    input: in.csv
    output: out.parquet
    retries: 1
    retry_delay: 0
"""))
    status = StatusFile(sched.status_file, 5)
    assert run_once(sched.jobs[0], sched, status) == "failed"
    entry = status.data["jobs"]["flaky"]
    assert entry["attempts"] == 2 and entry["last_exit_code"] == 1, entry
    assert entry["runs"][-1]["result"] == "failed"
    assert not (tmp_path / "out.parquet").exists()
