"""The Detector: fit on normal records, calibrate on held-out normals, score anything.

Sign convention: a higher score is more abnormal, for every score kind.

Score kinds:
- ``recon``: mean over features of the squared reconstruction error, each feature's error
  divided by that feature's mean error on the validation normals (so a feature that is always
  hard to reconstruct does not drown the others). For a VAE the reconstruction decodes the
  posterior mean.
- ``elbo`` (VAE only): the negative evidence lower bound, −E_q[log p(x|z)] + KL(q(z|x) || N(0, I)),
  with a Gaussian decoder whose per-feature variances are learned. The expectation uses a fixed
  set of Monte-Carlo draws, so the same record always gets the same score.
- ``agg_elbo`` (VAE only, the default): the same bound with the aggregate posterior of the
  training records as the prior, −E_q[log p(x|z)] + KL(q(z|x) || q_agg), where q_agg is the
  equal-weight mixture of the posteriors q(z|x_r) of up to ``AGGREGATE_PRIOR_ROWS`` training
  records (kept with the model). N(0, I) spreads mass between the clusters the encoder forms;
  q_agg is where normal codes really lie, so a record whose code falls between clusters, or far
  from all of them, scores high even when the decoder reconstructs it well. The KL to the
  mixture has no closed form; the score uses the closed-form upper bound
  −log (1/R) Σ_r exp(−KL(q(z|x) || q(z|x_r))), so ``agg_elbo`` stays an upper bound on −log p(x)
  under that prior, deterministic, and cheap (one matrix product per record batch).

With ``n_models`` > 1 the detector is an ensemble of independently initialised networks trained
side by side; every score is the mean of the members' scores (reconstruction errors are
averaged per feature first). A VAE defaults to three members (each with its own aggregate
prior), an AE to one (see :data:`training.params.DEFAULT_MODELS`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.calibration import ScoreCalibration
from training.errors import DataError, ModelFormatError, NotFittedError
from training.nn.dense import EnsembleAE, EnsembleVAE
from training.nn.losses import gaussian_nll, kl_to_mixture_bound, kl_to_standard_normal
from training.params import DetectorParams, resolve
from training.preprocessing.tabular import TabularPreprocessor

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bumped whenever what save() writes changes meaning
PRIOR_FILE = "aggregate_prior.pt"
# Training records whose posteriors make up the aggregate prior of the ``agg_elbo`` score: its
# cost per scored record grows with this; 1,024 and every training record (up to 8,500) gave
# the same AUROC on the benchmark tables, 256 slightly less (README, "Detection quality").
AGGREGATE_PRIOR_ROWS = 1024
_SCORE_CHUNK = 8192  # most records scored in one pass
# Largest intermediate tensor a scoring pass may build, in elements: the decoder's output over
# every member and draw (M × K × rows × d) and the aggregate-prior pairs (M × rows × R). Wide
# tables and ensembles get smaller chunks instead of gigabytes of intermediates; chunks that
# stay in cache also score faster (a 3-member VAE on 30 features: 2.5x the rows/s of fixed
# 8,192-record chunks, at 40% of the peak memory).
_SCORE_BUDGET = 2**20
MIN_FIT_ROWS = 10


def _as_frame(data: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D table, got an array of shape {arr.shape}")
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])


class Detector:
    """Autoencoder anomaly detector for tables.

    Args:
        id_column: column identifying records, excluded from features.
        label_column: column of ground-truth labels, excluded from features.
        **params: hyperparameters, see :class:`training.params.DetectorParams`.

    Example:
        >>> det = Detector(kind="vae").fit(normal_df).calibrate(held_out_df)
        >>> det.score(new_df)[["score", "p_value", "is_anomaly"]]
    """

    preprocessor_class = TabularPreprocessor  # what load() restores preprocessing.json with
    # The ``agg_elbo`` score's prior (see _aggregate_posterior); None for an AE or a model saved
    # before that score existed.
    prior_: dict[str, torch.Tensor] | None = None

    def __init__(self, id_column: str | None = None, label_column: str | None = None,
                 **params: Any):
        self.id_column = id_column
        self.label_column = label_column
        self.params = DetectorParams.from_dict(params)

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, data: pd.DataFrame | np.ndarray, source: str = "data",
            on_epoch: Callable[[int, float, float], None] | None = None) -> Detector:
        """Learn preprocessing and network from normal records only.

        A random ``validation_fraction`` of the rows is held out for early stopping and for
        the per-feature error scales of the ``recon`` score.

        Args:
            data: (n_records, n_columns) normal records.
            source: name for error messages.
            on_epoch: called with (epoch, train_loss, val_loss) after every epoch.

        Returns:
            self
        """
        p = self.params
        df = _as_frame(data)
        if len(df) < MIN_FIT_ROWS:
            raise DataError(f"{source}: {len(df)} rows; at least {MIN_FIT_ROWS} are needed to fit")
        self.preprocessor_ = TabularPreprocessor(self.id_column, self.label_column).fit(df, source)
        X, _ = self.preprocessor_.transform(df, source)
        rng = np.random.default_rng(p.seed)
        order = rng.permutation(len(X))
        n_val = max(2, int(round(p.validation_fraction * len(X))))
        X_val, X_train = X[order[:n_val]], X[order[n_val:]]
        self.resolved_ = resolve(p, len(X_train), X.shape[1])
        torch.manual_seed(p.seed)
        self.network_ = self._build(X.shape[1])
        self.history_ = self._train(torch.from_numpy(X_train), torch.from_numpy(X_val), on_epoch)
        self.prior_ = self._aggregate_posterior(X_train)
        with torch.no_grad():
            err = self._squared_errors(torch.from_numpy(X_val)).mean(dim=0)
        # Floor relative to the typical feature so a perfectly reconstructed one cannot explode.
        floor = max(float(err.mean()) * 1e-3, 1e-8)
        self.feature_scale_ = err.clamp(min=floor).numpy().astype(np.float64)
        self.calibrations_: dict[str, ScoreCalibration] = {}
        return self

    def _build(self, n_features: int) -> torch.nn.Module:
        cls = EnsembleVAE if self.params.kind == "vae" else EnsembleAE
        return cls(n_features, self.resolved_["hidden_sizes"], self.resolved_["latent_dim"],
                   self.params.activation, self.params.dropout, self.params.n_models)

    def _aggregate_posterior(self, X_train: np.ndarray) -> dict[str, torch.Tensor] | None:
        """Posterior means and log-variances, each (M, R, k), of up to
        ``AGGREGATE_PRIOR_ROWS`` random training records: the ``agg_elbo`` score's prior.
        None for an autoencoder."""
        if not self._variational:
            return None
        rng = np.random.default_rng(self.params.seed + 1)
        rows = np.sort(rng.permutation(len(X_train))[:AGGREGATE_PRIOR_ROWS])
        mus, logvars = [], []
        with torch.no_grad():
            for i in range(0, len(rows), 256):
                mu, logvar = self.network_.encode(torch.from_numpy(X_train[rows[i : i + 256]]))
                mus.append(mu)
                logvars.append(logvar)
        return {"mu": torch.cat(mus, dim=1).contiguous(),
                "logvar": torch.cat(logvars, dim=1).contiguous()}

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """Score kinds this model produces."""
        return self.params.score_kinds

    def _eps(self, n_draws: int) -> torch.Tensor:
        """Fixed standard-normal draws (n_draws, latent_dim): scores are deterministic."""
        g = torch.Generator().manual_seed(1234)
        return torch.randn(n_draws, self.resolved_["latent_dim"], generator=g)

    def _loss(self, x_in: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """Training objective, averaged over the batch and the ensemble's members."""
        net = self.network_
        if not self._variational:
            return (net(x_in) - x).pow(2).mean()
        if eps is not None:  # deterministic validation loss: one fixed draw for every record
            eps = eps[:1]
        x_hat, mu, logvar = net(x_in, eps)  # (M, n, d), (M, n, k), (M, n, k)
        nll = gaussian_nll(x, x_hat, net.decoder_logvar.unsqueeze(1)).sum(dim=-1)  # (M, n)
        return (nll + self.params.beta * kl_to_standard_normal(mu, logvar)).mean()

    def _train(self, X_train: torch.Tensor, X_val: torch.Tensor,
               on_epoch: Callable[[int, float, float], None] | None) -> list[dict[str, float]]:
        p, r = self.params, self.resolved_
        # fused: one kernel per step instead of one per tensor (~30% faster on these small
        # networks, where per-step overhead dominates).
        opt = torch.optim.Adam(self.network_.parameters(), lr=p.learning_rate,
                               weight_decay=p.weight_decay, fused=True)
        g = torch.Generator().manual_seed(p.seed)
        eps_val = self._eps(1)
        best, best_state, since_best = math.inf, None, 0
        history: list[dict[str, float]] = []
        bar = _progress(r["max_epochs"], f"training {p.kind}")
        start = time.perf_counter()
        for epoch in range(1, r["max_epochs"] + 1):
            self.network_.train()
            perm = torch.randperm(len(X_train), generator=g)
            total = 0.0
            for i in range(0, len(X_train), r["batch_size"]):
                xb = X_train[perm[i : i + r["batch_size"]]]
                x_in = xb + p.noise_std * torch.randn(xb.shape, generator=g) if p.noise_std else xb
                loss = self._loss(x_in, xb, None)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
            self.network_.eval()
            with torch.no_grad():
                val = float(self._loss(X_val, X_val, eps_val))
            train_loss = total / len(X_train)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val})
            if on_epoch:
                on_epoch(epoch, train_loss, val)
            log.debug("epoch %d: train loss %.5g, validation loss %.5g", epoch, train_loss, val)
            if bar:
                bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val:.4g}")
                bar.update(1)
            if best == math.inf or val < best - 1e-4 * abs(best):
                best, since_best = val, 0
                best_state = {k: v.detach().clone() for k, v in self.network_.state_dict().items()}
            else:
                since_best += 1
                if since_best >= p.patience:
                    log.info("early stop at epoch %d (best val loss %.4g)", epoch, best)
                    break
        if bar:
            bar.close()
        if best_state is not None:
            self.network_.load_state_dict(best_state)
        self.network_.eval()
        log.info("trained %s for %d epochs in %.1fs", p.kind, len(history),
                 time.perf_counter() - start)
        return history

    # -- raw scores --------------------------------------------------------------------------
    @property
    def _variational(self) -> bool:
        """Whether the network is a VAE (the model has an ``elbo`` score), whatever its kind."""
        return "elbo" in self.params.score_kinds

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError("this Detector is not fitted yet: call fit(normal_data) first")

    def _check_calibrated(self) -> None:
        self._check_fitted()
        if not getattr(self, "calibrations_", None):
            raise NotFittedError(
                "thresholds are not calibrated: call calibrate(held_out_normal_data) first"
            )

    def _squared_errors(self, x: torch.Tensor,
                        posterior: tuple[torch.Tensor, torch.Tensor] | None = None
                        ) -> torch.Tensor:
        """(n, d) squared errors of the deterministic reconstruction (posterior mean),
        averaged over the ensemble's members. A VAE's ``posterior`` of ``x``, when the caller
        has it already, saves encoding again."""
        net = self.network_
        if self._variational:
            mu, _ = posterior if posterior is not None else net.encode(x)
            return (net.decode(mu) - x).pow(2).mean(dim=0)
        return (net(x) - x).pow(2).mean(dim=0)

    def _negative_elbos(self, x: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """(n,) −ELBO under the N(0, I) prior (``elbo``) and, where the model has one, under
        the aggregate prior (``agg_elbo``), over the same fixed Monte-Carlo draws; each
        averaged over the ensemble's members. ``posterior``: ``network_.encode(x)``."""
        net = self.network_
        mu, logvar = posterior  # (M, n, k)
        eps = self._eps(self.params.mc_samples)[None, :, None, :]  # (1, K, 1, k)
        z = mu.unsqueeze(1) + eps * torch.exp(0.5 * logvar).unsqueeze(1)  # (M, K, n, k)
        lv = net.decoder_logvar[:, None, None, :]  # (M, 1, 1, d)
        nll = gaussian_nll(x, net.decode(z), lv).sum(dim=-1).mean(dim=1)  # (M, n)
        out = {"elbo": (nll + kl_to_standard_normal(mu, logvar)).mean(dim=0)}
        if self.prior_ is not None:
            kl = kl_to_mixture_bound(mu, logvar, self.prior_["mu"], self.prior_["logvar"])
            out["agg_elbo"] = (nll.double() + kl).mean(dim=0)
        return out

    def _matrix(self, data: pd.DataFrame | np.ndarray, source: str
                ) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        return self.preprocessor_.transform(_as_frame(data), source)

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.score_kinds}
        scale = torch.from_numpy(self.feature_scale_.astype(np.float32))
        with torch.no_grad():
            step = self._score_chunk(X.shape[1])
            for i in range(0, len(X), step):
                x = torch.from_numpy(X[i : i + step])
                posterior = self.network_.encode(x) if self._variational else None
                err = self._squared_errors(x, posterior) / scale
                out["recon"].append(err.mean(dim=1).double().numpy())
                if posterior is not None:
                    for k, v in self._negative_elbos(x, posterior).items():
                        out[k].append(v.double().numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    def _score_chunk(self, n_features: int) -> int:
        """Records per scoring pass: up to ``_SCORE_CHUNK``, fewer when one record's
        intermediates are large (see ``_SCORE_BUDGET``)."""
        p = self.params
        per_record = p.n_models * n_features * (p.mc_samples if self._variational else 1)
        if self.prior_ is not None:
            per_record = max(per_record, 2 * self.prior_["mu"].shape[:2].numel())
        return int(min(_SCORE_CHUNK, max(64, _SCORE_BUDGET // per_record)))

    def raw_scores(self, data: pd.DataFrame | np.ndarray, source: str = "data"
                   ) -> dict[str, np.ndarray]:
        """Every score kind for every record, before calibration.

        Returns:
            mapping score kind -> (n_records,) float64 array.
        """
        X, _ = self._matrix(data, source)
        return self._raw_from_matrix(X)

    # -- calibration -------------------------------------------------------------------------
    def calibrate(self, data: pd.DataFrame | np.ndarray, target_fpr: float | None = None,
                  source: str = "calibration data") -> Detector:
        """Set a threshold per score kind at ``target_fpr`` from held-out normal records.

        The records must not have been used by :meth:`fit`. Their scores are kept, so any
        later score maps to a conformal p-value.
        """
        if target_fpr is not None:
            self.params.target_fpr = float(target_fpr)
            self.params.__post_init__()
        scores = self.raw_scores(data, source)
        self.calibrations_ = {
            k: ScoreCalibration.fit(v, self.params.target_fpr) for k, v in scores.items()
        }
        return self

    @property
    def thresholds_(self) -> dict[str, float]:
        """Threshold per score kind."""
        self._check_calibrated()
        return {k: c.threshold for k, c in self.calibrations_.items()}

    @property
    def primary_score(self) -> str:
        """The score kind that decides ``is_anomaly``."""
        return str(self.params.primary_score)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, data: pd.DataFrame | np.ndarray, source: str = "data") -> pd.DataFrame:
        """Score records.

        Returns:
            DataFrame with one row per record, in order: ``score``, ``p_value``, ``is_anomaly``
            (for the primary score), ``score_<kind>`` and ``p_value_<kind>`` for every score
            kind, and ``unknown_categories`` (categorical values never seen in training).
        """
        self._check_calibrated()
        X, unknown = self._matrix(data, source)
        return self._frame(self._raw_from_matrix(X), unknown)

    def _frame(self, raw: dict[str, np.ndarray], unknown: np.ndarray) -> pd.DataFrame:
        primary = self.primary_score
        cal = self.calibrations_[primary]
        cols: dict[str, np.ndarray] = {
            "score": raw[primary],
            "p_value": cal.p_values(raw[primary]),
            "is_anomaly": raw[primary] > cal.threshold,
        }
        for k, v in raw.items():
            cols[f"score_{k}"] = v
            cols[f"p_value_{k}"] = self.calibrations_[k].p_values(v)
        cols["unknown_categories"] = unknown
        return pd.DataFrame(cols)

    def predict(self, data: pd.DataFrame | np.ndarray, source: str = "data") -> np.ndarray:
        """(n_records,) booleans: is each record an anomaly by the primary score."""
        return self.score(data, source)["is_anomaly"].to_numpy()

    def explain(self, data: pd.DataFrame | np.ndarray, source: str = "data") -> pd.DataFrame:
        """Per-column contributions to the ``recon`` score.

        Returns:
            DataFrame (n_records, n_input_columns): each column's scaled squared error (one-hot
            blocks summed into their column); a row's mean over features is its ``recon`` score
            times n_features / n_columns.
        """
        X, _ = self._matrix(data, source)
        with torch.no_grad():
            err = (self._squared_errors(torch.from_numpy(X)).double().numpy()
                   / self.feature_scale_)
        out: dict[str, np.ndarray] = {}
        j = 0
        for s in self.preprocessor_.columns_:
            out[s.name] = err[:, j : j + s.width].sum(axis=1) if s.width else np.zeros(len(X))
            j += s.width
        return pd.DataFrame(out)

    # -- latent-space tools ------------------------------------------------------------------
    def encode(self, data: pd.DataFrame | np.ndarray, source: str = "data") -> np.ndarray:
        """(n_records, latent_dim) latent codes (posterior means for a VAE); in an ensemble,
        the first member's."""
        X, _ = self._matrix(data, source)
        with torch.no_grad():
            z = self.network_.encode(torch.from_numpy(X))
        return (z[0] if isinstance(z, tuple) else z)[0].double().numpy()

    def decode(self, z: np.ndarray) -> pd.DataFrame:
        """Latent codes (n, latent_dim) to records in the input's own columns (in an ensemble,
        by the first member, whose codes :meth:`encode` returns)."""
        self._check_fitted()
        z_t = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        with torch.no_grad():
            x = self.network_.decode(z_t.expand(self.params.n_models, *z_t.shape))[0]
        return self.preprocessor_.inverse_transform(x.numpy())

    def reconstruct(self, data: pd.DataFrame | np.ndarray, source: str = "data") -> pd.DataFrame:
        """Reconstructions of the records, in the input's own columns."""
        return self.decode(self.encode(data, source))

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        """VAE only: ``n`` records generated from the prior N(0, I)."""
        self._require_vae("sample")
        g = torch.Generator().manual_seed(seed)
        return self.decode(torch.randn(n, self.resolved_["latent_dim"], generator=g).numpy())

    def interpolate(self, a: pd.DataFrame, b: pd.DataFrame, steps: int = 8) -> pd.DataFrame:
        """VAE only: ``steps`` records decoded along the line between two records' codes."""
        self._require_vae("interpolate")
        za, zb = self.encode(a)[0], self.encode(b)[0]
        t = np.linspace(0.0, 1.0, steps)[:, None]
        return self.decode((1 - t) * za + t * zb)

    def _require_vae(self, what: str) -> None:
        self._check_fitted()
        if not self._variational:
            raise NotFittedError(f"{what} needs a VAE; this detector is kind {self.params.kind!r}")

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``weights.pt`` (state dict), ``detector.json`` and ``preprocessing.json``."""
        self._check_calibrated()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.network_.state_dict(), path / "weights.pt")
        if self.prior_ is not None:
            torch.save(self.prior_, path / PRIOR_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "id_column": self.id_column,
            "label_column": self.label_column,
            "params": self.params.to_dict(),
            "resolved": self.resolved_,
            "n_features": int(self.preprocessor_.n_features_),
            "feature_names": self.preprocessor_.feature_names_,
            "feature_scale": self.feature_scale_.tolist(),
            "history": self.history_,
            "calibration": {k: c.to_dict() for k, c in self.calibrations_.items()},
        }
        (path / "detector.json").write_text(json.dumps(meta))
        (path / "preprocessing.json").write_text(json.dumps(self.preprocessor_.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Load a detector written by :meth:`save` (weights are read with ``weights_only``)."""
        path = Path(path)
        for name in ("weights.pt", "detector.json", "preprocessing.json"):
            if not (path / name).is_file():
                raise ModelFormatError(f"{path}: not a saved detector (missing {name})")
        meta = json.loads((path / "detector.json").read_text())
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: saved in detector format {version}; this library reads format "
                f"{FORMAT_VERSION} only: retrain the model with `anomaly train`")
        det = cls(id_column=meta["id_column"], label_column=meta["label_column"],
                  **meta["params"])
        det.preprocessor_ = cls.preprocessor_class.from_dict(
            json.loads((path / "preprocessing.json").read_text())
        )
        det.resolved_ = meta["resolved"]
        det.network_ = det._build(meta["n_features"])
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        det.network_.load_state_dict(state)
        det.network_.eval()
        if det._variational:
            if not (path / PRIOR_FILE).is_file():
                raise ModelFormatError(f"{path}: not a saved detector (missing {PRIOR_FILE})")
            det.prior_ = torch.load(path / PRIOR_FILE, map_location="cpu", weights_only=True)
        det.feature_scale_ = np.asarray(meta["feature_scale"], dtype=np.float64)
        det.history_ = meta["history"]
        det.calibrations_ = {
            k: ScoreCalibration.from_dict(v) for k, v in meta["calibration"].items()
        }
        if set(det.calibrations_) != set(det.score_kinds):
            raise ModelFormatError(
                f"{path}: calibrated scores {sorted(det.calibrations_)} do not match the "
                f"model's {sorted(det.score_kinds)}")
        return det


def _progress(total: int, desc: str):
    """A tqdm bar on an interactive terminal, nothing otherwise (logs carry progress then)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)
