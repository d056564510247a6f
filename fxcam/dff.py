"""Deep Feature Factorization (Collins et al., ECCV 2018): NMF of a layer's activations.

The activations of a batch at one layer, ``(N, C, *S)``, are a ``C x (N * |S|)`` matrix. Non-negative
matrix factorization splits it into ``K`` concepts ``W (C, K)`` (each a direction in feature space)
and their loadings ``H (K, N * |S|)`` (where in every image each concept is present). A classifier
applied to the concept vectors says which classes each concept stands for.

Same steps as pytorch-grad-cam 1.5.7's ``DeepFeatureFactorization`` / ``run_dff_on_image``:
the per-channel minimum is subtracted before the factorization (so the matrix is non-negative
whatever the activation function) and added back to the concepts; each image's concept maps
are min-max normalized and resized to the input; the classifier runs on the concepts.

The factorization is NMF with Lee & Seung's multiplicative updates (Frobenius loss), in torch
on the activations' device, seeded: :func:`nmf`. pytorch-grad-cam calls scikit-learn's
``NMF(init="random", random_state=0)`` (coordinate descent). NMF has many local optima and the two
solvers start from different random draws, so concepts agree in quality (reconstruction error),
not entry by entry; :func:`nmf` with the same initial factors reproduces scikit-learn's
``NMF(solver="mu")`` update for update.

>>> result = fxcam.dff.factorize(model.eval(), x, "layer4", n_components=5)
>>> result.maps.shape, result.scores.shape      # (N, 5, H, W) in [0, 1], (5, 1000) logits
>>> result.labels(names, top_k=2)                # per concept: "class:prob" lines
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import progress as _progress
from . import reshape as _reshape
from .errors import FxcamError
from .instrumented import instrument
from .ops import EPS, normalize, resize
from .passes.classifier import last_linear
from .trace import Layer

EPSILON = float(torch.finfo(torch.float32).eps)  # scikit-learn's guard for zero denominators


def random_init(x: Tensor, n_components: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """scikit-learn's ``init="random"``: ``|N(0, 1)| * sqrt(mean(X) / K)``, ``H`` drawn before ``W``.

    Drawn with ``torch.randn`` (from ``generator``, on its device), so the numbers differ from
    scikit-learn's numpy stream for the same seed; the distribution is the same.
    """
    m, n = x.shape
    device = generator.device if generator is not None else x.device
    avg = (x.mean() / n_components).sqrt()
    h = torch.randn((n_components, n), generator=generator, device=device, dtype=x.dtype).to(x.device)
    w = torch.randn((m, n_components), generator=generator, device=device, dtype=x.dtype).to(x.device)
    return (avg * w).abs(), (avg * h).abs()


def nmf(
    x: Tensor,
    n_components: int,
    *,
    max_iter: int = 500,
    tol: float = 1e-4,
    init: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, int]:
    r"""Non-negative matrix factorization ``x (M, P) ~ W (M, K) @ H (K, P)``, Frobenius loss.

    Multiplicative updates (Lee & Seung 2001), ``W`` first, then ``H``, every iteration:

    .. math:: W \leftarrow W \odot \frac{X H^\top}{W H H^\top},\qquad
              H \leftarrow H \odot \frac{W^\top X}{W^\top W H}

    (a zero denominator becomes float32 eps). Every 10 iterations the error
    :math:`\|X - WH\|_F` is checked and the loop stops when it fell by less than
    ``tol`` times the initial error since the last check: scikit-learn's ``NMF(solver="mu")``
    exactly, so the same ``init`` gives the same factors. ``init``: ``(W, H)``; default
    :func:`random_init` with ``generator``. Returns ``(W, H, iterations)``.
    """
    if x.ndim != 2:
        raise FxcamError(f"nmf factorizes a matrix (M, P); got shape {tuple(x.shape)}.")
    if (x < 0).any():
        raise FxcamError("nmf needs a non-negative matrix; subtract each row's minimum first (as factorize does).")
    if n_components < 1:
        raise FxcamError(f"n_components must be >= 1; got {n_components}.")
    w, h = init if init is not None else random_init(x, n_components, generator)
    w, h = w.to(x).clone(), h.to(x).clone()

    def error() -> Tensor:
        return torch.linalg.norm(x - w @ h)

    def guard(d: Tensor) -> Tensor:
        return torch.where(d == 0, torch.full_like(d, EPSILON), d)

    bar = _progress.bar(max_iter, "dff nmf", enabled=progress, unit="it")
    at_init = previous = error()
    it = 0
    for it in range(1, max_iter + 1):
        w = w * ((x @ h.T) / guard(w @ (h @ h.T)))
        h = h * ((w.T @ x) / guard((w.T @ w) @ h))
        bar.update(1)
        if tol > 0 and it % 10 == 0:
            err = error()
            bar.set_postfix(error=f"{float(err):.4g}")
            if (previous - err) / at_init < tol:
                break
            previous = err
    bar.close()
    return w, h, it


@dataclass
class Factorization:
    """Deep Feature Factorization of a batch at one layer.

    - ``concepts``: ``(C, K)``, each column a concept in the layer's feature space (with the
      per-channel offset added back, as pytorch-grad-cam returns them).
    - ``maps``: ``(N, K, H, W)``, each concept's loading per image, min-max normalized, at the output size.
    - ``loadings``: ``(N, K, *S)``, the raw loadings ``H`` at the layer's resolution.
    - ``scores``: ``(K, classes)``, the classifier's output on each concept (raw logits), or None.
    - ``error``: relative reconstruction error ``||X - WH||_F / ||X||_F`` of the offset activations.
    - ``iterations``: NMF iterations run.
    """

    concepts: Tensor
    maps: Tensor
    loadings: Tensor
    scores: Tensor | None
    error: float
    iterations: int

    def top_classes(self, k: int = 2) -> tuple[Tensor, Tensor]:
        """``(probabilities, classes)``, each ``(K, k)``: each concept's top classes under a softmax of ``scores``."""
        if self.scores is None:
            raise FxcamError("This factorization has no classifier scores; pass classifier= to factorize().")
        return torch.softmax(self.scores.float(), dim=-1).topk(k, dim=-1)

    def labels(self, names: Sequence[str] | dict[int, str] | None = None, top_k: int = 2) -> list[str]:
        """One legend per concept, ``"name:prob"`` lines for its ``top_k`` classes (pytorch-grad-cam's
        ``create_labels_legend`` on the softmax of the scores; a name is cut at its third comma)."""
        probs, classes = self.top_classes(top_k)
        out = []
        for p_row, c_row in zip(probs.tolist(), classes.tolist()):
            lines = []
            for p, c in zip(p_row, c_row):
                name = str(names[c]) if names is not None else str(c)
                lines.append(f"{','.join(name.split(',')[:3])}:{p:.2f}")
            out.append("\n".join(lines))
        return out


def factorize_activations(
    acts: Tensor,
    n_components: int = 5,
    *,
    max_iter: int = 500,
    tol: float = 1e-4,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, float, int]:
    """DFF of activations ``(N, C, *S)``: ``(concepts (C, K), loadings (N, K, *S), relative error, iterations)``.

    NaNs become 0; each channel's minimum over the batch is subtracted before the NMF and added
    back to the concepts (pytorch-grad-cam's ``dff``). ``generator`` (or a CPU generator seeded
    with ``seed``; ``seed=None``: torch's global generator) draws the initial factors.
    """
    if acts.ndim < 3:
        raise FxcamError(f"DFF needs feature maps (N, C, *S); got shape {tuple(acts.shape)}.")
    n, c, *spatial = acts.shape
    x = torch.nan_to_num(acts.float(), nan=0.0).transpose(0, 1).reshape(c, -1)
    offset = x.amin(1, keepdim=True)
    x = x - offset
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    w, h, iterations = nmf(x, n_components, max_iter=max_iter, tol=tol, generator=generator, progress=progress)
    err = float(torch.linalg.norm(x - w @ h) / torch.linalg.norm(x).clamp_min(1e-12))
    loadings = h.reshape(n_components, n, *spatial).transpose(0, 1)
    return w + offset, loadings, err, iterations


def factorize(
    model: nn.Module,
    x: Tensor,
    layer: Layer,
    n_components: int = 5,
    *,
    classifier: str | nn.Module | Callable[[Tensor], Tensor] | None = "auto",
    size: Sequence[int] | None = None,
    reshape: Any = "auto",
    max_iter: int = 500,
    tol: float = 1e-4,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    leaf_modules: Sequence[type] = (),
) -> Factorization:
    """Deep Feature Factorization of batch ``x`` at ``layer`` (pytorch-grad-cam's ``DeepFeatureFactorization``).

    One forward of the compiled graph under ``torch.inference_mode()`` gives the activations
    (reshaped to ``(N, C, *S)`` like the explainer's: ``reshape`` as in :class:`fxcam.Explainer`);
    :func:`factorize_activations` factorizes them (seeded: the same ``seed`` gives the same
    concepts); concept maps are normalized per image and concept and resized (bilinear) to
    ``size`` (default: the input's). ``classifier`` maps concepts ``(K, C)`` to class scores:
    ``"auto"`` (default) finds the model's last ``nn.Linear`` taking ``C`` features (``fc`` in a
    ResNet, the head of a ViT) or gives no scores; a module name, a module or a callable; None
    for no scores. ``progress=True`` shows a tqdm bar over the NMF iterations.
    The model is not modified.
    """
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise FxcamError(f"x must be a batched image tensor (N, C, H, W); got {getattr(x, 'shape', type(x).__name__)}.")
    inst = instrument(model, layer, leaf_modules=leaf_modules)
    (name,) = inst.layers
    with torch.inference_mode():
        _, raw = inst(x)
    act = raw[name]
    acts = _reshape.resolve(reshape, model, name, act, tuple(x.shape[2:]))(act).float()
    concepts, loadings, err, iterations = factorize_activations(
        acts, n_components, max_iter=max_iter, tol=tol, seed=seed, generator=generator, progress=progress
    )
    size = tuple(size) if size is not None else tuple(x.shape[2:])
    maps = resize(normalize(loadings, eps=EPS, start=2), size)

    if isinstance(classifier, str) and classifier == "auto":
        classifier = last_linear(inst.graph_module, concepts.shape[0])
    elif isinstance(classifier, str):
        try:
            classifier = model.get_submodule(classifier)
        except AttributeError as exc:
            raise FxcamError(f"classifier={classifier!r} is not a submodule of {type(model).__name__}.") from exc
    scores = None
    if classifier is not None:
        with torch.inference_mode():
            scores = classifier(concepts.T.contiguous().to(x.device))
    return Factorization(concepts, maps, loadings, scores, err, iterations)


__all__ = ["Factorization", "factorize", "factorize_activations", "nmf", "random_init"]
