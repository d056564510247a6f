"""Transformer-specific methods: maps from attention probabilities and their gradients.

The attention probabilities are nodes of the traced graph, not hook captures: the probe
compiles the model once more with fused attention made explicit
(:func:`fxcam.passes.attention.explicit_attention`: ``F.scaled_dot_product_attention`` and
``nn.MultiheadAttention`` become matmul-softmax-matmul) and the softmax outputs tapped
(:meth:`fxcam.probe.Probe.attention`). Both methods need global self-attention over one token
sequence per image (ViT, DeiT, DINOv2 with registers); window attention (Swin, MaxViT)
raises an error that points to the gradient methods.

Driver contract: ``fn(probe) -> {layer: (N, 1, h, w)}``; the explainer ReLUs, normalizes and
upsamples as for every method. Each returns the same map for every explainer layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import FxcamError
from ..probe import Probe
from .registry import register


def _selected_blocks(layers, blocks: dict[str, str | None], method: str) -> list[str]:
    """The attentions whose block holds (or is) one of ``layers``, in execution order."""
    chosen = set()
    for layer in layers:
        hits = [a for a, b in blocks.items() if b is not None and (layer == b or layer.startswith(b + "."))]
        hits += [a for a in blocks if layer == a or layer.startswith(a + ".")]
        if not hits:
            valid = [b for b in blocks.values() if b is not None]
            raise FxcamError(
                f"{method}: layer '{layer}' is not inside a transformer block with attention. Pass blocks (or layers "
                f"inside them) as layers=, e.g. {valid[-2:]}; the model's blocks: {valid}."
            )
        chosen.update(hits)
    return [a for a in blocks if a in chosen]


@register(
    "legrad",
    kind="driver",
    summary="LeGrad: positive gradients of each block's class score w.r.t. its attention probabilities (ViT).",
    paper="Bousselham et al., LeGrad, 2024, Eq. 4-6. https://arxiv.org/abs/2404.03214 (torchcam 0.5.0 LeGrad)",
)
def legrad(probe: Probe) -> dict[str, Tensor]:
    r"""LeGrad as torchcam 0.5.0 computes it.

    For each selected block :math:`l` with post-softmax attention :math:`A^l` (heads
    :math:`h`, queries :math:`i`, keys :math:`j`) and output tokens :math:`Z^l`, the block's own
    score is the model's head on the mean token, :math:`s^l = \mathrm{head}(\mathrm{norm}(\bar Z^l))_c`
    (:func:`fxcam.layers.token_head`), and

    .. math:: E^l_j = \frac{1}{H\,Q} \sum_{h,i} \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial A^l_{h,i,j}}\Big),
              \qquad L = \frac{1}{|\mathcal{L}|} \sum_{l \in \mathcal{L}} E^l_{\text{patches}}

    (prefix keys dropped, the rest folded onto the patch grid). Attention values are not
    multiplied into the gradients. The selected blocks :math:`\mathcal{L}` are those holding the
    explainer's layers: the default ``blocks[-1].norm1`` selects the last block;
    ``layers=[f"blocks.{i}" for i in range(8, 12)]`` the last four (torchcam's example). The
    class :math:`c` is the explained class of the final output (top-1 by default); callable
    targets are applied to each block's logits. The layers are averaged before normalization
    (torchcam), so every ``per_layer`` map is this average.

    Needs global self-attention and a known head (torchvision ``VisionTransformer``, timm ViTs).
    """
    att = probe.attention()
    att.check_global("legrad")
    if att.head is None:
        raise FxcamError(
            "legrad scores every block with the model's final norm and classifier; fxcam finds them in torchvision's "
            "VisionTransformer and in timm-shaped ViTs (forward_head, or norm + head) only. Use 'gradrollout' (no "
            "per-block score) for this model."
        )
    chosen = _selected_blocks(probe.layers, att.blocks, "legrad")
    missing = [a for a in chosen if a not in att.tokens]
    if missing:
        raise FxcamError(f"legrad: no block output found for attention {missing}; pass the blocks as layers=.")
    targets = probe.class_idx if probe.class_idx is not None else probe.targets
    relevance = None
    for i, a in enumerate(chosen):
        with torch.enable_grad():
            score, _ = probe.resolve(targets, att.head(att.tokens[a]))
        (grad,) = torch.autograd.grad(score.sum(), att.probs[a], retain_graph=i < len(chosen) - 1)
        r = torch.relu(grad.float()).mean((1, 2))  # (N, K)
        relevance = r if relevance is None else relevance + r
    cam = att.to_map(relevance / len(chosen))
    return {layer: cam for layer in probe.layers}


@register(
    "gradrollout",
    kind="driver",
    summary="Gradient-weighted attention rollout (Chefer et al. 2021): class-specific relevance through all blocks.",
    paper="Chefer, Gur & Wolf, Generic Attention-model Explainability, ICCV 2021, Eq. 5-6. "
    "https://arxiv.org/abs/2103.15679",
)
def gradrollout(probe: Probe) -> dict[str, Tensor]:
    r"""Gradient-weighted attention rollout (Chefer et al. 2021, Eq. 5-6).

    With :math:`A^b` the post-softmax attention of block :math:`b` and
    :math:`\nabla A^b = \partial y / \partial A^b` the gradient of the explained score:

    .. math:: \bar A^b = \mathbb{E}_h\big[(\nabla A^b \odot A^b)^+\big],\qquad
              R \leftarrow R + \bar A^b R \quad (R = I \text{ initially, blocks in order})

    The map is the class token's row of :math:`R` over the patch tokens (the mean row over all
    tokens for models without prefix tokens). Uses every global attention of the model, one
    backward pass for all of them; the explainer's layers only name the token layout, and each
    gets the same map.
    """
    att = probe.attention()
    att.check_global("gradrollout")
    names = list(att.probs)
    grads = torch.autograd.grad(att.scores.sum(), [att.probs[a] for a in names], allow_unused=True)
    first = att.probs[names[0]]
    n, t = first.shape[0], first.shape[-1]
    rollout = torch.eye(t, device=first.device, dtype=torch.float32).expand(n, t, t)
    for a, g in zip(names, grads):
        if g is None:  # an attention the score does not depend on (e.g. after the class token is read)
            continue
        weighted = (g.float() * att.probs[a].detach().float()).clamp(min=0).mean(1)
        rollout = rollout + weighted @ rollout
    row = rollout[:, 0] if att.prefix_tokens > 0 else rollout.mean(1)
    cam = att.to_map(row)
    return {layer: cam for layer in probe.layers}
