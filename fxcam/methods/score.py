"""The Score-CAM family: a channel's weight is the score of the input masked by that channel's map.

Driver methods (``fn(probe: Probe, **options) -> {layer: contributions}``): ``scorecam``,
``sscam``, ``iscam`` score the input masked by each upsampled activation channel: one forward
of the whole compiled graph per mask, batched in chunks under a memory budget
(:mod:`fxcam.batching`) and under ``torch.inference_mode()``. On CPU the masked inputs are
laid out channels-last (``channels_last=None``: on CPU only). An all-zero mask is scored once
per image, not once per channel. ``progress=True`` on the explainer shows a progress bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import progress as _progress
from ..batching import chunks, layout, rows_per_chunk
from ..errors import FxcamError
from ..ops import expand_as_weights as _expand
from ..ops import normalize, resize
from ..probe import Probe
from .registry import register

MASK_STYLES = ("torchcam", "pytorch-grad-cam")


class Masked:
    """Rows ``(image, channel)`` of Score-CAM masks and how to score masked inputs in chunks."""

    def __init__(self, probe: Probe, acts: Tensor, skip_zero: bool) -> None:
        self.probe = probe
        self.x = probe.x
        self.size = tuple(self.x.shape[2:])
        n, c = acts.shape[:2]
        zero = (acts.flatten(2) == 0).all(2) if skip_zero else torch.zeros(n, c, dtype=torch.bool, device=acts.device)
        self.zero = zero
        self.img, self.ch = (~zero).nonzero(as_tuple=True)
        self.baseline = probe.scores.float()
        self.chunk: int | None = None

    def zero_scores(self) -> Tensor:
        """Scores of the all-zero masked input ``0 * x`` per image (what a skipped channel scores)."""
        with torch.inference_mode():
            return self.probe.row_scores(self.probe.instrumented(self.x * 0)[0], torch.arange(len(self.x)))

    def score(self, make: Callable[[slice], Tensor], options: dict, bar: Any) -> Tensor:
        """Scores minus the clean scores for every row; ``make(rows)`` builds the masked inputs of ``rows``."""
        total = len(self.img)
        result = torch.empty(total, device=self.baseline.device)
        if not total:
            return result
        gm = self.probe.instrumented.graph_module
        channels_last = options["channels_last"]
        if self.chunk is None:
            one = layout(make(slice(0, 1)), channels_last)
            self.chunk = rows_per_chunk(gm, (one,), options["batch_size"], options["max_memory"])
        for rows in chunks(total, self.chunk):
            index = self.img[rows]
            with torch.inference_mode():
                scores = self.probe.row_scores(self.probe.instrumented(layout(make(rows), channels_last))[0], index)
            result[rows] = scores - self.baseline[index]
            bar.update(rows.stop - rows.start)
        return result

    def weights(self, delta: Tensor, fill: Tensor | None) -> Tensor:
        """Softmax over channels of the per-row score deltas; skipped channels take ``fill`` (per image)
        or, when ``fill`` is None, are left out of the softmax (weight 0)."""
        n, c = self.zero.shape
        full = torch.full((n, c), -math.inf, device=delta.device)
        if fill is not None:
            full = torch.where(self.zero, _expand(fill, full).expand(n, c), full)
        full[self.img, self.ch] = delta
        return torch.nan_to_num(torch.softmax(full, dim=-1), nan=0.0)  # an image with no channel left: 0


def _check_style(masks: str) -> None:
    if masks not in MASK_STYLES:
        raise FxcamError(f"scorecam: masks must be one of {list(MASK_STYLES)}; got {masks!r}.")


@register(
    "scorecam",
    kind="driver",
    summary="Score-CAM: channel weight = softmax of the score of the input masked by the upsampled channel.",
    paper="Wang et al., Score-CAM, CVPR-W 2020. https://arxiv.org/abs/1910.01279",
)
def scorecam(
    probe: Probe,
    batch_size: int | None = None,
    max_memory: int | None = None,
    channels_last: bool | None = None,
    skip_zero: bool = True,
    masks: str = "torchcam",
) -> dict[str, Tensor]:
    r"""Score-CAM (Wang et al. 2020) as torchcam 0.5.0 defines it.

    .. math:: M_k = U\!\left(\frac{A_k - \min A_k}{\max A_k - \min A_k + 10^{-8}}\right),\qquad
              w = \mathrm{softmax}_k\big(y(M_k \odot x) - y(x)\big),\qquad
              L = \mathrm{ReLU}\big(\textstyle\sum_k w_k A_k\big)

    with :math:`U` bilinear upsampling to the input size (``align_corners=False``), :math:`y`
    the explained score and the min/max over each channel's positions. One masked input per
    channel and image, forwarded through the compiled graph in chunks (``batch_size`` rows, or
    as many as fit in ``max_memory`` bytes; channels-last on CPU) under inference mode.

    - ``masks="pytorch-grad-cam"``: pytorch-grad-cam 1.5.7's masks, which upsample first
      (``align_corners=True``) and min-max normalize at the input resolution. Bilinear
      upsampling commutes with the affine normalization but not with the min and max (the
      upsampled extremes differ from the map's), so the two libraries' masks and maps differ
      slightly; each option matches its library. Subtracting :math:`y(x)` (torchcam) or not
      (pytorch-grad-cam) does not change a softmax.
    - ``skip_zero`` (default True): an all-zero channel's mask is all zero, so its masked input
      is :math:`0 \cdot x` for every such channel; it is scored once per image instead of once
      per channel. Weights and map are the references' (the channel stays in the softmax).
    """
    _check_style(masks)
    x = probe.x
    options = {"batch_size": batch_size, "max_memory": max_memory, "channels_last": channels_last}
    out = {}
    for layer, acts in probe.acts.items():
        rows = Masked(probe, acts, skip_zero)
        if masks == "torchcam":
            src = normalize(acts, eps=1e-8, start=2)

            def make(r: slice, src=src, rows=rows) -> Tensor:
                m = resize(src[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size)
                return (m * x[rows.img[r]]).to(x.dtype)
        else:

            def make(r: slice, acts=acts, rows=rows) -> Tensor:
                up = resize(acts[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size, align_corners=True)
                return (normalize(up, eps=1e-8, start=2) * x[rows.img[r]]).to(x.dtype)

        bar = _progress.bar(len(rows.img), f"scorecam {layer}", enabled=probe.progress)
        try:
            delta = rows.score(make, options, bar)
        finally:
            bar.close()
        fill = rows.zero_scores() - rows.baseline if bool(rows.zero.any()) else None
        out[layer] = _expand(rows.weights(delta, fill), acts) * acts
    return out


@register(
    "sscam",
    kind="driver",
    summary="SS-CAM: Score-CAM with the weights averaged over noisy masks.",
    paper="Wang et al., SS-CAM: Smoothed Score-CAM, 2020. https://arxiv.org/abs/2006.14255",
)
def sscam(
    probe: Probe,
    num_samples: int = 35,
    std: float = 2.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    max_memory: int | None = None,
    channels_last: bool | None = None,
    skip_zero: bool = True,
) -> dict[str, Tensor]:
    r"""SS-CAM (Wang et al. 2020) as torchcam 0.5.0 defines it.

    With :math:`M_k` Score-CAM's (torchcam) mask at the input size and
    :math:`\delta_{m} \sim \mathcal{N}(0, \mathrm{std}^2)` noise of the mask's shape:

    .. math:: w = \mathrm{softmax}_k\Big(\frac{1}{n}\sum_{m=1}^{n}
              y\big((M_k + \delta_{m,k}) \odot x\big) - y(x)\Big)

    Noise is drawn per sample as one ``torch.randn`` of shape ``(N, C, H, W)`` (from
    ``generator`` if given, on its device; else on the input's device), in the order torchcam
    draws it from the global generator, so on CPU with the same seed the noise is the same.
    Memory: the upsampled masks and one noise tensor of that shape at a time.

    ``skip_zero`` (default True) leaves all-zero channels out: they add nothing to the map, and
    leaving them out of the softmax scales every other weight by the same factor, which the
    explainer's normalization removes: the map is torchcam's, the raw weights differ by that
    factor (``skip_zero=False`` scores those channels and gives torchcam's weights as well).
    """
    if num_samples < 1:
        raise FxcamError(f"sscam: num_samples must be >= 1; got {num_samples}.")
    x = probe.x
    options = {"batch_size": batch_size, "max_memory": max_memory, "channels_last": channels_last}
    device = generator.device if generator is not None else x.device
    out = {}
    for layer, acts in probe.acts.items():
        rows = Masked(probe, acts, skip_zero)
        up = resize(normalize(acts, eps=1e-8, start=2), rows.size)
        total = torch.zeros(len(rows.img), device=x.device)
        bar = _progress.bar(num_samples * len(rows.img), f"sscam {layer}", enabled=probe.progress)
        try:
            for _ in range(num_samples):
                noisy = torch.randn(up.shape, generator=generator, device=device).to(x.device)
                noisy.mul_(std).add_(up)  # torchcam: up + Normal(0, std).sample(), which is randn * std

                def make(r: slice, noisy=noisy, rows=rows) -> Tensor:
                    return (noisy[rows.img[r], rows.ch[r]].unsqueeze(1) * x[rows.img[r]]).to(x.dtype)

                total += rows.score(make, options, bar)
        finally:
            bar.close()
        out[layer] = _expand(rows.weights(total / num_samples, None), acts) * acts
    return out


@register(
    "iscam",
    kind="driver",
    summary="IS-CAM: Score-CAM with the weights integrated over scaled masks.",
    paper="Naidu et al., IS-CAM: Integrated Score-CAM, 2020. https://arxiv.org/abs/2010.03023",
)
def iscam(
    probe: Probe,
    num_samples: int = 10,
    batch_size: int | None = None,
    max_memory: int | None = None,
    channels_last: bool | None = None,
    skip_zero: bool = True,
) -> dict[str, Tensor]:
    r"""IS-CAM (Naidu et al. 2020) as torchcam 0.5.0 defines it.

    With :math:`M_k` Score-CAM's (torchcam) mask at the input size and
    :math:`c_m = \sum_{j=1}^{m} j / n` (so :math:`c_n = (n + 1) / 2`):

    .. math:: w = \mathrm{softmax}_k\Big(\frac{1}{n}\sum_{m=1}^{n} y\big(c_m\,(M_k \odot x)\big) - y(x)\Big)

    The cumulative coefficient is torchcam 0.5.0's code (``coeff += (i + 1) / n``; its docstring
    writes the sum from :math:`j = 0` to :math:`m - 1`). ``skip_zero`` (default True): an all-zero
    channel's masked inputs are all :math:`0 \cdot x`; scored once per image, weights and map
    are torchcam's.
    """
    if num_samples < 1:
        raise FxcamError(f"iscam: num_samples must be >= 1; got {num_samples}.")
    x = probe.x
    options = {"batch_size": batch_size, "max_memory": max_memory, "channels_last": channels_last}
    out = {}
    for layer, acts in probe.acts.items():
        rows = Masked(probe, acts, skip_zero)
        src = normalize(acts, eps=1e-8, start=2)
        total = torch.zeros(len(rows.img), device=x.device)
        bar = _progress.bar(num_samples * len(rows.img), f"iscam {layer}", enabled=probe.progress)
        coeff = 0.0
        try:
            for m in range(num_samples):
                coeff += (m + 1) / num_samples

                def make(r: slice, coeff=coeff, src=src, rows=rows) -> Tensor:
                    mask = resize(src[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size)
                    return (coeff * (mask * x[rows.img[r]])).to(x.dtype)

                total += rows.score(make, options, bar)
        finally:
            bar.close()
        fill = rows.zero_scores() - rows.baseline if bool(rows.zero.any()) else None
        out[layer] = _expand(rows.weights(total / num_samples, fill), acts) * acts
    return out


__all__ = ["Masked", "MASK_STYLES"]
