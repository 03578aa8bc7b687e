"""The ``anomaly`` command line.

Exit codes: 0 success, 2 the caller's fault (bad input, config, unknown model), 1 the
environment's fault (registry unreachable, disk, ...), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings

from training.errors import AnomalyError

log = logging.getLogger("anomaly")

EXIT_USER, EXIT_ENV = 2, 1


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, calibrate, evaluate, log and register a detector",
                       description="Train an AE or VAE on normal records (CSV or Parquet), "
                       "calibrate thresholds on held-out normals, evaluate on labelled data if "
                       "given, log the run to MLflow and register the model with an alias.")
    p.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    p.add_argument("--data", help="CSV or Parquet file of normal records; for conv_ae/conv_vae "
                   "a folder of images (MVTec layout too), an .npz or an IDX file")
    p.add_argument("--kind", choices=["ae", "vae", "conv_ae", "conv_vae"],
                   help="model kind: ae, vae for tables; conv_ae, conv_vae for images "
                   "(default: vae)")
    p.add_argument("--name", help="registered model name")
    p.add_argument("--label-column", help="column of labels (1 = anomaly): anomalies are held "
                   "out for evaluation, never trained on")
    p.add_argument("--id-column", help="column identifying records (not a feature)")
    p.add_argument("--eval-data", help="separate labelled CSV/Parquet file for evaluation "
                   "(images: a folder with good/ and one folder per defect, or .npz/IDX)")
    p.add_argument("--normal-class", help="images labelled by class (IDX, .npz): the class "
                   "that is normal; the others are anomalies kept for evaluation")
    p.add_argument("--target-fpr", type=float, help="false-positive rate of the thresholds "
                   "(default: 0.01)")
    p.add_argument("--alias", help="alias set on the new version (default: challenger)")
    p.add_argument("--experiment", help="MLflow experiment (default: anomaly-detection)")
    p.add_argument("--seed", type=int, help="random seed for splits and training (default: 0)")
    p.add_argument("--no-register", dest="register", action="store_const", const=False,
                   help="log the run but do not register a model version")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                   "or sqlite:///mlflow.db in the working directory)")
    h = p.add_argument_group("hyperparameters (default: chosen from the data's shape)")
    h.add_argument("--hidden-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated encoder widths, e.g. 64,32")
    h.add_argument("--latent-dim", type=int)
    h.add_argument("--activation")
    h.add_argument("--dropout", type=float)
    h.add_argument("--batch-size", type=int)
    h.add_argument("--learning-rate", type=float)
    h.add_argument("--epochs", dest="max_epochs", type=int, help="maximum epochs")
    h.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    h.add_argument("--noise-std", type=float, help="denoising: input noise std (0 = off)")
    h.add_argument("--beta", type=float, help="VAE: weight of the KL term")
    h.add_argument("--image-size", type=lambda s: [int(x) for x in s.split(",")],
                   help="images: HEIGHT,WIDTH (or one number) to resize to (default: the "
                   "images' own size, at most 64 a side)")
    h.add_argument("--channels", type=int, choices=[1, 3],
                   help="images: 1 grayscale or 3 RGB (default: from the images)")
    h.add_argument("--primary-score", choices=["recon", "elbo", "agg_elbo"],
                   help="score that decides is_anomaly (default: agg_elbo for vae, recon for ae)")
    p.set_defaults(func=_cmd_train)


MODEL_FLAGS = ("hidden_sizes", "latent_dim", "activation", "dropout", "batch_size",
               "learning_rate", "max_epochs", "patience", "noise_std", "beta", "primary_score",
               "image_size", "channels")
TOP_FLAGS = ("data", "kind", "name", "label_column", "id_column", "eval_data", "target_fpr",
             "alias", "experiment", "seed", "register", "normal_class")


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.train.config import TrainConfig
    from pipelines.train.run import run_training

    overrides = {k: getattr(args, k) for k in TOP_FLAGS}
    overrides["model"] = {k: getattr(args, k) for k in MODEL_FLAGS}
    cfg = TrainConfig.from_sources(args.config, overrides)
    result = run_training(cfg, args.tracking_uri)
    m = result.metrics
    print(f"run {result.run_id}: {result.kind} trained for {int(m['epochs_trained'])} epochs "
          f"in {m['fit_seconds']:.1f}s")
    for kind, t in result.thresholds.items():
        line = f"  {kind:6s} threshold {t:.6g}"
        if f"auroc_{kind}" in m:
            line += f"  AUROC {m[f'auroc_{kind}']:.4f}  AP {m[f'ap_{kind}']:.4f}"
        print(line)
    if result.version:
        print(f"registered models:/{result.name}/{result.version} as models:/{result.name}@"
              f"{result.alias}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models, promote a version to an alias")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    ls = msub.add_parser("list", help="every registered version with its aliases and metrics")
    ls.set_defaults(func=_cmd_models_list)
    pr = msub.add_parser("promote", help="point an alias (e.g. champion) at a version")
    pr.add_argument("name")
    pr.add_argument("--version", required=True)
    pr.add_argument("--alias", default="champion")
    pr.set_defaults(func=_cmd_models_promote)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from pipelines.registry.tracking import use_tracking_uri
    from pipelines.registry.versions import list_models

    use_tracking_uri(args.tracking_uri)
    rows = list_models()
    if not rows:
        print("no registered models")
        return 0
    print(format_table(rows, ["name", "version", "aliases", "kind", "primary_score",
                              "threshold", "auroc", "run_id"]))
    return 0


def _cmd_models_promote(args: argparse.Namespace) -> int:
    from pipelines.registry.tracking import use_tracking_uri
    from pipelines.registry.versions import promote

    use_tracking_uri(args.tracking_uri)
    promote(args.name, args.version, args.alias)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0


def _add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on the same store")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_ui)


def _cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.registry.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"the store is an MLflow server already: open {uri}")
        return 0
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    return subprocess.call(cmd)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train, compare and register an AE and a VAE on the "
                       "breast-cancer table that ships with scikit-learn")
    p.add_argument("--workdir", default="demo-run", help="folder for the data and MLflow store")
    p.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: automatic)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo.run import run_demo

    return run_demo(args.workdir, args.epochs)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the scoring service (HTTP) for registered models",
                       description="Serve registered models over HTTP: POST "
                       "/v1/models/NAME/score, docs at /docs. Every flag can also come from "
                       "the environment (ANOMALY_MODELS, ANOMALY_PORT, ANOMALY_API_KEYS, ...) "
                       "or a YAML settings file; flags win.")
    p.add_argument("--model", dest="models", action="append", metavar="URI",
                   help="models:/NAME@ALIAS or models:/NAME/VERSION; repeat for several")
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: 8000)")
    p.add_argument("--config", help="YAML settings file (keys as in `ANOMALY_*`, lower case)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI")
    p.add_argument("--cache-dir", help="where downloaded models are kept")
    p.add_argument("--strict", action="store_const", const=True,
                   help="reject records carrying columns the model does not read")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.app import serve
    from service.settings import load_settings

    serve(load_settings(args.config, models=args.models, host=args.host, port=args.port,
                        tracking_uri=args.tracking_uri, cache_dir=args.cache_dir,
                        strict=args.strict))
    return 0


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Plain-text table with a header line."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines.append("  ".join("-" * widths[c] for c in columns))
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``anomaly`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="anomaly",
        description="Anomaly detection with autoencoders: train, calibrate, register, score.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_models(sub)
    _add_ui(sub)
    _add_demo(sub)
    _add_serve(sub)
    from pipelines.cli.batch import add_batch_commands

    add_batch_commands(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not verbose:
        # MLflow's hints (integer columns, type hints, dataset sources) are for library
        # authors, not for someone running a training job.
        warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anomaly`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the environment's fault: one line, no traceback
        from mlflow.exceptions import MlflowException

        if args.verbose:
            raise
        kind = "registry/tracking error" if isinstance(e, MlflowException) else type(e).__name__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {kind}: {msg} (rerun with -v for details)", file=sys.stderr)
        return EXIT_ENV


if __name__ == "__main__":
    sys.exit(main())
