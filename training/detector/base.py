"""The Detector template: fit on normal data, calibrate on held-out normals, score anything.

Sign convention: a higher score is more abnormal, for every score kind and every data kind.

The template is written once here; a data kind (tables, images, ...) supplies only what is its
own, as a subclass: its hyperparameters (``params_class``), its preprocessing
(``_new_preprocessor``), the sizes it derives from the data (``_resolve``), its networks
(``_build``) and how per-feature errors become explanations (``_explain``). Networks receive
flat float32 rows (n, n_features) whatever the data kind, so training, scores, calibration,
p-values and persistence are shared.

Score kinds:
- ``recon``: mean over features of the squared reconstruction error, each feature's error
  divided by a scale from the validation normals (per feature for tables, one for all pixels
  for images). For a VAE the reconstruction decodes the posterior mean.
- ``elbo`` (VAEs): the negative evidence lower bound, −E_q[log p(x|z)] + KL(q(z|x) || N(0, I)),
  with a Gaussian decoder whose per-feature variances are learned. The expectation uses a fixed
  set of Monte-Carlo draws, so the same record always gets the same score.
- ``agg_elbo`` (VAEs): the same bound with the aggregate posterior of the training records as
  the prior, −E_q[log p(x|z)] + KL(q(z|x) || q_agg), where q_agg is the equal-weight mixture of
  the posteriors q(z|x_r) of up to ``AGGREGATE_PRIOR_ROWS`` training records (kept with the
  model). N(0, I) spreads mass between the clusters the encoder forms; q_agg is where normal
  codes lie, so a record whose code falls between clusters, or far from all of them, scores high
  even when the decoder reconstructs it well. The KL to the mixture has no closed form; the
  score uses the closed-form upper bound −log (1/R) Σ_r exp(−KL(q(z|x) || q(z|x_r))).

With ``n_models`` > 1 the detector is an ensemble of independently initialised networks trained
side by side; every score is the mean of the members' scores (reconstruction errors are
averaged per feature first).

Cross-fitted calibration (``cross_fit``, on by default for an ensemble): the training records
are dealt into one fold per member and member m never trains on fold m, while the validation
records train no member. Every record given to :meth:`fit` then has scores from networks that
never saw it: fold m's from member m alone, the validation records' from the whole ensemble.
:meth:`fit` calibrates on all of them, so the thresholds rest on every normal record rather than
on a held-out fifth. Member m's ``agg_elbo`` prior and the ``knn`` reference rows it scores
against are drawn outside fold m, as they are outside any new record. A member's score of a new
normal varies a little more than the mean of M members does (their scores correlate at 0.94-0.99
on the benchmark tables), so the thresholds err, if anything, towards fewer false alarms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from training.calibration import ScoreCalibration
from training.detector.registry import DETECTORS
from training.detector.scores import CalibratedScores, robust_location_scale
from training.errors import DataError, NotFittedError
from training.nn.flat import FlatAdam, flat_parameters
from training.nn.losses import (
    gaussian_nll_rows,
    kl_to_mixture_bound,
    kl_to_standard_normal,
)
from training.params import NEIGHBOUR_SCORES, DetectorParams

log = logging.getLogger(__name__)

# Training records whose posteriors make up the aggregate prior of the ``agg_elbo`` score; its
# cost per scored record grows with this, and 256 codes cost a quarter of 1,024 for 0.003 of
# that score's mean AUROC (docs/benchmarks/experiments.md).
AGGREGATE_PRIOR_ROWS = 256
_SCORE_CHUNK = 8192  # most records scored in one pass
# Largest intermediate tensor a scoring pass may build, in elements: the decoder's output over
# every member and draw (M × K × rows × d) and the aggregate-prior pairs (M × rows × R). Wide
# inputs and ensembles get smaller chunks instead of gigabytes of intermediates.
_SCORE_BUDGET = 2**20
MIN_FIT_ROWS = 10
# Share of the training records dealt into cross-fitting folds (the rest train every member).
CROSS_FIT_COVERAGE = 1.0
REFERENCE_ROWS = 10_000  # training rows kept for the ``knn`` score (a random subset beyond)


class BaseDetector(CalibratedScores):
    """What every detector does, whatever its data: see the module docstring.

    Args:
        id_column: column identifying records, excluded from features (tables).
        label_column: column of ground-truth labels, excluded from features (tables).
        **params: hyperparameters, see the subclass's ``params_class``.
    """

    params_class: ClassVar[type[DetectorParams]] = DetectorParams
    preprocessor_class: ClassVar[type]  # restores preprocessing.json when a model is loaded
    kinds: ClassVar[tuple[str, ...]] = ()  # model kinds this class trains ("ae", "vae", ...)
    # Whether the networks take a batch per member, (M, B, n_features): cross-fitting then gives
    # each member batches of its own training rows (see ``_batches``).
    member_batches: ClassVar[bool] = False
    # The ``agg_elbo`` score's prior (see _aggregate_posterior); None for an autoencoder.
    prior_: dict[str, torch.Tensor] | None = None
    # With ``neighbours``: training rows (R, n_features) of the ``knn`` score, and the
    # (median, scale) on the training normals of each part of the ``combined`` score.
    reference_: torch.Tensor | None = None
    combination_: dict[str, list[float]] | None = None
    # ``knn`` is the mean distance to the k nearest reference rows; models saved before it
    # was took the k-th distance alone, and keep it when loaded (see persistence).
    knn_mean_: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("kinds", ()):
            DETECTORS[kind] = cls

    def __init__(self, id_column: str | None = None, label_column: str | None = None,
                 **params: Any):
        self.id_column = id_column
        self.label_column = label_column
        self.params = self.params_class.from_dict(params)

    # -- what a data kind supplies -----------------------------------------------------------
    def _new_preprocessor(self) -> Any:
        """An unfitted preprocessor with ``fit``, ``transform``, ``inverse_transform``,
        ``to_dict``/``from_dict``, ``n_features_`` and ``input_columns_``."""
        raise NotImplementedError

    def _resolve(self, n_train: int, n_features: int) -> dict[str, Any]:
        """The hyperparameters left to the data (sizes, batch, epochs), filled in."""
        raise NotImplementedError

    def _build(self, n_features: int) -> torch.nn.Module:
        """The network: an ensemble with ``encode``/``decode`` on (M, ..., features) tensors."""
        raise NotImplementedError

    def _feature_scale(self, val_errors: torch.Tensor) -> np.ndarray:
        """(n_features,) divisors of the squared errors, from the validation rows' errors."""
        err = val_errors.mean(dim=0)
        # Floor relative to the typical feature so a perfectly reconstructed one cannot explode.
        floor = max(float(err.mean()) * 1e-3, 1e-8)
        return err.clamp(min=floor).numpy().astype(np.float64)

    def _explain(self, errors: np.ndarray) -> np.ndarray:
        """Scaled squared errors (n, n_features) as the kind's explanation array."""
        return errors

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, data: Any, source: str = "data",
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> BaseDetector:
        """Learn preprocessing and network from normal data only.

        A random ``validation_fraction`` of the records is held out for early stopping and for
        the error scales of the ``recon`` score.

        Args:
            data: normal records (the kind's input: a table, images...).
            source: name for error messages.
            on_epoch: called after every epoch with its record: ``epoch``, ``train_loss`` and
                ``val_loss`` (the kind's objective: mean squared error for an AE, negative
                ELBO for a VAE), ``val_recon_mse`` (mean squared error per feature of the
                deterministic reconstruction of the validation rows, the same quantity for
                every kind).

        Returns:
            self
        """
        p = self.params
        self.preprocessor_ = self._new_preprocessor().fit(data, source)
        X, _ = self.preprocessor_.transform(data, source)
        if len(X) < MIN_FIT_ROWS:
            raise DataError(f"{len(X)} records; at least {MIN_FIT_ROWS} are needed to fit",
                            source=source)
        order = np.random.default_rng(p.seed).permutation(len(X))
        n_val = max(2, int(round(p.validation_fraction * len(X))))
        X_val, X_train = X[order[:n_val]], X[order[n_val:]]
        self.resolved_ = self._resolve(len(X_train), X.shape[1])
        folds = _folds(len(X_train), p.n_models, p.seed) if p.cross_fit else None
        torch.manual_seed(p.seed)
        self.network_ = self._build(X.shape[1])
        self.history_ = self._train(torch.from_numpy(X_train), torch.from_numpy(X_val), on_epoch,
                                    folds)
        self.prior_ = self._aggregate_posterior(X_train, folds)
        with torch.no_grad():
            errors = self._squared_errors(torch.from_numpy(X_val))
        self.feature_scale_ = self._feature_scale(errors)
        self._reference_rows: np.ndarray | None = None
        self.knn_mean_ = type(self).knn_mean_  # a refit loaded model scores as a new one
        self._fit_scores(X_train, X_val)
        self.calibrations_: dict[str, ScoreCalibration] = {}
        if folds is not None:
            scores = self._out_of_fold_scores(X_train, X_val, folds)
            self.calibrations_ = {k: ScoreCalibration.fit(v, p.target_fpr)
                                  for k, v in scores.items()}
        del self._reference_rows
        return self

    @property
    def calibrated_by_fit(self) -> bool:
        """Whether :meth:`fit` calibrates the thresholds itself (cross-fitting): then no
        normal records need be held out for :meth:`calibrate`."""
        return bool(self.params.cross_fit)

    def _out_of_fold_scores(self, X_train: np.ndarray, X_val: np.ndarray, folds: np.ndarray
                            ) -> dict[str, np.ndarray]:
        """Every score kind of every record :meth:`fit` saw, each from networks that did not
        train on it: the validation rows by the ensemble, fold m by member m (see the module
        docstring). The ``knn`` term leaves each record out of its own neighbours, as a new
        record is not among them; ``combined`` is standardised on these scores."""
        network, prior, reference = self.network_, self.prior_, self.reference_
        self.reference_ = None  # the neighbour terms below, with every reference row
        try:
            parts = [self._raw_from_matrix(X_val)]
            for m in range(self.params.n_models):
                self.network_ = _Member(network, m)
                if prior is not None:
                    self.prior_ = {k: v[m : m + 1] for k, v in prior.items()}
                parts.append(self._raw_from_matrix(X_train[folds == m]))
        finally:
            self.network_, self.prior_, self.reference_ = network, prior, reference
        scores = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        if reference is not None and self._reference_rows is not None:
            own = np.full(len(X_train), -1)  # each training row's place among the references
            own[self._reference_rows] = np.arange(len(self._reference_rows))
            rows = np.concatenate([np.flatnonzero(folds == m)
                                   for m in range(self.params.n_models)])  # the parts' order
            scores["knn"] = np.concatenate([
                self._neighbour_distances(X_val),
                self._neighbour_distances(X_train[rows], exclude=own[rows])])
            self.combination_ = {k: list(robust_location_scale(scores[k]))
                                 for k in (self.params.network_primary, "knn")}
            scores["combined"] = self._combined(scores)
        return scores

    def _fit_scores(self, X_train: np.ndarray, X_val: np.ndarray) -> None:
        """What the scores learn beyond the network: the ``knn`` reference rows and the
        ``combined`` standardisation, on the validation normals here (on every training normal
        when cross-fitting, see :meth:`_out_of_fold_scores`); a kind may add its own."""
        p = self.params
        if p.neighbours:
            rows = np.random.default_rng(p.seed + 2).permutation(len(X_train))[:REFERENCE_ROWS]
            self._reference_rows = np.sort(rows)
            self.reference_ = torch.from_numpy(np.ascontiguousarray(X_train[self._reference_rows]))
            raw = self._raw_from_matrix(X_val)
            self.combination_ = {k: list(robust_location_scale(raw[k]))
                                 for k in (p.network_primary, "knn")}

    def _aggregate_posterior(self, X_train: np.ndarray, folds: np.ndarray | None = None
                             ) -> dict[str, torch.Tensor] | None:
        """Posterior means and log-variances, each (M, R, k), of up to
        ``AGGREGATE_PRIOR_ROWS`` random training records: the ``agg_elbo`` score's prior.
        With ``folds`` (cross-fitting), member m's records are drawn from those it trained
        on. None for an autoencoder or a kind without ``agg_elbo``."""
        if "agg_elbo" not in self.score_kinds:
            return None
        rng = np.random.default_rng(self.params.seed + 1)
        if folds is None:
            rows = np.sort(rng.permutation(len(X_train))[:AGGREGATE_PRIOR_ROWS])
            return self._posteriors(X_train[rows])
        pools = [np.flatnonzero(folds != m) for m in range(self.params.n_models)]
        size = min(AGGREGATE_PRIOR_ROWS, *(len(pool) for pool in pools))
        each = [self._posteriors(X_train[np.sort(rng.permutation(pool)[:size])])
                for pool in pools]
        return {k: torch.cat([e[k][m : m + 1] for m, e in enumerate(each)]).contiguous()
                for k in ("mu", "logvar")}

    def _posteriors(self, X: np.ndarray) -> dict[str, torch.Tensor]:
        """Every member's posterior means and log-variances of rows X, each (M, n, k)."""
        mus, logvars = [], []
        with torch.no_grad():
            for i in range(0, len(X), 256):
                mu, logvar = self.network_.encode(torch.from_numpy(X[i : i + 256]))
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

    def _loss(self, x_in: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | None,
              weights: torch.Tensor | None = None,
              posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Training objective, averaged over the batch and the ensemble's members; with
        ``weights`` (M, n) of 0/1, over the (member, record) pairs it marks. A VAE's
        ``posterior`` of ``x_in`` (with ``eps``), when the caller has it, saves encoding."""
        net = self.network_
        if not self._variational:
            if weights is None:
                return (net(x_in) - x).pow(2).mean()
            per = (net(x_in) - x).pow(2).mean(dim=-1)  # (M, n)
        else:
            if eps is not None:  # deterministic validation loss: one fixed draw for every record
                eps = eps[:1]
            if posterior is None:
                x_hat, mu, logvar = net(x_in, eps)  # (M, n, d), (M, n, k), (M, n, k)
            else:
                mu, logvar = posterior
                x_hat = net.decode(mu + eps * torch.exp(0.5 * logvar))
            per = (gaussian_nll_rows(x, x_hat, net.decoder_logvar)  # (M, n)
                   + self.params.beta * kl_to_standard_normal(mu, logvar))
            if weights is None:
                return per.mean()
        return (per * weights).sum() / weights.sum().clamp(min=1.0)

    def _batches(self, n: int, folds: np.ndarray | None, g: torch.Generator
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One epoch's batches of the n training rows, each as ``(rows, weights)``.

        Without folds, or for a kind without :attr:`member_batches`: a seeded shuffle of the
        rows in batches of ``batch_size``, (B,) row indices shared by every member; with folds,
        (M, B) weights of 0 where member m skips fold m. With folds and
        :attr:`member_batches`: every member's own shuffle of the rows it trains on (all but
        its fold), (M, B) row indices (the shorter shuffles wrap around; B at most the largest
        member's rows) and no weights, so no arithmetic goes to (member, row) pairs that weigh
        nothing."""
        batch = self.resolved_["batch_size"]
        if folds is None or not self.member_batches:
            perm = torch.randperm(n, generator=g)
            trains = None if folds is None else (
                torch.from_numpy(folds)[None, :] != torch.arange(self.params.n_models)[:, None]
            ).float()
            for i in range(0, n, batch):
                rows = perm[i : i + batch]
                yield rows, None if trains is None else trains[:, rows]
            return
        pools = [torch.from_numpy(np.flatnonzero(folds != m)) for m in range(self.params.n_models)]
        longest = max(len(pool) for pool in pools)
        batch = min(batch, longest)  # no row twice in a batch
        steps = math.ceil(longest / batch)
        order = torch.stack([pool[torch.randperm(len(pool), generator=g)].repeat(
            math.ceil(steps * batch / len(pool)))[: steps * batch] for pool in pools])
        for i in range(steps):
            yield order[:, i * batch : (i + 1) * batch], None

    def _validation(self, X_val: torch.Tensor, eps: torch.Tensor) -> tuple[float, float]:
        """An epoch's validation loss (:meth:`_loss` with the fixed draw ``eps``) and mean
        squared error of the deterministic reconstruction (``val_recon_mse``), from one pass
        of the network where they share it: an autoencoder's are the same errors, a VAE's
        start from the same encoding."""
        if not self._variational:
            mse = float(self._loss(X_val, X_val, eps))
            return mse, mse
        posterior = self.network_.encode(X_val)
        return (float(self._loss(X_val, X_val, eps, posterior=posterior)),
                float(self._squared_errors(X_val, posterior).mean()))

    def _gradient_step(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                                         torch.Tensor]:
        """What one training step computes, built once per training run (after the parameters
        have their gradients): given a batch's inputs, targets and (member, record) weights, its
        training loss (:meth:`_loss`, detached), with the gradient added to every parameter's
        ``.grad`` (zeroed before the call). Autograd's here; a kind whose networks have their
        gradients written out by hand may compute them itself."""
        def step(x_in: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None
                 ) -> torch.Tensor:
            loss = self._loss(x_in, x, None, weights)
            loss.backward()
            return loss.detach()
        return step

    def _train(self, X_train: torch.Tensor, X_val: torch.Tensor,
               on_epoch: Callable[[dict[str, float]], None] | None,
               folds: np.ndarray | None = None) -> list[dict[str, float]]:
        """The training loop: seeded shuffles, Adam, early stopping on the validation loss.
        With ``folds``, member m skips the training records of fold m."""
        p = self.params
        with _flush_denormals(), flat_parameters(self.network_) as flat:
            opt = FlatAdam(flat, lr=p.learning_rate, weight_decay=p.weight_decay)
            history = self._epochs(X_train, X_val, on_epoch, folds, opt, self._gradient_step())
        self.network_.eval()
        return history

    def _epochs(self, X_train: torch.Tensor, X_val: torch.Tensor,
                on_epoch: Callable[[dict[str, float]], None] | None,
                folds: np.ndarray | None, opt: FlatAdam,
                gradients: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None],
                                    torch.Tensor]) -> list[dict[str, float]]:
        """Epochs of ``opt`` steps until the epoch cap or early stopping; leaves the network
        with the weights of its best validation loss."""
        p, r = self.params, self.resolved_
        g = torch.Generator().manual_seed(p.seed)
        eps_val = self._eps(1)
        best, best_state, since_best = math.inf, None, 0
        history: list[dict[str, float]] = []
        bar = _progress(r["max_epochs"], f"training {p.kind}")
        start = time.perf_counter()
        for epoch in range(1, r["max_epochs"] + 1):
            self.network_.train()
            total, seen = 0.0, 0
            for rows, weights in self._batches(len(X_train), folds, g):
                xb = X_train[rows]
                x_in = xb + p.noise_std * torch.randn(xb.shape, generator=g) if p.noise_std else xb
                opt.zero_grad()
                loss = gradients(x_in, xb, weights)
                opt.step()
                total += float(loss) * rows.shape[-1]
                seen += rows.shape[-1]
            self.network_.eval()
            with torch.no_grad():
                val, val_recon = self._validation(X_val, eps_val)
            train_loss = total / seen
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val,
                            "val_recon_mse": val_recon})
            if on_epoch:
                on_epoch(history[-1])
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
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call "
                                 "fit(normal_data) first")

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

    def _variational_terms(self, x: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor],
                           eps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A VAE's scores from one decoder pass over the posterior mean and the draws ``eps``
        (K, k): the (n, d) squared errors of the posterior mean's reconstruction (as
        :meth:`_squared_errors`), and the (n,) −ELBO under the N(0, I) prior (``elbo``) and,
        where the model has one, under the aggregate prior (``agg_elbo``), each averaged over
        the ensemble's members. ``posterior``: ``network_.encode(x)``."""
        net = self.network_
        mu, logvar = posterior  # (M, n, k)
        # Draw 0 is the posterior mean itself (a zero draw): one batched decode serves recon too.
        eps = torch.cat([eps.new_zeros(1, eps.shape[1]), eps])[None, :, None, :]  # (1, 1+K, 1, k)
        z = mu.unsqueeze(1) + eps * torch.exp(0.5 * logvar).unsqueeze(1)  # (M, 1+K, n, k)
        x_hat = net.decode(z)  # (M, 1+K, n, d)
        err = (x_hat[:, 0] - x).pow(2).mean(dim=0)
        nll = gaussian_nll_rows(x, x_hat[:, 1:], net.decoder_logvar).mean(dim=1)  # (M, n)
        out = {"elbo": (nll + kl_to_standard_normal(mu, logvar)).mean(dim=0)}
        if self.prior_ is not None:
            kl = kl_to_mixture_bound(mu, logvar, self.prior_["mu"], self.prior_["logvar"])
            out["agg_elbo"] = (nll.double() + kl).mean(dim=0)
        return err, out

    def _matrix(self, data: Any, source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The preprocessing's one way in: (n, n_features) float32 and the kind's extras."""
        self._check_fitted()
        return self.preprocessor_.transform(data, source)

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Every score kind of encoded rows X, chunk by chunk (memory bounded)."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.score_kinds}
        scale = torch.from_numpy(self.feature_scale_.astype(np.float32))
        eps = self._eps(self.params.mc_samples) if self._variational else None
        with torch.inference_mode():
            step = self._score_chunk(X.shape[1])
            for i in range(0, len(X), step):
                x = torch.from_numpy(X[i : i + step])
                if self._variational:
                    err, chunk = self._variational_terms(x, self.network_.encode(x), eps)
                else:
                    err, chunk = self._squared_errors(x), {}
                chunk["recon"] = self._recon(err / scale).double()
                chunk.update(self._derived_scores(x, chunk))
                for k, v in chunk.items():
                    out[k].append(v.double().numpy())
                if self.reference_ is not None:
                    out["knn"].append(self._neighbour_distances(x))
        raw = {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}
        if self.reference_ is None:  # the caller adds the neighbour terms (out-of-fold scores)
            for k in NEIGHBOUR_SCORES:
                raw.pop(k, None)
        elif self.combination_ is not None:
            raw["combined"] = self._combined(raw)
        return raw

    def _combined(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) ``combined``: the mean of the network's primary score and ``knn``, each
        standardised by ``combination_`` (median and interquartile range)."""
        return np.mean([(raw[k] - loc) / scale for k, (loc, scale) in self.combination_.items()],
                       axis=0)

    def _recon(self, scaled: torch.Tensor) -> torch.Tensor:
        """(n,) ``recon`` scores from the (n, d) squared errors divided by ``feature_scale_``:
        their mean (a data kind may weigh them otherwise)."""
        return scaled.mean(dim=1)

    def _derived_scores(self, x: torch.Tensor, raw: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """Score kinds a data kind derives from a chunk's rows ``x`` (n, d) and its network
        scores ``raw`` (each (n,)); none here."""
        return {}

    def _neighbour_distances(self, x: torch.Tensor | np.ndarray, exclude: np.ndarray | None = None
                             ) -> np.ndarray:
        """(n,) mean Euclidean distance of each row of ``x`` to its ``neighbours`` nearest
        reference rows (float64 for the expanded squared distances), in chunks (a model saved
        before this took the distance to the ``neighbours``-th alone: ``knn_mean_``). ``exclude``:
        per row, the place of a reference row not to count (the row itself), or -1."""
        ref, ref_sq = self._reference64()
        k = min(self.params.neighbours, ref.shape[0] - (exclude is not None))
        x = torch.as_tensor(x)
        out = []
        step = self._score_chunk(x.shape[1])
        for i in range(0, len(x), step):
            xd = x[i : i + step].double()
            # |r|^2 - 2 x.r in one product; |x|^2 is the same for a row's every reference, so
            # it is added to the k nearest only
            part = torch.addmm(ref_sq, xd, ref.T, alpha=-2.0)
            if exclude is not None:
                own = torch.from_numpy(exclude[i : i + step])
                hit = torch.nonzero(own >= 0).squeeze(1)
                part[hit, own[hit]] = torch.inf
            d2 = part.topk(k, dim=1, largest=False).values + xd.pow(2).sum(1, keepdim=True)
            nearest = d2.clamp_(min=0).sqrt()
            out.append((nearest.mean(1) if self.knn_mean_ else nearest[:, -1]).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def _reference64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``reference_`` in float64 and its rows' squared lengths, made once per reference
        (scoring calls the search chunk by chunk, a service record by record)."""
        cached = self.__dict__.get("_reference_cache")
        if cached is None or cached[0] is not self.reference_:
            ref = self.reference_.double()
            cached = (self.reference_, ref, ref.pow(2).sum(1))
            self.__dict__["_reference_cache"] = cached
        return cached[1], cached[2]

    def _score_chunk(self, n_features: int) -> int:
        """Records per scoring pass: up to ``_SCORE_CHUNK``, fewer when one record's
        intermediates are large (see ``_SCORE_BUDGET``)."""
        p = self.params
        per_record = p.n_models * n_features * (1 + p.mc_samples if self._variational else 1)
        if self.prior_ is not None:
            per_record = max(per_record, 2 * self.prior_["mu"].shape[:2].numel())
        if self.reference_ is not None:
            per_record = max(per_record, 2 * self.reference_.shape[0])
        return int(min(_SCORE_CHUNK, max(64, _SCORE_BUDGET // per_record)))

    def raw_scores(self, data: Any, source: str = "data") -> dict[str, np.ndarray]:
        """Every score kind for every record, before calibration.

        Returns:
            mapping score kind -> (n_records,) float64 array.
        """
        X, _ = self._matrix(data, source)
        return self._raw_from_matrix(X)

    # -- calibration -------------------------------------------------------------------------
    def calibrate(self, data: Any, target_fpr: float | None = None,
                  source: str = "calibration data") -> BaseDetector:
        """Set a threshold per score kind at ``target_fpr`` from held-out normal records.

        The records must not have been used by :meth:`fit`. Their scores are kept, so any
        later score maps to a conformal p-value.
        """
        params = self.params
        if target_fpr is not None:  # checked first: a refused target leaves the model as it was
            if isinstance(target_fpr, numbers.Real) and not isinstance(target_fpr, bool):
                target_fpr = float(target_fpr)
            params = dataclasses.replace(params, target_fpr=target_fpr)
        scores = self.raw_scores(data, source)
        self.calibrations_ = {
            k: ScoreCalibration.fit(v, params.target_fpr) for k, v in scores.items()
        }
        self.params = params
        return self

    # -- scoring (score_columns, score, predict: CalibratedScores) ------------------------
    def explain(self, data: Any, source: str = "data") -> np.ndarray:
        """Where each record departs from normal: the terms of its ``recon`` score.

        Returns:
            tables: (n_records, n_input_columns), each column's scaled squared error (one-hot
            blocks summed into their column; the order of ``preprocessor_.input_columns_``);
            images: (n_images, H, W), per pixel, averaged over channels.
        """
        X, _ = self._matrix(data, source)
        return self._explanation_of(X)

    def _explanation_of(self, X: np.ndarray) -> np.ndarray:
        step = self._score_chunk(X.shape[1])
        with torch.inference_mode():
            err = [self._squared_errors(torch.from_numpy(X[i : i + step])).double().numpy()
                   for i in range(0, len(X), step)]
        errors = np.concatenate(err) if err else np.zeros((0, X.shape[1]))
        return self._explain(errors / self.feature_scale_)

    # -- latent-space tools ------------------------------------------------------------------
    def encode(self, data: Any, source: str = "data") -> np.ndarray:
        """(n_records, latent_dim) latent codes (posterior means for a VAE); in an ensemble,
        the first member's."""
        X, _ = self._matrix(data, source)
        step = self._score_chunk(X.shape[1])
        parts = []
        with torch.inference_mode():
            for i in range(0, len(X), step):
                z = self.network_.encode(torch.from_numpy(X[i : i + step]))
                parts.append((z[0] if isinstance(z, tuple) else z)[0])
        if not parts:
            return np.zeros((0, self.resolved_["latent_dim"]))
        return torch.cat(parts).double().numpy()

    def decode(self, z: np.ndarray) -> Any:
        """Latent codes (n, latent_dim) to data in the input's own form (a table's columns,
        images (n, C, H, W)), by the first member of an ensemble."""
        return self.preprocessor_.inverse_transform(self._decoded(z))

    def _decoded(self, z: np.ndarray) -> np.ndarray:
        """(n, n_features) the first member's decoding of latent codes (n, latent_dim)."""
        self._check_fitted()
        z_t = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        with torch.inference_mode():
            return self.network_.decode(z_t.expand(self.params.n_models, *z_t.shape))[0].numpy()

    def reconstruct(self, data: Any, source: str = "data") -> Any:
        """Reconstructions of the records, in the input's own form."""
        return self.decode(self.encode(data, source))

    def sample(self, n: int, seed: int = 0) -> Any:
        """VAE only: ``n`` records generated from the prior N(0, I)."""
        self._require_vae("sample")
        g = torch.Generator().manual_seed(seed)
        return self.decode(torch.randn(n, self.resolved_["latent_dim"], generator=g).numpy())

    def interpolate(self, a: Any, b: Any, steps: int = 8) -> Any:
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
        """Write ``weights.pt`` (state dict), ``detector.json`` and ``preprocessing.json``
        (and ``aggregate_prior.pt`` for a VAE); see :mod:`training.detector.persistence`."""
        from training.detector.persistence import save_detector

        self._check_calibrated()
        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | Path) -> BaseDetector:
        """Load a detector written by :meth:`save` (tensors are read with ``weights_only``)."""
        from training.detector.persistence import load_detector

        det = load_detector(path)
        if not isinstance(det, cls):
            raise DataError(f"{path}: holds a {type(det).__name__}, not a {cls.__name__}")
        return det


def _folds(n: int, n_models: int, seed: int) -> np.ndarray:
    """(n,) the fold of each training record, 0..M-1 (the member that skips it), or -1 for
    records every member trains on: a random ``CROSS_FIT_COVERAGE`` of them get a fold."""
    rank = np.random.default_rng(seed + 3).permutation(n)
    return np.where(rank < int(round(CROSS_FIT_COVERAGE * n)), rank % n_models, -1)


class _Member(torch.nn.Module):
    """Member ``m`` of an ensemble behind the ensemble's own contract (M = 1): the scores of
    :class:`BaseDetector` computed through it are that member's alone."""

    def __init__(self, ensemble: torch.nn.Module, m: int):
        super().__init__()
        self.ensemble, self.m = ensemble, m
        self.n_members = 1

    def _pick(self, out: Any) -> Any:
        if isinstance(out, tuple):
            return tuple(o[self.m : self.m + 1] for o in out)
        return out[self.m : self.m + 1]

    @property
    def decoder_logvar(self) -> torch.Tensor:
        return self.ensemble.decoder_logvar[self.m : self.m + 1]

    def encode(self, x: torch.Tensor) -> Any:
        return self._pick(self.ensemble.encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # Every member decodes this member's codes; only this member's output is kept.
        return self._pick(self.ensemble.decode(z.expand(self.ensemble.n_members, *z.shape[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # autoencoders
        return self.decode(self.encode(x))


@contextlib.contextmanager
def _flush_denormals() -> Iterator[None]:
    """Subnormal floats read and written as zero while the block runs (on this thread, where
    the CPU supports it). Adam's moment estimates of parameters whose gradients vanish (a ReLU
    unit that stopped firing) decay into the subnormal range, where CPU float arithmetic is
    many times slower: training took 15-20% longer for it. Values that small (below 1.2e-38)
    change no step that matters. torch cannot read the setting back, so it is left off, the
    default, afterwards."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _progress(total: int, desc: str):
    """A tqdm bar on an interactive terminal, nothing otherwise (logs carry progress then)."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=False)
