"""Sparse-regression solvers: least squares, ridge, LASSO, group LASSO, OMP.

All solvers fit ``y ~ X @ beta`` without an intercept. They accept numpy arrays or torch
tensors and return the same kind (torch results keep ``X``'s dtype; the arithmetic runs in
float64 numpy). Objectives follow scikit-learn's conventions so ``backend="sklearn"`` and
``backend="native"`` solve the same problem:

- ridge: ``||y - X b||^2 + alpha ||b||^2``
- lasso: ``1/(2N) ||y - X b||^2 + alpha ||b||_1``
- group lasso: ``1/(2N) ||y - X b||^2 + alpha sum_g w_g ||b_g||_2`` (``w_g = sqrt(|g|)`` by default)

>>> import numpy as np
>>> X = np.eye(4) * 2.0  # orthogonal design, X^T X / N = I
>>> y = np.array([4.0, -1.0, 0.2, 0.0])
>>> lasso(X, y, alpha=0.3).round(3).tolist()  # soft-threshold of X^T y / N = [2, -0.5, 0.1, 0]
[1.7, -0.2, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import torch

from prunekit.errors import ConfigError

Backend = Literal["native", "sklearn"]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

_BACKENDS = ("native", "sklearn")


def _as_numpy(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        return a.astype(np.float64, copy=False)
    raise ConfigError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}")


def _like(result: np.ndarray, template: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(template, torch.Tensor):
        return torch.as_tensor(result, dtype=template.dtype, device=template.device)
    return result


def _check_xy(X: np.ndarray, y: np.ndarray, allow_2d_y: bool) -> None:
    if X.ndim != 2:
        raise ConfigError(f"X must be 2-D (samples, features), got shape {tuple(X.shape)}")
    if y.ndim not in ((1, 2) if allow_2d_y else (1,)):
        want = "1-D or 2-D" if allow_2d_y else "1-D (samples,)"
        raise ConfigError(f"y must be {want}, got shape {tuple(y.shape)}")
    if y.shape[0] != X.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}; they must match")


def _check_backend(backend: str) -> None:
    if backend not in _BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use 'native' or 'sklearn'")


def _sklearn_linear_model():
    try:
        from sklearn import linear_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "backend='sklearn' needs scikit-learn: pip install 'prunekit[regression]' (or use backend='native')"
        ) from exc
    return linear_model


def soft_threshold(z: ArrayT, t: float) -> ArrayT:
    """Elementwise ``sign(z) * max(|z| - t, 0)``, the proximal operator of ``t * |.|``.

    >>> soft_threshold(np.array([3.0, -0.5, -2.0]), 1.0).tolist()
    [2.0, -0.0, -1.0]
    """
    if isinstance(z, torch.Tensor):
        return torch.sign(z) * torch.clamp(z.abs() - t, min=0.0)
    return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


def group_soft_threshold(v: np.ndarray, t: float) -> np.ndarray:
    """Shrink the vector ``v`` towards 0 by ``t`` in Euclidean norm (0 when ``||v|| <= t``).

    >>> group_soft_threshold(np.array([3.0, 4.0]), 2.5).tolist()
    [1.5, 2.0]
    """
    norm = float(np.linalg.norm(v))
    if norm <= t:
        return np.zeros_like(v)
    return (1.0 - t / norm) * v


def least_squares(X: ArrayT, y: ArrayT) -> ArrayT:
    """Minimum-norm solution of ``min ||y - X b||^2`` (``y`` may be (N,) or (N, T)).

    >>> X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> least_squares(X, X @ np.array([0.5, -1.0])).round(6).tolist()
    [0.5, -1.0]
    """
    Xn, yn = _as_numpy(X, "X"), _as_numpy(y, "y")
    _check_xy(Xn, yn, allow_2d_y=True)
    beta, *_ = np.linalg.lstsq(Xn, yn, rcond=None)  # (p,) or (p, T)
    return _like(beta, X)


def ridge(X: ArrayT, y: ArrayT, alpha: float, backend: Backend = "native") -> ArrayT:
    """Ridge regression ``(X^T X + alpha I)^-1 X^T y`` (``y`` may be (N,) or (N, T)).

    >>> X = np.eye(3)
    >>> ridge(X, np.array([2.0, 4.0, 0.0]), alpha=1.0).tolist()
    [1.0, 2.0, 0.0]
    """
    _check_backend(backend)
    if alpha < 0:
        raise ConfigError(f"ridge alpha must be >= 0, got {alpha}")
    Xn, yn = _as_numpy(X, "X"), _as_numpy(y, "y")
    _check_xy(Xn, yn, allow_2d_y=True)
    if backend == "sklearn":
        model = _sklearn_linear_model().Ridge(alpha=alpha, fit_intercept=False, solver="cholesky")
        beta = np.asarray(model.fit(Xn, yn).coef_).T  # sklearn stores (T, p)
        return _like(np.ascontiguousarray(beta), X)
    p = Xn.shape[1]
    gram = Xn.T @ Xn + alpha * np.eye(p)  # (p, p)
    beta = np.linalg.solve(gram, Xn.T @ yn) if alpha > 0 else np.linalg.lstsq(Xn, yn, rcond=None)[0]
    return _like(beta, X)


def lasso_gram(
    gram: np.ndarray,
    xty: np.ndarray,
    alpha: float,
    max_iter: int = 1000,
    tol: float = 1e-8,
    positive: bool = False,
    beta0: np.ndarray | None = None,
) -> np.ndarray:
    """Coordinate descent for ``1/2 b^T G b - c^T b + alpha ||b||_1`` (``G = X^T X / N``, ``c = X^T y / N``).

    The covariance-update form of Friedman et al. (2007): one sweep costs O(p^2), independent of
    the number of samples, which is what channel selection (many samples, few channels) needs.
    Stops when the largest coefficient change in a sweep is below ``tol * max(1, max|b|)``.

    >>> lasso_gram(np.eye(2), np.array([1.0, 0.1]), alpha=0.2).round(6).tolist()
    [0.8, 0.0]
    """
    p = gram.shape[0]
    beta = np.zeros(p) if beta0 is None else np.array(beta0, dtype=np.float64)
    diag = np.diag(gram).copy()
    grad_part = gram @ beta  # (p,) = G b, kept up to date
    for _ in range(max_iter):
        max_change = 0.0
        for j in range(p):
            if diag[j] <= 0.0:
                if beta[j] != 0.0:
                    grad_part -= gram[:, j] * beta[j]
                    beta[j] = 0.0
                continue
            old = beta[j]
            z = xty[j] - grad_part[j] + diag[j] * old  # partial-residual correlation
            new = np.sign(z) * max(abs(z) - alpha, 0.0) / diag[j]
            if positive and new < 0.0:
                new = 0.0
            if new != old:
                grad_part += gram[:, j] * (new - old)
                beta[j] = new
                max_change = max(max_change, abs(new - old))
        if max_change <= tol * max(1.0, float(np.max(np.abs(beta))) if p else 1.0):
            break
    return beta


def lasso(
    X: ArrayT,
    y: ArrayT,
    alpha: float,
    max_iter: int = 1000,
    tol: float = 1e-8,
    positive: bool = False,
    backend: Backend = "native",
) -> ArrayT:
    """LASSO ``min 1/(2N) ||y - X b||^2 + alpha ||b||_1`` by coordinate descent with soft-thresholding.

    >>> X = np.eye(3) * np.sqrt(3)  # X^T X / N = I
    >>> lasso(X, np.array([3.0, 0.3, -3.0]) * np.sqrt(3), alpha=0.5).round(6).tolist()
    [2.5, 0.0, -2.5]
    """
    _check_backend(backend)
    if alpha < 0:
        raise ConfigError(f"lasso alpha must be >= 0, got {alpha}")
    Xn, yn = _as_numpy(X, "X"), _as_numpy(y, "y")
    _check_xy(Xn, yn, allow_2d_y=False)
    if backend == "sklearn":
        model = _sklearn_linear_model().Lasso(
            alpha=alpha, fit_intercept=False, max_iter=max_iter, tol=tol, positive=positive
        )
        return _like(np.asarray(model.fit(Xn, yn).coef_, dtype=np.float64), X)
    n = Xn.shape[0]
    gram = Xn.T @ Xn / n  # (p, p)
    xty = Xn.T @ yn / n  # (p,)
    return _like(lasso_gram(gram, xty, alpha, max_iter=max_iter, tol=tol, positive=positive), X)


def _group_index(groups: Sequence[int] | np.ndarray | torch.Tensor, p: int) -> list[np.ndarray]:
    labels = np.asarray(groups.tolist() if isinstance(groups, torch.Tensor) else groups)
    if labels.shape != (p,):
        raise ConfigError(f"groups must give one group label per column ({p}), got shape {labels.shape}")
    return [np.flatnonzero(labels == g) for g in np.unique(labels)]


def group_lasso(
    X: ArrayT,
    y: ArrayT,
    groups: Sequence[int] | np.ndarray | torch.Tensor,
    alpha: float,
    weights: Sequence[float] | None = None,
    max_iter: int = 5000,
    tol: float = 1e-9,
) -> ArrayT:
    """Group LASSO by accelerated proximal gradient (FISTA) with group soft-thresholding.

    Minimises ``1/(2N) ||y - X b||^2 + alpha * sum_g w_g ||b_g||_2`` where ``groups[j]`` is the
    group label of column ``j`` and ``w_g`` defaults to ``sqrt(group size)``. Whole groups
    become exactly zero.

    >>> X = np.eye(4) * 2.0  # X^T X / N = I, so the answer is group soft-thresholding of X^T y / N
    >>> group_lasso(X, np.array([6.0, 8.0, 0.2, 0.2]), [0, 0, 1, 1], alpha=1.0 / np.sqrt(2)).round(4).tolist()
    [2.4, 3.2, 0.0, 0.0]
    """
    if alpha < 0:
        raise ConfigError(f"group_lasso alpha must be >= 0, got {alpha}")
    Xn, yn = _as_numpy(X, "X"), _as_numpy(y, "y")
    _check_xy(Xn, yn, allow_2d_y=False)
    n, p = Xn.shape
    index = _group_index(groups, p)
    if weights is None:
        w = [float(np.sqrt(len(ix))) for ix in index]
    else:
        if len(weights) != len(index):
            raise ConfigError(f"weights must have one entry per group ({len(index)}), got {len(weights)}")
        w = [float(v) for v in weights]
    gram = Xn.T @ Xn / n  # (p, p)
    xty = Xn.T @ yn / n  # (p,)
    lipschitz = float(np.linalg.eigvalsh(gram)[-1]) if p else 0.0
    if lipschitz <= 0.0:
        return _like(np.zeros(p), X)
    step = 1.0 / lipschitz
    beta = np.zeros(p)
    momentum_point = beta.copy()
    t = 1.0
    for _ in range(max_iter):
        grad = gram @ momentum_point - xty  # (p,)
        z = momentum_point - step * grad
        new = np.zeros(p)
        for ix, wg in zip(index, w):
            new[ix] = group_soft_threshold(z[ix], step * alpha * wg)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        momentum_point = new + ((t - 1.0) / t_next) * (new - beta)
        change = float(np.max(np.abs(new - beta)))
        beta, t = new, t_next
        if change <= tol * max(1.0, float(np.max(np.abs(beta)))):
            break
    return _like(beta, X)


def omp(X: ArrayT, y: ArrayT, n_nonzero: int, backend: Backend = "native") -> ArrayT:
    """Orthogonal matching pursuit: greedily pick ``n_nonzero`` columns, refitting by least squares.

    Each step adds the column most correlated (after normalising columns) with the residual,
    then re-solves least squares on all chosen columns.

    >>> X = np.eye(5)
    >>> omp(X, np.array([0.0, 3.0, 0.0, -1.0, 0.1]), n_nonzero=2).tolist()
    [0.0, 3.0, 0.0, -1.0, 0.0]
    """
    _check_backend(backend)
    Xn, yn = _as_numpy(X, "X"), _as_numpy(y, "y")
    _check_xy(Xn, yn, allow_2d_y=False)
    p = Xn.shape[1]
    if not 1 <= n_nonzero <= p:
        raise ConfigError(f"n_nonzero must be in [1, {p}] (number of columns), got {n_nonzero}")
    if backend == "sklearn":
        model = _sklearn_linear_model().OrthogonalMatchingPursuit(
            n_nonzero_coefs=n_nonzero, fit_intercept=False
        )
        return _like(np.asarray(model.fit(Xn, yn).coef_, dtype=np.float64), X)
    norms = np.linalg.norm(Xn, axis=0)  # (p,)
    safe = np.where(norms > 0, norms, 1.0)
    chosen: list[int] = []
    residual = yn.copy()
    coef = np.zeros(0)
    for _ in range(n_nonzero):
        corr = np.abs(Xn.T @ residual) / safe  # (p,)
        corr[norms == 0] = -1.0
        corr[chosen] = -1.0
        j = int(np.argmax(corr))
        if corr[j] <= 0.0:  # residual already orthogonal to every remaining column
            break
        chosen.append(j)
        coef, *_ = np.linalg.lstsq(Xn[:, chosen], yn, rcond=None)
        residual = yn - Xn[:, chosen] @ coef
    beta = np.zeros(p)
    beta[chosen] = coef
    return _like(beta, X)
