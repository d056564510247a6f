"""Smooth Grad-CAM++: Grad-CAM++ with gradients averaged over noisy copies of the input."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import FxcamError
from ..probe import Probe
from .registry import register


@register(
    "smoothgradcampp",
    kind="driver",
    summary="Smooth Grad-CAM++: Grad-CAM++ alphas from gradients averaged over noisy inputs.",
    paper="Omeiza et al., Smooth Grad-CAM++, 2019. https://arxiv.org/abs/1908.01224",
)
def smoothgradcampp(
    probe: Probe,
    num_samples: int = 4,
    std: float = 0.3,
    variant: str = "paper",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Smooth Grad-CAM++ as torchcam defines it (alpha numerator from averaged squared gradients).

    ``num_samples`` noisy copies :math:`x + \mathcal{N}(0, \mathrm{std}^2)` go through the compiled
    graph as one batch of ``num_samples * N`` images (one forward, one backward of the suffix).
    With :math:`D^{(p)} = \frac{1}{n}\sum_m g_m^p` over the samples and :math:`A` the clean
    activations:

    .. math:: \alpha_k(s) = \frac{D^{(2)}_k(s)}{2 D^{(2)}_k(s) + \sum_{s'} A_k(s') D^{(3)}_k(s')},
              \qquad w_k = \sum_s \alpha_k(s)\,\mathrm{ReLU}(G_k(s))

    ``variant="paper"`` (default) uses the averaged gradient :math:`G = D^{(1)}` and the map
    :math:`\sum_k w_k A_k` of the clean activations. ``variant="torchcam"`` reproduces what
    torchcam 0.5.0's code computes: its hooks keep the *last* noisy sample's gradient and
    activation, so :math:`G` is that sample's gradient and the map weights that sample's
    activations (the alpha denominator still uses the clean ones). Noise is drawn with ``torch.randn`` (from ``generator`` if given) in sample order,
    the same stream torchcam draws from the global generator. The target class of every noisy
    copy is the clean image's (top-1 when no target is given).
    """
    if variant not in ("paper", "torchcam"):
        raise FxcamError(f"smoothgradcampp: variant must be 'paper' or 'torchcam'; got {variant!r}.")
    if num_samples < 1:
        raise FxcamError(f"smoothgradcampp: num_samples must be >= 1; got {num_samples}.")
    x = probe.x
    device = generator.device if generator is not None else x.device
    noise = torch.randn((num_samples, *x.shape), generator=generator, dtype=x.dtype, device=device)
    noisy = (x.unsqueeze(0) + noise.to(x.device) * std).flatten(0, 1)
    _, noisy_acts, grads = probe.gradients(noisy, probe.repeat_targets(num_samples))
    out = {}
    for layer, acts in probe.acts.items():
        g = grads[layer].unflatten(0, (num_samples, -1))
        d2, d3 = g.pow(2).mean(0), g.pow(3).mean(0)
        dims = tuple(range(2, acts.ndim))
        denom = 2 * d2 + (d3 * acts).sum(dims, keepdim=True) + 1e-8
        g1 = g.mean(0) if variant == "paper" else g[-1]
        weights = (d2 / denom * torch.relu(g1)).sum(dims)
        mapped = acts if variant == "paper" else noisy_acts[layer].unflatten(0, (num_samples, -1))[-1]
        out[layer] = weights.reshape(*weights.shape, *([1] * len(dims))) * mapped
    return out
