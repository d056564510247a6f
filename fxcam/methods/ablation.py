"""AblationCAM: a channel's weight is the score drop when it is ablated; only the graph after the layer re-runs.

``ablationcam`` ablates one channel of the tapped activation at a time and re-runs only the
*suffix* of the graph (what comes after the layer, ``Instrumented.split_for(layer)``); the part
before the layer runs once. Rows (channel x image) run in chunks under a memory budget
(:mod:`fxcam.batching`), under ``torch.inference_mode()``. Channels whose ablation changes
nothing are skipped. ``progress=True`` on the explainer shows a progress bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import progress as _progress
from ..batching import chunks, rows_per_chunk
from ..errors import FxcamError
from ..ops import expand_as_weights as _expand
from ..probe import Probe
from .registry import register

ABLATION_VALUE = 1e7  # pytorch-grad-cam's AblationLayer: ablate to min - 1e7 unless the minimum is 0


def channel_axis(reshape: Callable[[Tensor], Tensor], raw: Tensor, layer: str) -> int:
    """The axis of the raw activation that ``reshape`` turns into the channel axis (dim 1)."""
    shape = (1, *raw.shape[1:])
    flat = torch.arange(math.prod(shape)).view(shape)
    try:
        idx = reshape(flat)
    except Exception as exc:  # a reshape that is not a pure re-indexing
        idx, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = f"it returned shape {tuple(idx.shape)}"
    if idx is not None and idx.ndim >= 2:
        channels = idx.shape[1]
        want = torch.arange(channels).view(1, channels, *([1] * (idx.ndim - 2)))
        for axis in range(1, raw.ndim):
            if shape[axis] != channels:
                continue
            stride = math.prod(shape[axis + 1 :])
            if torch.equal((idx // stride) % shape[axis], want.expand_as(idx)):
                return axis
    raise FxcamError(
        f"ablationcam ablates channels of the output {tuple(raw.shape)} of layer '{layer}', but cannot tell which of "
        f"its axes the reshape maps to channels ({why}). Use a reshape that only selects, folds and permutes "
        f"(fxcam.reshape.nchw/vit/swin)."
    )


def channels_to_ablate(acts: Tensor, ratio: float) -> Tensor:
    """pytorch-grad-cam's ``AblationLayer.activations_to_be_ablated`` for one image ``(C, *S)``.

    The EigenCAM projection of the activations, thresholded at 0.01 of its range, is a mask of
    "interesting" positions; each channel scores the share of its (min-shifted, max-scaled)
    magnitude inside the mask; the ``int(C * ratio)`` highest- and lowest-scoring channels are
    ablated (a channel with no magnitude scores NaN, which sorts as the highest, as in numpy).
    """
    c = acts.shape[0]
    if ratio >= 1.0:
        return torch.arange(c, device=acts.device)
    points = torch.nan_to_num(acts.flatten(1).T)
    points = points - points.mean(0)
    _, _, vh = torch.linalg.svd(points, full_matrices=False)
    proj = (points @ vh[0]).abs()
    proj = proj - proj.min()
    inside = (proj / proj.max()) > 0.01
    mag = acts.flatten(1).abs()
    mag = mag - mag.amin(1, keepdim=True)
    mag = mag / mag.amax(1, keepdim=True)
    score = (mag * inside).sum(1) / mag.sum(1)
    order = torch.argsort(score, stable=True)  # NaN last, like np.argsort
    k = int(c * ratio)
    return torch.unique(torch.cat([order.flip(0)[:k], order[:k]]))


@register(
    "ablationcam",
    kind="driver",
    summary="Ablation-CAM: channel weight = relative score drop when the channel is ablated (suffix re-run only).",
    paper="Desai & Ramaswamy, Ablation-CAM, WACV 2020. "
    "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_"
    "Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf",
)
def ablationcam(
    probe: Probe,
    batch_size: int | None = None,
    max_memory: int | None = None,
    ratio_channels_to_ablate: float = 1.0,
    skip_unchanged: bool = True,
) -> dict[str, Tensor]:
    r"""Ablation-CAM (Desai & Ramaswamy 2020) with pytorch-grad-cam 1.5.7's scoring.

    For image :math:`n` with score :math:`y` (the explained target) and channel :math:`k` of the
    tapped activation :math:`A`:

    .. math:: w_k = \frac{y - y_k}{y},\qquad L = \mathrm{ReLU}\big(\textstyle\sum_k w_k A_k\big)

    where :math:`y_k` is the score with channel :math:`k` replaced by the ablation value
    :math:`v`: 0 when the image's smallest activation at the layer is exactly 0 (post-ReLU
    maps), else that minimum minus 1e7 (pytorch-grad-cam's rule for layers with negative
    values). Only the graph after the layer runs for the ablated copies (the split's suffix,
    which also takes the values that skip over the layer, e.g. a residual branch), in chunks
    of channel x image rows: ``batch_size`` rows, or as many as fit in ``max_memory`` bytes
    (default: 64 MiB on CPU, 1 GiB elsewhere).

    - ``ratio_channels_to_ablate`` (pytorch-grad-cam's option, default 1.0 = every channel):
      below 1, only the ``int(C * ratio)`` channels with the highest and the lowest share of
      their activation inside the EigenCAM mask are ablated (:func:`channels_to_ablate`); the
      others get weight 0, i.e. pytorch-grad-cam's "original score".
    - ``skip_unchanged`` (default True): a channel already equal to the ablation value
      everywhere (an all-zero channel of a post-ReLU map) is not run: ablating it changes
      nothing, its weight is exactly 0. pytorch-grad-cam runs it and gets 0 up to float
      round-off.

    Deviations from pytorch-grad-cam: with a non-zero minimum, pytorch-grad-cam lowers the
    ablation value by a further 1e7 for every row of its batch (its ``AblationLayer`` takes the
    minimum of the batch it is modifying in place), so its weights depend on ``batch_size``;
    fxcam uses ``min - 1e7`` for every row, which is what pytorch-grad-cam computes with
    ``batch_size=1``. Its ``ratio_channels_to_ablate`` above 0.5 ablates some channels twice and
    mis-assigns the scores after them; fxcam ablates the union once. Ties in the channel score
    may order differently.
    """
    if not 0.0 < ratio_channels_to_ablate <= 1.0:
        raise FxcamError(f"ratio_channels_to_ablate must be in (0, 1]; got {ratio_channels_to_ablate}.")
    out = {}
    for layer in probe.layers:
        values = probe.clean_split_pass(layer)  # the clean pass comes from it: the graph before the layer runs once
        original = probe.scores.float()
        ablation = _Ablation(probe, layer, values, ratio_channels_to_ablate, skip_unchanged)
        ablated = original[:, None].repeat(1, ablation.channels)
        ablation.score_into(ablated, batch_size, max_memory)
        weights = (original[:, None] - ablated) / original[:, None]
        acts = probe.acts[layer]
        out[layer] = _expand(weights, acts) * acts
    return out


class _Ablation:
    """The ablated copies of one layer's boundary values: row ``r`` ablates channel ``ch[r]`` of image ``img[r]``."""

    def __init__(self, probe: Probe, layer: str, values: list[Any], ratio: float, skip_unchanged: bool) -> None:
        self.probe, self.layer, self.values = probe, layer, values
        self.split = probe.instrumented.split_for(layer)
        self.pos = self.split.boundary.index(probe.instrumented.nodes[layer])
        raw = values[self.pos]
        self.n = n = raw.shape[0]
        self.batched = [isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == n for v in values]
        axis = channel_axis(probe.reshapes[layer], raw, layer)
        self.channels = raw.shape[axis]
        low = raw.flatten(1).amin(1)
        self.value = torch.where(low == 0, torch.zeros_like(low), low - ABLATION_VALUE)  # (N,), raw dtype
        selected = torch.zeros(n, self.channels, dtype=torch.bool, device=raw.device)
        for i in range(n):
            selected[i, channels_to_ablate(probe.acts[layer][i], ratio)] = True
        if skip_unchanged:
            by_channel = raw.movedim(axis, 1).flatten(2)
            selected &= ~(by_channel == _expand(self.value, by_channel)).all(2)
        self.img, self.ch = selected.nonzero(as_tuple=True)
        onehot_shape = [1] * raw.ndim  # a one-hot over the channel axis, broadcast elsewhere
        onehot_shape[axis] = self.channels
        self.channel_ids = torch.arange(self.channels, device=raw.device).view(onehot_shape)

    def batch(self, rows: slice) -> list[Any]:
        """The suffix's arguments for ``rows``: every batched value indexed by image, the layer's ablated."""
        index = self.img[rows]
        args = []
        for j, (v, b) in enumerate(zip(self.values, self.batched)):
            if b:
                v = v.expand(len(index), *v.shape[1:]) if self.n == 1 else v.index_select(0, index)
            if j == self.pos:
                hit = self.channel_ids == _expand(self.ch[rows], self.channel_ids)
                v = torch.where(hit, _expand(self.value[index], v).to(v.dtype), v)
            args.append(v)
        return args

    def score_into(self, ablated: Tensor, batch_size: int | None, max_memory: int | None) -> None:
        """Run every row through the suffix in chunks; ``ablated[img, ch]`` = the row's score."""
        total = len(self.img)
        if not total:
            return
        with torch.inference_mode():
            chunk = rows_per_chunk(self.split.suffix, tuple(self.batch(slice(0, 1))), batch_size, max_memory)
        with _progress.bar(total, f"ablationcam {self.layer}", enabled=self.probe.progress) as bar:
            for rows in chunks(total, chunk):
                with torch.inference_mode():
                    output = self._suffix(rows)
                    ablated[self.img[rows], self.ch[rows]] = self.probe.row_scores(output, self.img[rows])
                bar.update(rows.stop - rows.start)

    def _suffix(self, rows: slice) -> Any:
        try:
            return self.split.suffix(*self.batch(rows))[0]
        except Exception as exc:
            raise FxcamError(
                f"ablationcam: the graph after layer '{self.layer}' failed on a batch of {rows.stop - rows.start} "
                f"ablated copies ({type(exc).__name__}: {exc}). It may use a value computed before the layer that "
                f"fixes the batch size (such as x.shape[0]); tap a layer after that value (see "
                f"fxcam.list_layers(model))."
            ) from exc


__all__ = ["channel_axis", "channels_to_ablate", "ABLATION_VALUE"]
