"""Other methods: FullGrad, KPCA-CAM, FEM, ShapleyCAM, Finer-CAM, RefineCAM, SESS, RandomCAM.

Pure torch, batched, on the input's device. Driver methods run the compiled graph through the
``probe`` (:class:`fxcam.api.Probe`); methods that build on a base CAM (Finer-CAM, RefineCAM,
SESS) take the base by its registry name and call its function, they do not import it.

Shapes: ``acts``/``grads`` ``(N, C, *S)``; every method returns contributions whose channel sum
is the map (drivers: ``{layer: (N, C', *S')}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import EPS
from ..ops import upsample as _resize  # (N, *S) maps, half-pixel centres (OpenCV INTER_LINEAR)
from . import get, register
from ._shapes import expand_as_weights as _expand
from ._shapes import spatial_dims as _spatial

NORM_EPS = EPS  # pytorch-grad-cam's min-max epsilon


def _normalize(t: Tensor, start: int = 1, eps: float = NORM_EPS) -> Tensor:
    """Min-max normalize ``t`` over its dims from ``start`` on (one map per leading index)."""
    flat = t.flatten(start)
    lo = flat.amin(-1)
    hi = (flat - lo.unsqueeze(-1)).amax(-1)
    shape = (*t.shape[:start], *([1] * (t.ndim - start)))
    return (t - lo.reshape(shape)) / (hi.reshape(shape) + eps)


def _same_map(probe, cam: Tensor) -> dict[str, Tensor]:
    """A finished map ``(N, *S)`` as the contribution of every explained layer."""
    return {layer: cam.unsqueeze(1) for layer in probe.instrumented.layers}


def _base(name: str, *kinds: str):
    method = get(name)
    if method.kind not in kinds:
        raise ValueError(
            f"base={name!r} is a {method.kind} method; pass a method of kind {list(kinds)} (fxcam.methods.describe())."
        )
    return method


def _base_map(method, acts: Tensor, grads: Tensor | None, options: dict) -> Tensor:
    """A base method's layer map, ReLU'd and normalized at the layer's resolution: ``(N, *S)``."""
    contrib = method.fn(acts, grads, **options) if method.kind == "gradient" else method.fn(acts, **options)
    return _normalize(torch.relu(contrib.sum(1)))


# ---------------------------------------------------------------------------------------------
# FullGrad


def fullgrad_map(x: Tensor, input_grad: Tensor, biases: dict[str, Tensor], grads: dict[str, Tensor]) -> Tensor:
    r"""FullGrad saliency ``(N, *S_in)`` from the input gradient and the bias gradients.

    .. math:: S = \sum_{c} \psi\big(|x_c \odot \nabla_{x_c} y|\big)
              + \sum_{l} \sum_{c} \mathrm{up}\Big(\psi\big(|b_{l,c}\, \nabla_{z_{l,c}} y|\big)\Big)

    with :math:`z_l` the output of bias layer :math:`l`, :math:`b_l` its (effective) bias and
    :math:`\psi` a per-map min-max normalization (eps 1e-7), every channel separately, as
    pytorch-grad-cam's ``FullGrad`` does (Srinivas & Fleuret 2019, Eq. 5 with
    :math:`\psi = ` abs + normalize + resize). Upsampling is linear, so channel maps are summed
    at each layer's resolution and maps of one resolution are upsampled once, together.
    """
    size = tuple(x.shape[2:])
    total = _normalize((x.float() * input_grad.float()).abs(), start=2).sum(1)
    by_size: dict[tuple[int, ...], Tensor] = {}
    for name, g in grads.items():
        term = _normalized_abs_channel_sum(g.float(), biases[name].to(device=g.device, dtype=torch.float32))
        key = tuple(g.shape[2:])
        by_size[key] = by_size[key] + term if key in by_size else term
    for maps in by_size.values():
        total = total + _resize(maps, size)
    return total


def _normalized_abs_channel_sum(g: Tensor, b: Tensor) -> Tensor:
    r""":math:`\sum_c \psi(|b_c g_c|)` for ``g (N, C, *S)`` and ``b (C,)``: ``(N, *S)``.

    With :math:`m_c, M_c` the min and max of :math:`|g_c|`,
    :math:`\psi(|b_c g_c|) = (|g_c| - m_c)\, s_c` where :math:`s_c = |b_c| / (|b_c| (M_c - m_c) + \epsilon)`:
    one ``|g|`` copy, one min/max pass, an in-place shift and one contraction with the per-channel
    scales, instead of materializing each normalized channel. (The shift is not folded into a
    constant after the contraction: that cancels badly when :math:`M_c \approx m_c`.)
    FullGrad's cost beyond the backward is this function over every bias layer.
    """
    n, c = g.shape[:2]
    a = g.abs().reshape(n, c, -1)
    # amin + amax, and bmm rather than einsum: on CPU (torch 2.14) ``aminmax`` over the last dim
    # is ~6x slower than the two reductions, and this einsum copies; together they were 60% of
    # FullGrad's map time on resnet50.
    lo, hi = a.amin(-1), a.amax(-1)
    b = b.abs()
    scale = b / (b * (hi - lo) + NORM_EPS)  # (N, C)
    a.sub_(lo.unsqueeze(-1))
    return torch.bmm(scale.unsqueeze(1).to(a.dtype), a).reshape(n, *g.shape[2:])


@register(
    "fullgrad",
    kind="driver",
    summary="FullGrad: |input x input-gradient| plus |bias x bias-gradient| of every conv/BatchNorm layer.",
    paper="Srinivas & Fleuret, Full-Gradient Representation for Neural Network Visualization, NeurIPS 2019, "
    "Eq. 5. https://arxiv.org/abs/1905.00780",
)
def fullgrad(probe) -> dict[str, Tensor]:
    """FullGrad (see :func:`fullgrad_map`), as pytorch-grad-cam 1.5.7's ``FullGrad``.

    Every convolution and BatchNorm with a bias found in the traced graph is tapped in one
    compiled graph; one forward with autograd on and one ``torch.autograd.grad`` call give the
    input gradient and all bias-layer gradients (:meth:`fxcam.api.Probe.bias_gradients`).
    BatchNorm's bias is the folded one, ``b - mu w / sqrt(var + eps)``. Like pytorch-grad-cam,
    the explainer's target layers are not used: every explained layer gets the same map.
    The map is computed at the input's resolution. ``eigen_smooth`` projects this single map,
    not pytorch-grad-cam's stack of per-layer maps.
    """
    bg = probe.bias_gradients()
    return _same_map(probe, fullgrad_map(bg.x, bg.input_grad, bg.biases, bg.grads))


# ---------------------------------------------------------------------------------------------
# KPCA-CAM, FEM, RandomCAM: activations only

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _kernel(p: Tensor, kernel: str, gamma: float | None, degree: int, coef0: float) -> Tensor:
    """Kernel matrices ``(N, S, S)`` of point sets ``(N, S, C)``, with scikit-learn's definitions."""
    gamma = 1.0 / p.shape[-1] if gamma is None else gamma
    dot = p @ p.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return torch.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** degree
    if kernel == "rbf":
        sq = p.pow(2).sum(-1)
        return torch.exp(-gamma * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min(0))
    if kernel == "cosine":
        q = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return q @ q.transpose(1, 2)
    raise ValueError(f"kpcacam: kernel must be one of {list(KERNELS)}; got {kernel!r}.")


@register(
    "kpcacam",
    kind="activation",
    summary="KPCA-CAM: the activations' first kernel principal component (class-agnostic, no gradients).",
    paper="Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA, "
    "MMSP 2024. https://arxiv.org/abs/2410.00267",
)
def kpcacam(
    acts: Tensor, kernel: str = "sigmoid", gamma: float | None = None, degree: int = 3, coef0: float = 1.0
) -> Tensor:
    r"""KPCA-CAM: project each image's positions on the first kernel principal component.

    The ``S`` positions are points in ``C`` dimensions, centred; :math:`K = k(P, P)` (scikit-learn's
    kernels: ``sigmoid`` :math:`\tanh(\gamma\,p\cdot q + c_0)` (default), ``rbf``, ``poly``,
    ``linear``, ``cosine``; :math:`\gamma` defaults to :math:`1/C`), double-centred, and the
    projection is :math:`\sqrt{\lambda_1} v_1` with the sign that makes its largest-magnitude
    entry positive: scikit-learn's ``KernelPCA(n_components=1).fit_transform``, which
    pytorch-grad-cam 1.5.7's ``KPCA_CAM`` calls per image. Here: one batched ``torch.linalg.eigh``
    (``O(S^3)``: fine for feature maps up to ~60x60). Returns ``(N, 1, *S)``.
    """
    n = acts.shape[0]
    p = torch.nan_to_num(acts.flatten(2).transpose(1, 2), nan=0.0)
    p = p - p.mean(1, keepdim=True)
    k = _kernel(p, kernel, gamma, degree, coef0)
    k = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
    evals, evecs = torch.linalg.eigh(k)
    v, lam = evecs[..., -1], evals[..., -1].clamp_min(0)
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    proj = v * sign * lam.sqrt().unsqueeze(1)
    return proj.reshape(n, 1, *acts.shape[2:])


@register(
    "fem",
    kind="activation",
    summary="FEM: channels weighted by the share of positions above mean + k std (no gradients).",
    paper="Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, IPTA 2020. "
    "https://hal.science/hal-02963298/document",
)
def fem(acts: Tensor, k: float = 2.0) -> Tensor:
    r"""Feature Explanation Method: :math:`w_c = \frac{1}{|S|}\sum_s [A_c(s) > \mu_c + k\,\sigma_c]`,
    contributions :math:`w_c A_c` (population std, as pytorch-grad-cam's ``FEM``)."""
    dims = _spatial(acts)
    th = acts.mean(dims, keepdim=True) + k * acts.std(dims, correction=0, keepdim=True)
    weights = (acts > th).to(acts.dtype).mean(dims)
    return _expand(weights, acts) * acts


@register(
    "randomcam",
    kind="activation",
    summary="RandomCAM: channels weighted by uniform random weights in [-1, 1] (a sanity-check baseline).",
    paper="pytorch-grad-cam's RandomCAM (a baseline for metrics).",
)
def randomcam(acts: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r""":math:`w_{n,c} \sim U(-1, 1)` per image and channel, contributions :math:`w A`.

    Drawn with ``torch.rand`` from ``generator`` (seed it for reproducible maps; default: torch's
    global generator). pytorch-grad-cam draws from numpy's global generator, so the two agree only
    for the same weights, not the same seed."""
    device = generator.device if generator is not None else acts.device
    w = torch.rand(acts.shape[:2], generator=generator, device=device, dtype=acts.dtype) * 2 - 1
    return _expand(w.to(acts.device), acts) * acts


# ---------------------------------------------------------------------------------------------
# ShapleyCAM: gradient and Hessian-vector product


@register(
    "shapleycam",
    kind="driver",
    summary="ShapleyCAM: channels weighted by the mean of gradient - 1/2 Hessian x activation.",
    paper="Cai et al., CAMs as Shapley Value-based Explainers, 2025. https://arxiv.org/abs/2501.06261",
)
def shapleycam(probe) -> dict[str, Tensor]:
    r"""ShapleyCAM (pytorch-grad-cam 1.5.7's ``ShapleyCAM``).

    .. math:: w_k = \frac{1}{|S|}\sum_s \Big(g_k(s) - \tfrac12 (H A)_k(s)\Big),\qquad
              g = \frac{\partial y}{\partial A},\quad H A = \frac{\partial (g \cdot \bar A)}{\partial A}

    (:math:`\bar A`: the activations held constant). One forward over the graph after the taps
    with autograd on, one ``create_graph`` gradient and one Hessian-vector product per layer.
    The paper pairs it with the ReST target (``pytorch_grad_cam.utils.model_targets.ClassifierOutputReST``,
    usable as an fxcam target); for a raw logit behind a network that is linear after the tap
    (``layer4`` -> pool -> fc) the Hessian term is zero and the map is Grad-CAM's.
    """
    _, scores, acts = probe.differentiable()
    layers = list(probe.instrumented.layers)
    inputs = [acts[k] for k in layers]
    with torch.enable_grad():
        grads = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
        out = {}
        for i, layer in enumerate(layers):
            a, g = inputs[i], grads[i]
            hvp = None
            if g.requires_grad:
                last = i == len(layers) - 1
                (hvp,) = torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=not last, allow_unused=True)
            reshape = probe.reshapes[layer]
            g_r = reshape(g.detach()).float()
            a_r = reshape(a.detach()).float()
            w = g_r if hvp is None else g_r - 0.5 * reshape(hvp.detach()).float()
            out[layer] = _expand(w.mean(_spatial(w)), a_r) * a_r
    return out


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
        raise ValueError("finercam needs at least two classes to compare.")
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
    raise ValueError(f"finercam: variant must be one of {list(FINER_VARIANTS)}; got {variant!r}.")


@register(
    "finercam",
    kind="driver",
    summary="Finer-CAM: a base CAM of the target score minus the most similar classes' scores.",
    paper="Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation, "
    "CVPR 2025. https://arxiv.org/abs/2501.11309",
)
def finercam(
    probe,
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
        raise ValueError(f"finercam: variant must be one of {list(FINER_VARIANTS)}; got {variant!r}.")
    method = _base(base, "gradient")
    alpha = {"pgc": 1.0, "torchcam": 0.6}[variant] if alpha is None else alpha
    output, _, acts = probe.differentiable()
    if probe.class_idx is None:
        raise ValueError(
            "finercam compares classes: pass class-index targets (int, list of ints) or None, not callables."
        )
    layers = list(probe.instrumented.layers)
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
    probe, base: str = "gradcampp", resolution: str = "input", base_options: dict | None = None
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
        raise ValueError(f"refinecam: resolution must be one of {list(REFINE_RESOLUTIONS)}; got {resolution!r}.")
    method = _base(base, "gradient", "activation")
    layers = list(probe.instrumented.layers)
    if method.kind == "gradient":
        output, acts, grads = probe.gradients(probe.x, probe.targets)
        probe.record(output)
    else:
        acts, grads = probe.acts, dict.fromkeys(layers)
    maps = [_base_map(method, acts[k], grads[k], base_options or {}) for k in layers]
    if resolution == "input":
        size = tuple(probe.x.shape[2:])
        maps = [_normalize(_resize(m, size)) for m in maps]
    else:
        size = tuple(max(s) for s in zip(*(m.shape[1:] for m in maps)))
        maps = [_resize(_normalize(m, eps=1e-8), size) for m in maps]
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


def _gaussian_blur(maps: Tensor, ksize: int = 11, sigma: float = 5.0) -> Tensor:
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
    probe,
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
    if pool not in ("mean", "max"):
        raise ValueError(f"sess: pool must be 'mean' or 'max'; got {pool!r}.")
    if not 0.0 <= pre_filter_ratio < 1.0:
        raise ValueError(f"sess: pre_filter_ratio must be in [0, 1); got {pre_filter_ratio}.")
    if num_scales < 1:
        raise ValueError(f"sess: num_scales must be >= 1; got {num_scales}.")
    method = _base(base, "gradient", "activation")
    options = base_options or {}
    x = probe.x
    n, (h, w) = x.shape[0], x.shape[2:]
    window = window_size if window_size is not None else min(h, w)
    step = step_size if step_size is not None else window
    if scales is None:
        inc = int(round(window * scale_step_ratio))
        scales = [window + inc * i for i in range(num_scales)]
    class_idx = probe.class_idx
    per_image = list(class_idx.tolist()) if class_idx is not None else probe.targets
    if not isinstance(per_image, (list, tuple)):
        per_image = [per_image] * n

    patches, boxes = [], []  # patches (n, C, window, window); boxes (x1, y1, scaled_w, scaled_h)
    for scale in scales:
        if scale < window:
            raise ValueError(f"sess: every scale must be at least the window size {window}; got {scale}.")
        sh, sw = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
        scaled = x
        if (sh, sw) != (h, w):
            scaled = F.interpolate(x, (sh, sw), mode="bilinear", align_corners=False, antialias=True)
        for y1 in window_starts(sh, step, window):
            for x1 in window_starts(sw, step, window):
                patches.append(scaled[:, :, y1 : y1 + window, x1 : x1 + window])
                boxes.append((x1, y1, sw, sh))
    n_patches = len(patches)
    flat = torch.stack(patches).flatten(0, 1)  # (P * n, C, window, window), image index fastest
    targets = list(per_image) * n_patches
    chunk = max(1, batch_size)
    cams, scores = [], []
    bar = _progress(range(0, flat.shape[0], chunk), probe.progress, "sess")
    for start in bar:
        xs, ts = flat[start : start + chunk], targets[start : start + chunk]
        if method.kind == "gradient":
            output, acts, grads = probe.gradients(xs, ts)
        else:
            output, acts = probe.forward(xs)
            grads = dict.fromkeys(acts)
        layer_maps = [
            _resize(_base_map(method, acts[k], grads[k], options), (window, window)) for k in probe.instrumented.layers
        ]
        cams.append(_normalize(torch.stack(layer_maps).mean(0)))
        with torch.no_grad():
            out = torch.softmax(output, dim=-1) if use_softmax_scores else output
            scores.append(_target_scores(out, ts))
    cams_t = torch.cat(cams).view(n_patches, n, window, window)
    scores_t = torch.cat(scores).view(n_patches, n).float().clamp_min(0)

    # pre-filter: keep each image's highest-scoring patches (argsort order, as the reference)
    order = scores_t.argsort(0)
    keep = torch.zeros_like(scores_t, dtype=torch.bool)
    keep.scatter_(0, order[int(n_patches * pre_filter_ratio) :], True)
    top = scores_t.amax(0)
    weights = torch.where(top > 0, scores_t / torch.where(top > 0, top, 1.0), torch.ones_like(scores_t))
    weights = weights * keep

    total = torch.zeros(n, h, w, device=x.device)
    counts = torch.zeros_like(total)
    for p, (x1, y1, sw, sh) in enumerate(boxes):
        canvas = cams_t.new_zeros(n, sh, sw)
        canvas[:, y1 : y1 + window, x1 : x1 + window] = cams_t[p] * weights[p].view(n, 1, 1)
        pasted = _resize(canvas, (h, w))
        kept = keep[p].view(n, 1, 1)
        if pool == "max":
            total = torch.where(kept, torch.maximum(total, pasted), total)
        else:
            mask = (pasted > theta) & kept
            total = total + pasted * mask
            counts = counts + mask
    cam = total if pool == "max" else torch.where(counts > 0, total / counts.clamp_min(1), torch.zeros_like(total))
    if smooth:
        cam = _gaussian_blur(cam)
    return _same_map(probe, _normalize(cam))


def _target_scores(out: Tensor, targets: list) -> Tensor:
    """One score per row of ``out`` for per-row targets (class indices or callables)."""
    if all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        return out.gather(1, torch.tensor(targets, device=out.device).view(-1, 1)).squeeze(1)
    return torch.stack([out[i, t] if isinstance(t, int) else t(out[i]).reshape(()) for i, t in enumerate(targets)])


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return iterable
    return tqdm(iterable, desc=desc)


__all__ = ["fullgrad_map", "finer_scores", "window_starts", "KERNELS", "FINER_VARIANTS", "REFINE_RESOLUTIONS"]
