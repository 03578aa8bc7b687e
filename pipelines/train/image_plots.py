"""Pictures logged with image models: reconstructions and maps, prior samples, interpolation,
and the latent space (matplotlib, no display needed)."""

from __future__ import annotations

import numpy as np

from pipelines.train.plots import plt


def _show(ax, image: np.ndarray, cmap: str | None = None, vmax: float | None = None) -> None:
    """Draw a (C, H, W) image in [0, 1] or an (H, W) map, without axes."""
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    gray = image.ndim == 2 and cmap is None
    ax.imshow(np.clip(image, 0, None) if cmap else np.clip(image, 0, 1),
              cmap="gray" if gray else cmap, vmin=0, vmax=vmax if cmap else 1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_grid(inputs: np.ndarray, recons: np.ndarray, maps: np.ndarray,
                        captions: list[str]):
    """Three rows (input, reconstruction, anomaly map), one column per image.

    Args:
        inputs, recons: (n, C, H, W) in [0, 1].
        maps: (n, H, W); all drawn on one colour scale, so columns compare.
        captions: (n,) column titles, e.g. "normal 0.93".
    """
    n = len(inputs)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n + 0.8, 4.2), squeeze=False)
    vmax = float(np.quantile(maps, 0.995)) if maps.size else 1.0
    for j in range(n):
        _show(axes[0, j], inputs[j])
        _show(axes[1, j], recons[j])
        _show(axes[2, j], maps[j], cmap="inferno", vmax=vmax)
        axes[0, j].set_title(captions[j], fontsize=7)
    for i, name in enumerate(("input", "reconstruction", "anomaly map")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def image_strip(images: np.ndarray, title: str, columns: int | None = None):
    """(n, C, H, W) images in a grid of ``columns`` (default: one row)."""
    n = len(images)
    cols = columns or n
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k < n:
            _show(ax, images[k])
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def latent_scatter(codes: np.ndarray, colour_by: np.ndarray, title: str):
    """Codes (n, k) as points in 2-D (the codes themselves if k <= 2, else their first two
    principal components), coloured by class or label."""
    if codes.shape[1] > 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=0).fit_transform(codes)
        axis = "principal component"
    else:
        xy = np.c_[codes, np.zeros((len(codes), 2 - codes.shape[1]))]
        axis = "latent dimension"
    fig, ax = plt.subplots(figsize=(6, 5))
    values = [str(v) for v in colour_by]
    groups = sorted(set(values), key=lambda v: (not v.lstrip("-").isdigit(),
                                                int(v) if v.lstrip("-").isdigit() else 0, v))
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for i, g in enumerate(groups):
        mask = np.array([v == g for v in values])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, color=cmap(i % cmap.N), label=g)
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2 if len(groups) > 8 else 1)
    fig.tight_layout()
    return fig
