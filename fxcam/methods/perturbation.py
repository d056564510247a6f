"""Perturbation methods on the compiled graph: AblationCAM and the Score-CAM family; and CAM.

Driver methods (``fn(probe, **options) -> {layer: contributions (N, C, *S)}``). Nothing here
needs a gradient, so every graph run is under ``torch.inference_mode()``:

- ``ablationcam`` ablates one channel of the tapped activation at a time and re-runs only the
  *suffix* of the graph (what comes after the layer, ``Instrumented.split_for(layer)``); the
  part before the layer runs once.
- ``scorecam``, ``sscam``, ``iscam`` score the input masked by each upsampled activation
  channel: one forward of the whole graph per mask, batched.
- ``cam`` reads the classifier's weights off the graph (tap -> global average pool -> Linear).

Rows (channel x image, and noise sample for SS-CAM/IS-CAM) are batched in chunks of
``batch_size`` rows, or, when ``batch_size`` is None, of as many rows as fit in
``max_memory`` bytes: the peak memory of one row is measured once by running the graph on
one row and adding up the tensors alive at each node. The default budget is 1 GiB on an
accelerator and 64 MiB on CPU, where batches past a few dozen images only spill the caches
(resnet18 at 112x112: about 40 rows per chunk on CPU). On CPU the Score-CAM family's masked
inputs are also laid out channels-last (``channels_last=None``: on CPU only), which oneDNN
convolves without reordering activations (about 1.15x on resnet18); the model's weights are
not touched. Ablated batches keep their layout: the suffix after a late layer gains nothing.
Channels whose result is known without running the graph (an ablation that changes nothing;
an all-zero Score-CAM mask) are skipped. ``progress=True`` on the explainer shows a tqdm bar
(tqdm is optional).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FxcamError
from . import register
from ._shapes import expand_as_weights as _expand

MAX_MEMORY = {"cpu": 64 << 20}  # default bytes per batched graph run, by device type
MAX_MEMORY_DEFAULT = 1 << 30  # accelerators
ABLATION_VALUE = 1e7  # pytorch-grad-cam's AblationLayer: ablate to min - 1e7 unless the minimum is 0
MASK_STYLES = ("torchcam", "pytorch-grad-cam")


# -- shared machinery --------------------------------------------------------------------------
class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar when ``enabled`` (tqdm is an optional dependency), else a silent stand-in."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional
    except ImportError:
        warnings.warn("progress=True needs tqdm (pip install tqdm); running without a progress bar.", stacklevel=4)
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img")


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class _PeakMemory(fx.Interpreter):
    """Runs a graph and records the bytes each node returns (``run_node``, the documented hook)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.sizes: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.sizes[n] = _nbytes(out)
        return out

    def peak(self) -> int:
        """Largest sum of live values, a value living from its node to its last user."""
        nodes = list(self.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        freed_at: dict[int, list[fx.Node]] = {}
        for n in nodes:
            last = max((order[u] for u in n.users), default=order[n])
            freed_at.setdefault(last, []).append(n)
        live = best = 0
        for i, n in enumerate(nodes):
            live += self.sizes.get(n, 0)
            best = max(best, live)
            live -= sum(self.sizes.get(m, 0) for m in freed_at.get(i, ()))
        return best


def _rows_per_chunk(gm: fx.GraphModule, one_row: tuple, batch_size: int | None, max_memory: int | None) -> int:
    """``batch_size``, or how many rows of ``gm`` fit in ``max_memory`` bytes (at least 1)."""
    if batch_size is not None:
        if batch_size < 1:
            raise FxcamError(f"batch_size must be a positive int or None (sized to max_memory); got {batch_size}.")
        return int(batch_size)
    if max_memory is None:
        device = next((t.device for t in one_row if isinstance(t, Tensor)), torch.device("cpu"))
        max_memory = MAX_MEMORY.get(device.type, MAX_MEMORY_DEFAULT)
    if max_memory <= 0:
        raise FxcamError(f"max_memory must be a positive number of bytes; got {max_memory}.")
    interp = _PeakMemory(gm)
    with torch.inference_mode():
        interp.run(*one_row)
    return max(1, int(max_memory // max(interp.peak(), 1)))


def _layout(t: Tensor, channels_last: bool | None) -> Tensor:
    """``t`` channels-last when asked (None: on CPU), for 4-D and 5-D batches; else unchanged."""
    if channels_last is None:
        channels_last = t.device.type == "cpu"
    if not channels_last or t.ndim not in (4, 5):
        return t
    return t.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _row_targets(probe, index: Tensor) -> Any:
    """Targets for a batch whose row ``r`` is a perturbed copy of image ``index[r]``."""
    if probe.class_idx is not None:
        return probe.class_idx[index.to(probe.class_idx.device)]
    if callable(probe.targets):
        return probe.targets
    return [probe.targets[i] for i in index.tolist()]


def _row_scores(probe, output: Any, index: Tensor) -> Tensor:
    return probe.resolve(_row_targets(probe, index), output)[0].float()


# -- AblationCAM -------------------------------------------------------------------------------
def _channel_axis(reshape: Callable[[Tensor], Tensor], raw: Tensor, layer: str) -> int:
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


def _channels_to_ablate(acts: Tensor, ratio: float) -> Tensor:
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
    probe,
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
      their activation inside the EigenCAM mask are ablated (:func:`_channels_to_ablate`); the
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
    x, inst = probe.x, probe.instrumented
    out = {}
    for i_layer, layer in enumerate(inst.layers):
        split = inst.split_for(layer)
        with torch.inference_mode():
            values = split.prefix(x)
            if i_layer == 0:  # the clean pass from the same split: the graph before the layer runs once
                probe.record(*split.suffix(*values))
        original = probe.scores.float()
        pos = split.boundary.index(inst.nodes[layer])
        raw = values[pos]
        n = raw.shape[0]
        batched = [isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == n for v in values]
        axis = _channel_axis(probe.reshapes[layer], raw, layer)
        acts = probe.acts[layer]
        channels = raw.shape[axis]

        low = raw.flatten(1).amin(1)
        value = torch.where(low == 0, torch.zeros_like(low), low - ABLATION_VALUE)  # (N,), raw dtype
        selected = torch.zeros(n, channels, dtype=torch.bool, device=raw.device)
        for i in range(n):
            selected[i, _channels_to_ablate(acts[i], ratio_channels_to_ablate)] = True
        if skip_unchanged:
            by_channel = raw.movedim(axis, 1).flatten(2)
            unchanged = (by_channel == _expand(value, by_channel)).all(2)
            selected &= ~unchanged
        img, ch = selected.nonzero(as_tuple=True)
        # row r ablates channel ch[r] of image img[r]: a one-hot over the channel axis, broadcast elsewhere
        onehot_shape = [1] * raw.ndim
        onehot_shape[axis] = channels
        channel_ids = torch.arange(channels, device=raw.device).view(onehot_shape)

        def batch(rows: slice, img=img, ch=ch, value=value, pos=pos, values=values, batched=batched) -> list:
            index = img[rows]
            args = []
            for j, (v, b) in enumerate(zip(values, batched)):
                if b:
                    v = v.expand(len(index), *v.shape[1:]) if n == 1 else v.index_select(0, index)
                if j == pos:
                    hit = channel_ids == _expand(ch[rows], channel_ids)
                    v = torch.where(hit, _expand(value[index], v).to(v.dtype), v)
                args.append(v)
            return args

        ablated = original[:, None].repeat(1, channels)
        total = len(img)
        if total:
            with torch.inference_mode():
                chunk = _rows_per_chunk(split.suffix, tuple(batch(slice(0, 1))), batch_size, max_memory)
            bar = _bar(probe.progress, total, f"ablationcam {layer}")
            try:
                for rows in _chunks(total, chunk):
                    with torch.inference_mode():
                        try:
                            output = split.suffix(*batch(rows))[0]
                        except Exception as exc:
                            raise FxcamError(
                                f"ablationcam: the graph after layer '{layer}' failed on a batch of "
                                f"{rows.stop - rows.start} ablated copies ({type(exc).__name__}: {exc}). It may use a "
                                f"value computed before the layer that fixes the batch size (such as x.shape[0]); tap "
                                f"a layer after that value (see fxcam.list_layers(model))."
                            ) from exc
                        ablated[img[rows], ch[rows]] = _row_scores(probe, output, img[rows])
                    bar.update(rows.stop - rows.start)
            finally:
                bar.close()
        weights = (original[:, None] - ablated) / original[:, None]
        out[layer] = _expand(weights, acts) * acts
    return out


# -- the Score-CAM family ------------------------------------------------------------------------
def _normalize_maps(a: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-channel min-max of ``(N, C, *S)`` over ``S``, as torchcam's ``_normalize``."""
    dims = tuple(range(2, a.ndim))
    a = a - a.amin(dims, keepdim=True)
    return a / (a.amax(dims, keepdim=True) + eps)


def _resize(a: Tensor, size: tuple[int, ...], align_corners: bool) -> Tensor:
    if tuple(a.shape[2:]) == size:
        return a
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(size))
    if mode is None:
        raise FxcamError(f"Score-CAM masks need 1-3 spatial dims; the input has {len(size)}.")
    return F.interpolate(a, size=size, mode=mode, align_corners=align_corners)


class _Masked:
    """Rows ``(image, channel)`` of Score-CAM masks and how to score masked inputs in chunks."""

    def __init__(self, probe, acts: Tensor, skip_zero: bool) -> None:
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
            return _row_scores(self.probe, self.probe.instrumented(self.x * 0)[0], torch.arange(len(self.x)))

    def score(self, make: Callable[[slice], Tensor], options: dict, bar: Any) -> Tensor:
        """Scores minus the clean scores for every row; ``make(rows)`` builds the masked inputs of ``rows``."""
        total = len(self.img)
        result = torch.empty(total, device=self.baseline.device)
        if not total:
            return result
        gm = self.probe.instrumented.graph_module
        layout = options["channels_last"]
        if self.chunk is None:
            one = _layout(make(slice(0, 1)), layout)
            self.chunk = _rows_per_chunk(gm, (one,), options["batch_size"], options["max_memory"])
        for rows in _chunks(total, self.chunk):
            index = self.img[rows]
            with torch.inference_mode():
                scores = _row_scores(self.probe, self.probe.instrumented(_layout(make(rows), layout))[0], index)
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
    probe,
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
        rows = _Masked(probe, acts, skip_zero)
        if masks == "torchcam":
            src = _normalize_maps(acts)

            def make(r: slice, src=src, rows=rows) -> Tensor:
                m = _resize(src[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size, align_corners=False)
                return (m * x[rows.img[r]]).to(x.dtype)
        else:

            def make(r: slice, acts=acts, rows=rows) -> Tensor:
                up = _resize(acts[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size, align_corners=True)
                return (_normalize_maps(up) * x[rows.img[r]]).to(x.dtype)

        bar = _bar(probe.progress, len(rows.img), f"scorecam {layer}")
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
    probe,
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
        rows = _Masked(probe, acts, skip_zero)
        up = _resize(_normalize_maps(acts), rows.size, align_corners=False)
        total = torch.zeros(len(rows.img), device=x.device)
        bar = _bar(probe.progress, num_samples * len(rows.img), f"sscam {layer}")
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
    probe,
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
        rows = _Masked(probe, acts, skip_zero)
        src = _normalize_maps(acts)
        total = torch.zeros(len(rows.img), device=x.device)
        bar = _bar(probe.progress, num_samples * len(rows.img), f"iscam {layer}")
        coeff = 0.0
        try:
            for m in range(num_samples):
                coeff += (m + 1) / num_samples

                def make(r: slice, coeff=coeff, src=src, rows=rows) -> Tensor:
                    mask = _resize(src[rows.img[r], rows.ch[r]].unsqueeze(1), rows.size, align_corners=False)
                    return (coeff * (mask * x[rows.img[r]])).to(x.dtype)

                total += rows.score(make, options, bar)
        finally:
            bar.close()
        fill = rows.zero_scores() - rows.baseline if bool(rows.zero.any()) else None
        out[layer] = _expand(rows.weights(total / num_samples, fill), acts) * acts
    return out


# -- CAM ---------------------------------------------------------------------------------------
_TRANSPARENT_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous"}
_TRANSPARENT_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_TRANSPARENT_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, F.dropout, F.dropout1d, F.dropout2d}
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}


def _is_one(size: Any) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(modules[node.target]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"'{node.name}' ({target})"


def _transparent(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _TRANSPARENT_MODULES)
    if node.op == "call_method":
        return node.target in _TRANSPARENT_METHODS
    return node.op == "call_function" and node.target in _TRANSPARENT_FUNCTIONS


def _global_average_pool(node: fx.Node, modules: dict[str, nn.Module], ndim: int) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, _ADAPTIVE_POOLS) and _is_one(m.output_size)
    if node.op == "call_function" and node.target in _ADAPTIVE_POOL_FUNCTIONS:
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        return _is_one(size)
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if any(not isinstance(d, int) for d in dims):
            return False
        return {d % ndim for d in dims} == set(range(2, ndim))
    return False


def _single_user(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if u.op != "output"]


def classifier_weight(gm: fx.GraphModule, tap: str, ndim: int, layer: str) -> Tensor:
    """The weight ``(classes, C)`` of the Linear fed by the global average pool of node ``tap``.

    Walks forward from the tap: only reshapes/flattens/dropouts, one global average pool
    (``AdaptiveAvgPool*d(1)``, ``F.adaptive_avg_pool*d(x, 1)`` or a mean over every spatial
    dim), then a ``Linear`` whose output is the model's output. Anything else is an error that
    names the node in the way.
    """
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0][0]  # instrumented graphs return (model output, {layer: activation})
    node = next(n for n in gm.graph.nodes if n.name == tap)
    how = (
        "CAM (Zhou et al. 2016) needs the tapped map to go through a global average pool into the model's final "
        "Linear layer"
    )
    pooled = False
    while True:
        users = _single_user(node)
        if len(users) != 1:
            names = ", ".join(_describe(u, modules) for u in users) or "nothing but the taps"
            raise FxcamError(
                f"{how}; after '{layer}', {_describe(node, modules)} feeds {names}. Tap the map that is pooled "
                f"(see fxcam.list_layers(model)) or use method='gradcam', which equals CAM on such models."
            )
        node = users[0]
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            linear = modules[node.target].weight
            break
        weight = node.args[1] if node.op == "call_function" and len(node.args) > 1 else None
        if node.target is F.linear and isinstance(weight, fx.Node) and weight.op == "get_attr":
            linear = gm.get_parameter(weight.target)
            break
        if not pooled and _global_average_pool(node, modules, ndim):
            pooled = True
        elif not _transparent(node, modules):
            raise FxcamError(
                f"{how}; after '{layer}' the graph applies {_describe(node, modules)}, which is not a global average "
                f"pool, a reshape or a dropout. Tap the map that is pooled (see fxcam.list_layers(model)) or use "
                f"method='gradcam', which equals CAM on such models."
            )
    if not pooled:
        raise FxcamError(f"{how}; '{layer}' reaches {_describe(node, modules)} without a global average pool.")
    last = node
    while last is not result:
        users = _single_user(last)
        if len(users) != 1 or not _transparent(users[0], modules):
            raise FxcamError(
                f"{how}; the output of {_describe(node, modules)} is not the model's output (it goes on to "
                f"{', '.join(_describe(u, modules) for u in users) or 'nothing'}), so its rows are not class scores."
            )
        last = users[0]
    return linear


@register(
    "cam",
    kind="driver",
    summary="CAM: channels weighted by the classifier's weights for the class (GAP -> Linear models).",
    paper="Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016. "
    "https://arxiv.org/abs/1512.04150",
)
def cam(probe) -> dict[str, Tensor]:
    r"""CAM (Zhou et al. 2016): :math:`L_c = \mathrm{ReLU}(\sum_k w^c_k A_k)` with :math:`w^c` the row of the final
    Linear layer for class :math:`c`, for models whose tapped map :math:`A` reaches that layer
    through a global average pool only (ResNet, DenseNet, EfficientNet, ...).

    The Linear is found from the graph (:func:`classifier_weight`), not by name. Targets must be
    class indices (None or ints). Same weights as torchcam 0.5.0's ``CAM``; torchcam and the
    paper normalize :math:`\sum_k w^c_k A_k` without the ReLU, fxcam clips negative evidence like
    every other method (the maps agree wherever the sum is non-negative).
    """
    if probe.class_idx is None:
        raise FxcamError(
            "cam explains a class through the classifier's weights; pass class indices as targets (None, an int or "
            "a list of ints), not callables."
        )
    inst = probe.instrumented
    out = {}
    for layer, acts in probe.acts.items():
        weight = classifier_weight(inst.graph_module, inst.nodes[layer], acts.ndim, layer)
        if weight.shape[1] != acts.shape[1]:
            raise FxcamError(
                f"cam: the classifier after '{layer}' takes {weight.shape[1]} features but the layer has "
                f"{acts.shape[1]} channels."
            )
        w = weight.detach()[probe.class_idx].to(acts.device, acts.dtype)
        out[layer] = _expand(w, acts) * acts
    return out
