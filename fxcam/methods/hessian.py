"""Second-order gradient methods: ShapleyCAM (gradient and Hessian-vector product of the suffix)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import expand_as_weights as _expand
from ..ops import spatial_dims as _spatial
from ..probe import Probe
from .registry import register


@register(
    "shapleycam",
    kind="driver",
    summary="ShapleyCAM: channels weighted by the mean of gradient - 1/2 Hessian x activation.",
    paper="Cai et al., CAMs as Shapley Value-based Explainers, 2025. https://arxiv.org/abs/2501.06261",
)
def shapleycam(probe: Probe) -> dict[str, Tensor]:
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
    layers = list(probe.layers)
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
