"""The surrogate sampler (``--tuner surrogate``): a random forest, then a Gaussian process, with
expected improvement, as an Optuna sampler.

For system knobs that interact, a surrogate with expected improvement ranked best in the
database-tuning evaluations (``../shared/STACK.md``). ``SurrogateSampler``:

* draws its first ``n_startup_trials`` candidates from a scrambled Sobol sequence (space
  filling, seeded);
* then fits a model on the finished trials of the study (numeric knobs scaled to [0, 1], log
  knobs and wide integer ones in log space, categorical and bool knobs one-hot:
  ``tuners.encoding``; the process also tries the wide ones linear and keeps the scale that
  explains the values better): a random forest on the normal scores of the objective's ranks
  (robust to outliers and to imputed failures; the spread across its trees as the uncertainty)
  until ``gp_after`` trials have finished, a Gaussian process after (Matern 5/2, one length
  scale per feature, a noise term; on at most ``gp_max_points`` trials, the best half and a
  random rest) on the values themselves, the worst tenth capped at their 90th percentile
  (``CAP_QUANTILE``). The forest finds the good categories early; the process then carries a
  trend into untried directions, where a forest stays put on a plateau, and on the values it
  sees how much better the best region is, which ranks hide near an optimum
  (``benchmarks/RESULTS.md``, issue 17);
* learns from what did not run well: a failed trial, a candidate the rules blocked (PRUNED with
  constraint ``rules`` > 0, as ``tuners.trials.blocked_trial`` tells it) and a complete trial with a
  constraint above zero count as the worst value seen (the forest) or the cap (the process); a
  trial a pruner stopped early is left out (it is neither good nor failed);
* maximises expected improvement over thousands of random candidates and of perturbations of
  the best few trials, and takes the best one ``accept(params)`` (the rule engine) lets run.

Parameters outside the intersection search space are sampled independently at random, and
``accept`` cannot judge them: the first trial of a study (no search space known yet, unless a
trial is running: a job queues its default config there) and a knob new to the study are not
filtered. A
multi-objective study is left to TPE. Same seed and same history: same suggestions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuners.encoding import Encoder

__all__ = ["Accept", "SurrogateSampler"]

#: The rule engine as the sampler sees it: True if a candidate (Optuna params) may run. If it
#: also has ``many(list_of_params) -> list[bool]``, candidates are judged in one batch.
Accept = Callable[[dict[str, Any]], bool]

#: A fitted model: features of candidates -> (mean, standard deviation) of their scores.
Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: The Gaussian process's values are capped (worse values, failures) at this quantile of the
#: good ones: a handful of bad trials or outliers do not flatten the region of the best.
CAP_QUANTILE = 0.9


class SurrogateSampler(BaseSampler):
    """A random-forest surrogate with expected improvement (see the module's docstring).

    ``accept(params)`` (optional) says whether the rules let a candidate run; refused
    candidates are dropped before one is chosen. ``n_startup_trials`` Sobol draws come first;
    ``n_candidates`` random candidates and ``n_local`` perturbations of each of the
    ``n_best`` best trials are scored at every suggestion. The forest (``n_trees``,
    ``min_samples_leaf``) models the first ``gp_after`` trials, a Gaussian process the rest
    (``gp_after=0``: always the process; ``None``: always the forest)."""

    def __init__(self, seed: int | None = None, *, accept: Accept | None = None,
                 n_startup_trials: int = 10, n_trees: int = 32, n_candidates: int = 1000,
                 n_best: int = 5, n_local: int = 300, min_samples_leaf: int = 1,
                 max_accept_checks: int = 2000, xi: float = 0.01, gp_after: int | None = 20,
                 gp_max_points: int = 80) -> None:
        if gp_max_points < 2:
            raise ValueError(f"gp_max_points must be at least 2, but got {gp_max_points}")
        self._gp_after, self._gp_max_points = gp_after, gp_max_points
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._accept = accept
        self._n_startup = n_startup_trials
        self._n_trees, self._n_candidates = n_trees, n_candidates
        self._n_best, self._n_local = n_best, n_local
        self._min_samples_leaf = min_samples_leaf
        self._max_accept_checks = max_accept_checks
        self._xi = xi
        self._random = RandomSampler(seed=seed)
        self._sobol_seed = int(self._rng.randint(2**31 - 1))  # one sequence per sampler
        self._multi: TPESampler | None = None
        self._space = IntersectionSearchSpace(include_pruned=True)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    # -- the BaseSampler contract ----------------------------------------------------------------
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if len(study.directions) > 1:
            return self._tpe().infer_relative_search_space(study, trial)
        space = self._space.calculate(study)
        if not space:  # nothing finished yet: the knobs of a running trial (the default's)
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t.number != trial.number and t.distributions]
            space = dict(running[0].distributions) if running else {}
            for other in running[1:]:
                space = {n: d for n, d in space.items() if other.distributions.get(n) == d}
        return {name: d for name, d in space.items() if not d.single()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if len(study.directions) > 1:
            return self._tpe().sample_relative(study, trial, search_space)
        if not search_space:
            return {}
        encoder = Encoder(search_space)
        points, values, seen = self._history(study, encoder)
        good = ~np.isnan(values)
        if len(points) < self._n_startup or not good.any():
            # space filling until there is something to model (or nothing ran well yet)
            return self._startup(encoder, len(points), seen)
        return self._suggest(study, encoder, points, values, seen)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if len(study.directions) > 1:
            return self._tpe().sample_independent(study, trial, param_name, param_distribution)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.directions) > 1:
            self._tpe().before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if len(study.directions) > 1:
            self._tpe().after_trial(study, trial, state, values)

    # -- the model -----------------------------------------------------------------------------
    def _tpe(self) -> TPESampler:
        if self._multi is None:
            self._multi = TPESampler(seed=self._seed, multivariate=True, constant_liar=True)
        return self._multi

    def _history(self, study: optuna.Study, encoder: Encoder
                 ) -> tuple[np.ndarray, np.ndarray, set[tuple[Any, ...]]]:
        """The finished trials as points and values to minimise; NaN where a trial failed or
        was infeasible (imputed later), left out where a pruner stopped it early."""
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        rows, values, seen = [], [], set()
        for t in study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
            if any(n not in t.params for n in encoder.names):
                continue
            if any(not d._contains(d.to_internal_repr(t.params[n]))
                   for n, d in zip(encoder.names, encoder.dists, strict=True)):
                continue  # outside this space (a narrowed resume, a sibling's prior)
            infeasible = any(v > 0 for v in (t.constraints or {}).values())
            if t.state == TrialState.PRUNED and not infeasible:
                continue  # stopped early by a pruner: neither good nor a failure
            value = t.value if t.state == TrialState.COMPLETE and not infeasible else None
            if value is not None and not math.isfinite(value):
                value = None
            rows.append(encoder.encode(t.params))
            values.append(np.nan if value is None else sign * value)
            seen.add(encoder.key(t.params))
        points = np.array(rows).reshape(len(rows), len(encoder.names))
        return points, np.array(values, dtype=float), seen

    def _startup(self, encoder: Encoder, index: int, seen: set[tuple[Any, ...]]
                 ) -> dict[str, Any]:
        from scipy.stats import qmc

        sobol = qmc.Sobol(len(encoder.names), scramble=True, seed=self._sobol_seed)
        if index:
            sobol.fast_forward(index)
        first = encoder.from_unit(sobol.random(1))
        candidates = np.vstack([first, encoder.random(self._rng, 200)])
        return self._first_accepted(encoder, candidates, seen)

    def _first_accepted(self, encoder: Encoder, ordered: np.ndarray,
                        seen: set[tuple[Any, ...]]) -> dict[str, Any]:
        """The first candidate (in ``ordered``) not tried yet that the rules accept; the first
        untried one if the rules refuse them all (it is then told as blocked, and learned)."""
        candidates = [p for p in encoder.decode(ordered[: self._max_accept_checks])
                      if encoder.key(p) not in seen]
        if not candidates:
            return encoder.decode(ordered[:1])[0]
        if self._accept is None:
            return candidates[0]
        many = getattr(self._accept, "many", None)
        if many is not None:  # the rule engine judges thousands at once
            verdicts = iter(many(candidates))
            return next((p for p in candidates if next(verdicts)), candidates[0])
        return next((p for p in candidates if self._accept(p)), candidates[0])

    def _suggest(self, study: optuna.Study, encoder: Encoder, points: np.ndarray,
                 values: np.ndarray, seen: set[tuple[Any, ...]]) -> dict[str, Any]:
        from scipy.stats import norm, rankdata

        good = ~np.isnan(values)
        if self._gp_after is not None and len(points) >= self._gp_after:
            # the values themselves, the worst tenth and the failures capped
            cap = np.quantile(values[good], CAP_QUANTILE)
            scores = np.minimum(np.where(good, values, cap), cap)
            predict = self._fit_process(encoder, encoder.features(points), scores)
            xi = self._xi * float(np.std(scores[good]))  # the same margin on this scale
        else:
            imputed = np.where(good, values, np.nanmax(values))  # a failure is the worst seen
            # normal scores of the ranks: outliers and imputed failures do not flatten the rest
            scores = norm.ppf((rankdata(imputed) - 0.5) / len(imputed))
            predict = self._fit_forest(encoder.features(points), scores)
            xi = self._xi
        candidates = np.vstack([encoder.random(self._rng, self._n_candidates),
                                self._local(encoder, points, scores, good)])
        mean, std = predict(encoder.features(candidates))
        best = scores[good].min()
        ei = _expected_improvement(mean, std, best, xi)
        order = np.lexsort((mean, -ei))  # most improvement first; ties: the lower mean
        return self._first_accepted(encoder, candidates[order], seen)

    def _fit_forest(self, x: np.ndarray, y: np.ndarray) -> Predict:
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(
            n_estimators=self._n_trees, min_samples_leaf=self._min_samples_leaf,
            max_features=1.0, bootstrap=True, random_state=self._rng.randint(2**31 - 1),
        ).fit(x, y)

        def predict(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            per_tree = np.stack([tree.predict(z) for tree in forest.estimators_])
            return per_tree.mean(axis=0), per_tree.std(axis=0)
        return predict

    def _fit_process(self, encoder: Encoder, x: np.ndarray, y: np.ndarray) -> Predict:
        """The process with the wide integer knobs in log space, or on their linear scale where
        that explains the values better (the higher log marginal likelihood)."""
        predict, evidence = self._fit_gp(x, y)
        if not encoder.wide:
            return predict
        linear, linear_evidence = self._fit_gp(encoder.linear(x), y)
        return predict if evidence >= linear_evidence else (
            lambda z: linear(encoder.linear(z)))

    def _fit_gp(self, x: np.ndarray, y: np.ndarray) -> tuple[Predict, float]:
        """The Gaussian process on ``x`` and ``y``, and its log marginal likelihood."""
        from scipy.optimize import minimize
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
        from threadpoolctl import threadpool_limits  # installed with scikit-learn

        cap = self._gp_max_points
        if len(x) > cap:  # the best half and a random rest: a bounded time per suggestion
            order = np.argsort(y)
            rest = self._rng.choice(order[cap // 2:], cap - cap // 2, replace=False)
            keep = np.concatenate([order[: cap // 2], rest])
            x, y = x[keep], y[keep]

        def optimizer(obj: Any, x0: np.ndarray, bounds: Any) -> tuple[np.ndarray, float]:
            found = minimize(obj, x0, jac=True, bounds=bounds, method="L-BFGS-B",
                             options={"maxiter": 50})  # good enough, and bounded
            return found.x, found.fun

        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
            np.full(x.shape[1], 0.5), (1e-2, 20.0), nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
        # small matrices: BLAS threads only contend (3x slower); a length scale at its bound is
        # expected (a knob that does not matter), not a warning for the operator's terminal
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=optimizer,
                                          random_state=self._rng.randint(2**31 - 1)).fit(x, y)

        def predict(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with threadpool_limits(1):
                mean, std = gp.predict(z, return_std=True)
            return mean, std
        return predict, float(gp.log_marginal_likelihood_value_)

    def _local(self, encoder: Encoder, points: np.ndarray, scores: np.ndarray,
               good: np.ndarray) -> np.ndarray:
        """Perturbations of the best few trials: some knobs moved a little (numeric, by one of
        three step sizes) or switched (categorical), the others kept."""
        ranked = np.argsort(np.where(good, scores, np.inf))[: self._n_best]
        dims = len(encoder.names)
        out = []
        for i in ranked:
            base = np.repeat(points[i][None, :], self._n_local, axis=0)
            moved = self._rng.uniform(size=base.shape) < max(1.0 / dims, 0.3)
            moved[np.arange(self._n_local), self._rng.randint(dims, size=self._n_local)] = True
            scale = self._rng.choice([0.2, 0.05, 0.01], size=(self._n_local, 1))
            step = self._rng.normal(size=base.shape) * scale
            fresh = encoder.random(self._rng, self._n_local)
            for j in range(dims):
                if j in encoder.categorical:
                    base[:, j] = np.where(moved[:, j], fresh[:, j], base[:, j])
                else:
                    base[:, j] = np.clip(np.where(moved[:, j], base[:, j] + step[:, j],
                                                  base[:, j]), 0.0, 1.0)
            out.append(base)
        return np.vstack(out) if out else np.empty((0, dims))


def _expected_improvement(mean: np.ndarray, std: np.ndarray, best: float,
                          xi: float = 0.01) -> np.ndarray:
    """Expected improvement below ``best`` (minimising) of a normal with ``mean`` and ``std``."""
    from scipy.stats import norm

    gain = best - mean - xi
    safe = np.maximum(std, 1e-9)
    z = gain / safe
    ei = gain * norm.cdf(z) + safe * norm.pdf(z)
    return np.where(std > 1e-9, ei, np.maximum(gain, 0.0))

