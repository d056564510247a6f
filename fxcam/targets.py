"""What is explained: a scalar score per image, computed from the model's output.

A target is any ``callable(output_row) -> scalar tensor``: it receives one image's row of the
model output (``logits[i]``) and returns the score whose gradient is explained. Integers
are shorthand for :class:`ClassifierOutput` and are evaluated batched (one ``gather``).
pytorch-grad-cam targets (``ClassifierOutputTarget`` ...) are callables of the same form and
work unchanged.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import FxcamError

Target = int | Callable[[Tensor], Tensor]
Targets = None | int | Tensor | Sequence[Target] | Callable[[Tensor], Tensor]


class ClassifierOutput:
    """The raw logit of ``category`` (pytorch-grad-cam's ``ClassifierOutputTarget``)."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, output: Tensor) -> Tensor:
        return output[..., _check_index(self.category, output.shape[-1])]

    def __repr__(self) -> str:
        return f"ClassifierOutput({self.category})"


class SoftmaxOutput:
    """The softmax probability of ``category`` (``ClassifierOutputSoftmaxTarget``)."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, output: Tensor) -> Tensor:
        return torch.softmax(output, dim=-1)[..., _check_index(self.category, output.shape[-1])]

    def __repr__(self) -> str:
        return f"SoftmaxOutput({self.category})"


class SemanticSegmentation:
    """Sum of the ``category`` logits inside ``mask`` for a segmentation output row ``(K, H, W)``."""

    def __init__(self, category: int, mask: Tensor) -> None:
        self.category = int(category)
        self.mask = mask

    def __call__(self, output: Tensor) -> Tensor:
        return (output[self.category] * self.mask.to(output.device, output.dtype)).sum()


class Similarity:
    """Cosine similarity between an embedding row and a reference embedding (image retrieval)."""

    def __init__(self, reference: Tensor) -> None:
        self.reference = reference

    def __call__(self, output: Tensor) -> Tensor:
        ref = self.reference.to(output.device, output.dtype)
        return torch.nn.functional.cosine_similarity(output.flatten(), ref.flatten(), dim=0)


def _is_index(t: Any) -> bool:
    """An integer class index: ``int`` or a numpy integer scalar (``numbers.Integral``), not a bool."""
    return isinstance(t, numbers.Integral) and not isinstance(t, bool) and type(t).__name__ != "bool_"


def _is_array(t: Any) -> bool:
    """A numpy array (or another array-like with ``__array__``) that is not a tensor, list or scalar."""
    return hasattr(t, "__array__") and hasattr(t, "shape") and not isinstance(t, Tensor) and getattr(t, "ndim", 0) > 0


def _check_index(i: int, num_classes: int) -> int:
    if not -num_classes <= i < num_classes:
        raise FxcamError(
            f"Target class {i} is out of range for a model with {num_classes} outputs; pass an index in "
            f"[0, {num_classes - 1}] or None to explain each image's top-1 class."
        )
    return i % num_classes


def resolve(targets: Targets, output: Any) -> tuple[Tensor, Tensor | None]:
    """Scores ``(N,)`` for the batch and, for class-index targets, the class indices ``(N,)``.

    ``targets`` is None (each image's top-1 class), an int (the same class for all), a
    sequence of ints and/or callables (one per image), an int tensor ``(N,)``, or one callable
    applied to every row.
    """
    if not isinstance(output, Tensor):
        if callable(targets):
            scores = targets(output)
            return scores.reshape(-1), None
        raise FxcamError(
            f"The model returns {type(output).__name__}, not a tensor of logits: pass targets= a callable that maps "
            f"that output to one score per image (shape (N,))."
        )
    n = output.shape[0]
    logits = logits_of(output)
    k = logits.shape[1]
    if targets is None:
        return resolve_indices(None, output)
    if _is_array(targets):  # a numpy array of class indices
        targets = torch.as_tensor(targets)
    if isinstance(targets, (bool, str, bytes)):
        raise FxcamError(
            f"targets={targets!r} is not a class index: pass an int (one class for all images), a list of ints or "
            f"callables (one per image), an int tensor (N,), a callable, or None (each image's top-1 class)."
        )
    elif _is_index(targets):
        idx = torch.full((n,), _check_index(int(targets), k), device=output.device, dtype=torch.long)
    elif isinstance(targets, Tensor):
        if targets.dtype.is_floating_point or targets.numel() != n:
            raise FxcamError(f"targets tensor must hold {n} integer class indices (one per image); got {targets!r}.")
        idx = targets.to(output.device, torch.long).reshape(n)
        if ((idx < -k) | (idx >= k)).any():
            raise FxcamError(f"targets {idx.tolist()} hold indices out of range [0, {k - 1}].")
        idx = idx % k
    elif callable(targets):
        return torch.stack([targets(row).reshape(()) for row in output]), None
    elif isinstance(targets, Sequence):
        if len(targets) != n:
            raise FxcamError(
                f"Got {len(targets)} targets for a batch of {n} images; pass one per image, one int for all, or None."
            )
        if all(_is_index(t) for t in targets):
            idx = torch.tensor([_check_index(int(t), k) for t in targets], device=output.device)
        else:
            picked = []
            for t, row in zip(targets, output):
                if _is_index(t):
                    picked.append(row.reshape(-1)[_check_index(int(t), k)])
                elif callable(t):
                    picked.append(t(row).reshape(()))
                else:
                    raise FxcamError(f"A target is an int or a callable(output_row) -> scalar; got {t!r}.")
            return torch.stack(picked), None
    else:
        raise FxcamError(
            f"targets must be None, an int, a list (one per image) or a callable; got {type(targets).__name__}."
        )
    return logits.gather(1, idx[:, None]).squeeze(1), idx


def logits_of(output: Tensor) -> Tensor:
    """``(N, K)`` class scores of a model output: ``(N, K)`` as is, ``(N, ...)`` flattened."""
    return output.reshape(output.shape[0], -1) if output.ndim > 2 else output


def resolve_indices(class_idx: Tensor | None, output: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`resolve` for class indices ``(N,)`` (negative ones count from the end) or None (top-1),
    with no Python branch on tensor values: traceable into a graph (``Explainer.to_graph``).
    Indices are not range-checked; :func:`resolve` checks them."""
    logits = logits_of(output)
    if class_idx is None:
        idx = logits.argmax(1)
    else:
        idx = torch.where(class_idx < 0, class_idx + logits.shape[1], class_idx)
    return logits.gather(1, idx[:, None]).squeeze(1), idx


def rows(targets: Targets, index: Tensor) -> Targets:
    """Targets for a batch whose row ``r`` is a copy of image ``index[r]`` (perturbed inputs).

    ``targets``: per-image class indices ``(N,)``, a per-image list, or one callable for all."""
    if isinstance(targets, Tensor):
        return targets[index.to(targets.device)]
    if callable(targets) or targets is None or _is_index(targets):
        return targets
    return [targets[i] for i in index.tolist()]


def repeat(targets: Targets, times: int) -> Targets:
    """The targets for ``times`` stacked copies of the batch (augmentations, noise samples)."""
    if _is_array(targets):
        targets = torch.as_tensor(targets)
    if isinstance(targets, Tensor):
        return targets.repeat(times)
    if isinstance(targets, Sequence) and not isinstance(targets, str):
        return list(targets) * times
    return targets
