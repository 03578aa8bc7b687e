"""The ``anomaly`` command line: global options anywhere, help, exit codes, ``ui`` as exec."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from mlflow.exceptions import MlflowException

from pipelines.cli.main import cli, main
from pipelines.cli.options import Command
from pipelines.train.config import TrainConfig
from tests.servers import free_port, wait_http
from training.errors import ConfigError, RegistryUnavailable
from training.nn.names import ACTIVATION_NAMES
from training.preprocessing.tabular import DIRECTION_MIN_COLUMNS


def _commands(group: click.Group, path: str = "anomaly"):
    """Every command and group of the tree, with its command path."""
    yield path, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{path} {name}")
        else:
            yield f"{path} {name}", cmd


# -- help -----------------------------------------------------------------------------------
def test_every_command_and_option_has_help():
    seen = set()
    for path, cmd in _commands(cli):
        assert cmd.help, f"{path} has no help"
        options = [p for p in cmd.params if isinstance(p, click.Option)]
        for opt in options:
            assert opt.help, f"{path} {opt.opts[0]} has no help text"
        names = {o for opt in options for o in opt.opts}
        assert {"-v", "--verbose"} <= names, path  # the global options, on every level
        if getattr(cmd, "uses_store", True):
            assert "--tracking-uri" in names, path
        seen.add(path)
    assert {"anomaly train", "anomaly models list", "anomaly models promote", "anomaly ui",
            "anomaly serve", "anomaly score", "anomaly schedule", "anomaly demo"} <= seen


def test_help_lists_the_choices_and_defaults(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert f"--activation [{'|'.join(ACTIVATION_NAMES)}]" in out
    assert "--kind [ae|vae|conv_ae|conv_vae|seq_ae|seq_vae]" in out
    assert ("--primary-score [agg_elbo|elbo|recon|knn|combined|elbo_vs_png|elbo_vs_local|"
            "recon_vs_local]" in out)
    assert "ae: recon, vae: combined, conv_ae" in out
    assert "--geometry [auto|columns|direction]" in out
    assert f"direction for {DIRECTION_MIN_COLUMNS} or more numeric columns" in out
    assert "conv_ae: recon_vs_local, conv_vae: elbo_vs_local" in out
    assert "[default: vae]" in out and "[default: challenger]" in out
    assert main(["score", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--on-error [fail|skip]" in out and "--engine [local|spark]" in out
    assert "[default: 50000]" in out


def test_a_bad_flag_value_is_a_usage_error(capsys):
    assert main(["train", "--kind", "cnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "'cnn' is not one of" in err[-1], err
    assert main(["train", "--hidden-sizes", "64,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


# -- global options, before or after the command ---------------------------------------------
def test_tracking_uri_and_verbose_after_the_command(tmp_path, capsys):
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    assert main(["--tracking-uri", f"sqlite:///{first}", "models", "list",
                 "--tracking-uri", f"sqlite:///{second}", "-v"]) == 0
    assert capsys.readouterr().out.strip() == "no registered models"
    assert second.exists() and not first.exists()  # the command's own option wins


def test_verbose_after_the_command_adds_the_traceback(tmp_path, capsys):
    args = ["train", "--data", str(tmp_path / "nope.csv"), "--name", "m"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().endswith("nope.csv: file not found")
    assert main([*args, "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_demo_refuses_a_tracking_uri(capsys):
    assert main(["--tracking-uri", "sqlite:///x.db", "demo"]) == 2
    assert "keeps its own MLflow store" in capsys.readouterr().err


# -- exit codes ------------------------------------------------------------------------------
@pytest.mark.parametrize("error,code,message", [
    (ConfigError("model.dropout: expected a number"), 2, "error: model.dropout: expected"),
    (RegistryUnavailable("registry at http://x unreachable"), 1, "error: registry at http"),
    (MlflowException("API request failed"), 1, "error: registry/tracking error: API request"),
    (OSError(28, "No space left on device"), 1, "error: OSError: [Errno 28] No space left"),
    (ZeroDivisionError("division by zero"), 70, "error: internal error: ZeroDivisionError"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_each_failure_maps_to_its_exit_code(error, code, message, capsys):
    @click.command(cls=Command)
    def fails() -> None:
        """A command that fails the way a real one can."""
        raise error

    cli.add_command(fails, "fails-now")
    try:
        assert main(["fails-now"]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(message), err
        assert not any("Traceback" in line for line in err)
        if code in (1, 70):
            assert main(["fails-now", "-v"]) == code
            assert "Traceback" in capsys.readouterr().err
    finally:
        cli.commands.pop("fails-now")


@pytest.mark.parametrize("text,message", [
    ("models: [models:/m@champion\n", "not valid YAML (line 2)"),
    ("- models:/m@champion\n", "expected a mapping"),
    ("colour: blue\n", "colour"),
])
def test_a_bad_serve_config_exits_2(text, message, tmp_path, capsys):
    config = tmp_path / "serve.yaml"
    config.write_text(text)
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {config}") and message in err[-1], err


@pytest.mark.parametrize("name", ["../evil/name", "team:model", "   ", ".", "..x"])
def test_an_invalid_model_name_fails_before_any_run(name, tmp_path, monkeypatch, capsys,
                                                    breast_cancer_csv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "--data", str(breast_cancer_csv), "--name", name, "--kind", "ae",
                 "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: name: "), err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_the_config_file_name_is_checked_too(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: x.csv\nname: a/b\n")
    with pytest.raises(ConfigError, match="not a valid registered model name"):
        TrainConfig.from_sources(str(cfg), {})
    cfg.write_text("data: x.csv\nname: 2024\n")
    with pytest.raises(ConfigError, match="expected text"):
        TrainConfig.from_sources(str(cfg), {})


# -- anomaly ui becomes mlflow ui ------------------------------------------------------------
def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        new = _children(todo.pop()) - found
        found |= new
        todo += new
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited process nobody reaped is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not in use
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ui_becomes_mlflow_and_sigterm_leaves_nothing_running(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_WORKERS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"mlflow" in cmdline and b"ui" in cmdline  # the same process, now mlflow ui
        assert b"pipelines.cli" not in cmdline
        workers = _descendants(proc.pid)
        assert workers  # the server MLflow started
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_running(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _running(p)]
        assert _port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers | _descendants(proc.pid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_mlflow_info_lines_stay_out_of_the_output(tmp_path):
    """A fresh SQLite store makes MLflow log 'Creating initial MLflow database tables...' in
    its own format; the user sees it only with -v."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    for flags, shown in (([], False), (["-v"], True)):
        uri = f"sqlite:///{tmp_path / ('v' if flags else 'q')}.db"
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *flags, "models", "list",
                               "--tracking-uri", uri], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert ("Creating initial MLflow database tables" in proc.stderr) == shown, proc.stderr
        if not shown:
            assert proc.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["score", "--help"],
                                  ["serve", "--help"]])
def test_help_imports_neither_torch_nor_mlflow(args):
    """Help needs no network code and no registry: both are imported by the commands that
    use them, when they run."""
    code = ("import sys\nfrom pipelines.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip().splitlines()[-1] == "[]", out[-500:]


def test_the_training_summary_names_the_primary_score_and_a_direction_geometry():
    from pipelines.cli.text import format_training
    from pipelines.train.run import TrainResult

    result = TrainResult(name="emb", kind="vae", run_id="r1", version="2", alias="challenger",
                         metrics={"fit/epochs": 40, "fit/seconds": 3.0},
                         thresholds={"elbo": 1.5, "combined": 2.5}, primary_score="combined",
                         geometry="direction")
    lines = format_training(result).splitlines()
    assert lines[1].startswith("  rows compared by their direction (geometry direction")
    assert lines[2] == "  elbo   threshold 1.5"
    assert lines[3] == "  combined threshold 2.5  (primary: decides is_anomaly)"
    assert "direction" not in format_training(
        TrainResult(name="t", kind="vae", run_id="r2", version=None, alias=None,
                    metrics={"fit/epochs": 1, "fit/seconds": 1.0}, geometry="columns"))


def test_training_names_the_columns_set_apart_from_the_rows_vector(tmp_path, capsys):
    import mlflow
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    flags = (rng.random((160, DIRECTION_MIN_COLUMNS)) < 0.2).astype(int)
    table = pd.DataFrame(flags, columns=[f"f{i}" for i in range(DIRECTION_MIN_COLUMNS)])
    table["height"] = rng.integers(20, 600, 160)
    table["width"] = rng.integers(20, 600, 160)
    data = tmp_path / "flags.csv"
    table.to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "--data", str(data), "--name", "flags", "--epochs", "2",
                 "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "rows compared by their direction" in out
    assert ("set apart, in a larger unit than the rest (standardised on their own): "
            "'height', 'width'") in out
    run_id = out.split()[1].rstrip(":")
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["geometry"] == "direction" and run.data.params["set_apart"] == "2"
