"""Composite methods: a base method's maps, combined. Finer-CAM, RefineCAM, SESS.

Each takes its base method by registry name (``base="gradcam"``) and calls its function; it
does not import it. Driver methods: ``fn(probe: Probe, **options) -> {layer: contributions}``;
a finished map ``(N, *S)`` is returned as the one-channel contribution of every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import progress as _progress
from ..errors import FxcamError
from ..ops import EPS, normalize, resize, upsample
from ..probe import Probe
from .registry import Method, get, register


def _same_map(probe: Probe, cam: Tensor) -> dict[str, Tensor]:
    """A finished map ``(N, *S)`` as the contribution of every explained layer."""
    return {layer: cam.unsqueeze(1) for layer in probe.layers}


def _base(name: str, *kinds: str) -> Method:
    method = get(name)
    if method.kind not in kinds:
        raise FxcamError(
            f"base={name!r} is a {method.kind} method; pass a method of kind {list(kinds)} (fxcam.methods.describe())."
        )
    return method


def _base_map(method: Method, acts: Tensor, grads: Tensor | None, options: dict) -> Tensor:
    """A base method's layer map, ReLU'd and normalized at the layer's resolution: ``(N, *S)``."""
    contrib = method.fn(acts, grads, **options) if method.kind == "gradient" else method.fn(acts, **options)
    return normalize(torch.relu(contrib.sum(1)), eps=EPS)


# ---------------------------------------------------------------------------------------------
# Finer-CAM

FINER_VARIANTS = ("pgc", "torchcam")


def finer_scores(logits: Tensor, class_idx: Tensor, variant: str, alpha: float, references: int) -> Tensor:
    r"""Finer-CAM's contrastive score per image ``(N,)`` from logits ``(N, K)``.

    References :math:`d_1..d_R`: the ``references`` classes whose logits are closest to the
    target's (the target excluded).

    - ``"pgc"``: :math:`\sum_j p_{d_j} (y_c - \alpha\, y_{d_j}) / (\sum_j p_{d_j} + 10^{-9})`, ``p`` the
      softmax (differentiated too), pytorch-grad-cam's ``FinerWeightedTarget``.
    - ``"torchcam"``: :math:`y_c - \alpha \frac1R \sum_j y_{d_j}` (torchcam's ``FinerCAM``, gamma).
    """
    n, k = logits.shape
    references = min(references, k - 1)
    if references < 1:
        raise FxcamError("finercam needs at least two classes to compare.")
    idx = class_idx.reshape(n, 1)
    y_c = logits.gather(1, idx)
    dist = (logits.detach() - y_c.detach()).abs().scatter(1, idx, float("inf"))
    refs = dist.topk(references, dim=1, largest=False).indices
    y_r = logits.gather(1, refs)
    if variant == "pgc":
        p = torch.softmax(logits, dim=-1).gather(1, refs)
        return (p * (y_c - alpha * y_r)).sum(1) / (p.sum(1) + 1e-9)
    if variant == "torchcam":
        return y_c.squeeze(1) - alpha * y_r.mean(1)
    raise FxcamError(f"finercam: variant must be one of {list(FINER_VARIANTS)}; got {variant!r}.")


@register(
    "finercam",
    kind="driver",
    summary="Finer-CAM: a base CAM of the target score minus the most similar classes' scores.",
    paper="Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation, "
    "CVPR 2025. https://arxiv.org/abs/2501.11309",
)
def finercam(
    probe: Probe,
    variant: str = "pgc",
    alpha: float | None = None,
    references: int = 3,
    base: str = "gradcam",
    base_options: dict | None = None,
) -> dict[str, Tensor]:
    """Finer-CAM: explain :func:`finer_scores` instead of the target logit, with base method ``base``.

    The target class per image comes from ``targets`` (None: top-1); callable targets are not
    supported (the method needs a class to compare). ``variant="pgc"`` (default, alpha 1.0) is
    pytorch-grad-cam 1.5.7's ``FinerCAM`` (its ``target_idx`` / top-1 path); ``variant="torchcam"``
    (alpha 0.6) is torchcam 0.5.0's ``FinerCAM`` (its ``gamma``). ``base``: any gradient method
    (``gradcam`` in both references; torchcam allows ``gradcampp``/``layercam``).
    One forward and one backward of the graph after the taps.
    """
    if variant not in FINER_VARIANTS:
        raise FxcamError(f"finercam: variant must be one of {list(FINER_VARIANTS)}; got {variant!r}.")
    method = _base(base, "gradient")
    alpha = {"pgc": 1.0, "torchcam": 0.6}[variant] if alpha is None else alpha
    output, _, acts = probe.differentiable()
    if probe.class_idx is None:
        raise FxcamError(
            "finercam compares classes: pass class-index targets (int, list of ints) or None, not callables."
        )
    layers = list(probe.layers)
    with torch.enable_grad():
        score = finer_scores(output, probe.class_idx, variant, alpha, references)
        grads = torch.autograd.grad(score.sum(), [acts[k] for k in layers])
    out = {}
    for layer, g in zip(layers, grads):
        reshape = probe.reshapes[layer]
        out[layer] = method.fn(reshape(acts[layer].detach()).float(), reshape(g).float(), **(base_options or {}))
    return out


# ---------------------------------------------------------------------------------------------
# RefineCAM

REFINE_RESOLUTIONS = ("input", "layers")


@register(
    "refinecam",
    kind="driver",
    summary="RefineCAM: element-wise product of a base CAM's normalized maps from several layers.",
    paper="RefineCAM, 'How to Evaluate and Refine your CAM', 2026. https://arxiv.org/abs/2605.14641",
)
def refinecam(
    probe: Probe, base: str = "gradcampp", resolution: str = "input", base_options: dict | None = None
) -> dict[str, Tensor]:
    r"""RefineCAM: :math:`L = \psi\big(\prod_l \psi(\mathrm{ReLU}(L_l))\big)` over the explained layers,
    :math:`L_l` the base method's map at layer :math:`l` and :math:`\psi` min-max normalization.

    ``resolution="input"`` (default): each layer map is normalized, upsampled to the input size and
    normalized again before the product, as pytorch-grad-cam 1.5.7's ``RefineCAM`` (one base CAM per
    layer). ``resolution="layers"``: maps are multiplied at the largest layer resolution, as
    torchcam 0.5.0's ``RefineCAM`` does (the explainer then upsamples). ``base``: a gradient or
    activation method, ``gradcampp`` in both references (torchcam's Grad-CAM++ alpha differs,
    see ``gradcampp``'s ``alpha``). All layers come from one forward and one backward.
    """
    if resolution not in REFINE_RESOLUTIONS:
        raise FxcamError(f"refinecam: resolution must be one of {list(REFINE_RESOLUTIONS)}; got {resolution!r}.")
    method = _base(base, "gradient", "activation")
    layers = list(probe.layers)
    if method.kind == "gradient":
        _, acts, grads = probe.gradients(probe.x, probe.targets)
    else:
        acts, grads = probe.acts, dict.fromkeys(layers)
    maps = [_base_map(method, acts[k], grads[k], base_options or {}) for k in layers]
    if resolution == "input":
        size = tuple(probe.x.shape[2:])
        maps = [normalize(upsample(m, size), eps=EPS) for m in maps]
    else:
        size = tuple(max(s) for s in zip(*(m.shape[1:] for m in maps)))
        maps = [upsample(normalize(m, eps=1e-8), size) for m in maps]
    return _same_map(probe, torch.stack(maps).prod(0))


# ---------------------------------------------------------------------------------------------
# SESS


def window_starts(length: int, step: int, window: int) -> list[int]:
    """Window offsets along one axis; the last window is shifted back inside (pytorch-grad-cam's SESS)."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def gaussian_blur(maps: Tensor, ksize: int = 11, sigma: float = 5.0) -> Tensor:
    """OpenCV's ``GaussianBlur(ksize, sigma)`` with its default reflect-101 border, on ``(N, H, W)``."""
    r = ksize // 2
    ax = torch.arange(ksize, device=maps.device, dtype=maps.dtype) - r
    k = torch.exp(-(ax**2) / (2 * sigma**2))
    k = k / k.sum()
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x.squeeze(1)


@register(
    "sess",
    kind="driver",
    summary="SESS: base CAMs of multi-scale sliding-window patches, score-weighted and fused.",
    paper="Tan et al., SESS: Saliency Enhancing with Scaling and Sliding, ECCV 2022. https://arxiv.org/abs/2207.01769",
)
def sess(
    probe: Probe,
    base: str = "gradcam",
    scales: Sequence[int] | None = None,
    num_scales: int = 12,
    scale_step_ratio: float = 2.0 / 7.0,
    window_size: int | None = None,
    step_size: int | None = None,
    pre_filter_ratio: float = 0.0,
    theta: float = 0.0,
    pool: str = "mean",
    smooth: bool = True,
    use_softmax_scores: bool = True,
    batch_size: int = 32,
    base_options: dict | None = None,
) -> dict[str, Tensor]:
    """SESS as pytorch-grad-cam 1.5.7's ``SESS`` (same options and defaults).

    The batch is resized so its shorter side is each of ``scales`` (default ``num_scales`` sizes
    from the window size up in steps of ``scale_step_ratio * window``; bilinear, antialiased, as
    torchvision's ``resize``), a ``window_size`` window (default: the shorter side) slides with
    ``step_size`` (default: the window), and every patch of every image goes through the compiled
    graph in chunks of ``batch_size`` patches: one forward + backward gives both the patch's
    score (softmax of the target class, clipped at 0) and its ``base`` CAM (normalized, at the
    window size). The lowest ``pre_filter_ratio`` of each image's patches are dropped; CAMs are
    weighted by score / max score, pasted back, resized to the input, fused (``pool="mean"``:
    average over the patches whose value exceeds ``theta``; ``"max"``), Gaussian-blurred
    (11x11, sigma 5, OpenCV's reflect-101 border) when ``smooth``, and normalized.
    Patches are batched across the images of the batch (all share the same windows).
    """
    _check_sess(pool, pre_filter_ratio, num_scales)
    method = _base(base, "gradient", "activation")
    x = probe.x
    n, (h, w) = x.shape[0], x.shape[2:]
    window = window_size if window_size is not None else min(h, w)
    step = step_size if step_size is not None else window
    if scales is None:
        inc = int(round(window * scale_step_ratio))
        scales = [window + inc * i for i in range(num_scales)]
    patches, boxes = sess_patches(x, scales, window, step)
    cams, scores = _score_patches(probe, method, patches, window, batch_size, use_softmax_scores, base_options or {})
    cam = _paste(cams, scores, boxes, (n, h, w), window, pre_filter_ratio, theta, pool)
    if smooth:
        cam = gaussian_blur(cam)
    return _same_map(probe, normalize(cam, eps=EPS))


def _check_sess(pool: str, pre_filter_ratio: float, num_scales: int) -> None:
    if pool not in ("mean", "max"):
        raise FxcamError(f"sess: pool must be 'mean' or 'max'; got {pool!r}.")
    if not 0.0 <= pre_filter_ratio < 1.0:
        raise FxcamError(f"sess: pre_filter_ratio must be in [0, 1); got {pre_filter_ratio}.")
    if num_scales < 1:
        raise FxcamError(f"sess: num_scales must be >= 1; got {num_scales}.")


def sess_patches(
    x: Tensor, scales: Sequence[int], window: int, step: int
) -> tuple[list[Tensor], list[tuple[int, int, int, int]]]:
    """SESS's patches: ``x`` resized so its shorter side is each scale (bilinear, antialiased, as
    torchvision's ``resize``), cut into ``window``-sized windows every ``step`` pixels. Returns
    the patches ``[(N, C, window, window)]`` and their boxes ``(x1, y1, scaled_w, scaled_h)``."""
    h, w = x.shape[2:]
    patches, boxes = [], []
    for scale in scales:
        if scale < window:
            raise FxcamError(f"sess: every scale must be at least the window size {window}; got {scale}.")
        sh, sw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
        scaled = resize(x, (sh, sw), antialias=True)
        for y1 in window_starts(sh, step, window):
            for x1 in window_starts(sw, step, window):
                patches.append(scaled[:, :, y1 : y1 + window, x1 : x1 + window])
                boxes.append((x1, y1, sw, sh))
    return patches, boxes


def _score_patches(
    probe: Probe, method: Method, patches: list[Tensor], window: int, batch_size: int, softmax: bool, options: dict
) -> tuple[Tensor, Tensor]:
    """Every patch of every image through the compiled graph in chunks of ``batch_size``: one forward
    (+ backward for gradient bases) gives the patch's base CAM ``(P, N, window, window)`` and its
    score ``(P, N)`` (softmax of the target class when ``softmax``, clipped at 0)."""
    n, n_patches = probe.x.shape[0], len(patches)
    class_idx = probe.class_idx
    per_image = list(class_idx.tolist()) if class_idx is not None else probe.targets
    if not isinstance(per_image, (list, tuple)):
        per_image = [per_image] * n
    flat = torch.stack(patches).flatten(0, 1)  # (P * N, C, window, window), image index fastest
    targets = list(per_image) * n_patches
    chunk = max(1, batch_size)
    cams, scores = [], []
    with _progress.bar(flat.shape[0], "sess", enabled=probe.progress) as bar:
        for start in range(0, flat.shape[0], chunk):
            xs, ts = flat[start : start + chunk], targets[start : start + chunk]
            if method.kind == "gradient":
                output, acts, grads = probe.gradients(xs, ts)
            else:
                output, acts = probe.forward(xs)
                grads = dict.fromkeys(acts)
            layer_maps = [upsample(_base_map(method, acts[k], grads[k], options), (window, window)) for k in probe.layers]
            cams.append(normalize(torch.stack(layer_maps).mean(0), eps=EPS))
            with torch.no_grad():
                scores.append(probe.resolve(ts, torch.softmax(output, dim=-1) if softmax else output)[0])
            bar.update(xs.shape[0])
    return torch.cat(cams).view(n_patches, n, window, window), torch.cat(scores).view(n_patches, n).float().clamp_min(0)


def _paste(
    cams: Tensor,
    scores: Tensor,
    boxes: list[tuple[int, int, int, int]],
    shape: tuple[int, int, int],
    window: int,
    pre_filter_ratio: float,
    theta: float,
    pool: str,
) -> Tensor:
    """SESS's fusion: the lowest ``pre_filter_ratio`` of each image's patches dropped (argsort order, as
    the reference), CAMs weighted by score / max score, pasted back into their scaled image, resized
    to the input and pooled (``"mean"`` over the patches above ``theta``, or ``"max"``): ``(N, H, W)``."""
    n, h, w = shape
    n_patches = len(boxes)
    order = scores.argsort(0)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(0, order[int(n_patches * pre_filter_ratio) :], True)
    top = scores.amax(0)
    weights = torch.where(top > 0, scores / torch.where(top > 0, top, 1.0), torch.ones_like(scores)) * keep
    total = torch.zeros(n, h, w, device=cams.device)
    counts = torch.zeros_like(total)
    for p, (x1, y1, sw, sh) in enumerate(boxes):
        canvas = cams.new_zeros(n, sh, sw)
        canvas[:, y1 : y1 + window, x1 : x1 + window] = cams[p] * weights[p].view(n, 1, 1)
        pasted = upsample(canvas, (h, w))
        kept = keep[p].view(n, 1, 1)
        if pool == "max":
            total = torch.where(kept, torch.maximum(total, pasted), total)
        else:
            mask = (pasted > theta) & kept
            total = total + pasted * mask
            counts = counts + mask
    return total if pool == "max" else torch.where(counts > 0, total / counts.clamp_min(1), torch.zeros_like(total))


__all__ = ["finer_scores", "window_starts", "gaussian_blur", "sess_patches", "FINER_VARIANTS", "REFINE_RESOLUTIONS"]
