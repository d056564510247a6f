"""Two small models trained on :mod:`fxcam.demo.scenes`, with weights shipped in the package.

* :class:`DemoCNN`: conv/bn/relu stages (ReLUs in place, as in torchvision) down to a
  12x12 feature map, global max pooling and a linear head. Target layer
  ``"features.3"`` (the last stage, (N, 96, 12, 12)).
* :class:`DemoViT`: a tiny ViT shaped like timm's ``VisionTransformer``: a conv
  patch embedding with stride 8 (``patch_size = 8`` -> a 12x12 token grid), one class
  token (``num_prefix_tokens = 1``), pre-norm blocks ``blocks[i].norm1 / attn / norm2 /
  mlp``, final ``norm`` and ``head``. Attention is written out (``q @ k^T -> softmax ->
  @ v``) so torch.fx sees the softmax node. Target layer ``"blocks.3.norm1"`` (tokens
  (N, 145, 64)).

Both take images in [0, 1] (what :func:`fxcam.demo.make_scenes` returns) and normalize
them internally, so ``model(images)`` is all there is to it. Both trace with
``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

import io
from importlib import resources

import torch
from torch import nn

from ..errors import FxcamError

from .scenes import CLASSES, IMAGE_SIZE, MEAN, STD

__all__ = ["DEFAULT_LAYERS", "DemoCNN", "DemoViT", "load_demo_model"]

#: The layer to explain for each demo model (a qualified module name).
DEFAULT_LAYERS = {"cnn": "features.3", "vit": "blocks.3.norm1"}

_WEIGHTS = {"cnn": "demo_cnn.pt", "vit": "demo_vit.pt"}


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel constants kept as (non-persistent) buffers."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # Downsampling convs are 4x4 / stride 2 / padding 1: output cell i is centred on input
    # pixels 2i and 2i+1, where bilinear upsampling of the map puts it. (A 3x3 / stride 2
    # conv is centred on pixel 2i: half an input pixel off per stage, 3.5 pixels at 96x96
    # after three of them, which visibly shifts CAMs towards the bottom right.)
    k = 4 if stride == 2 else 3
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DemoCNN(nn.Module):
    """Small CNN: 96x96 -> 48 -> 24 -> 12 (stages 0-2), then a stride-1 stage 3 at 12x12.

    ``features`` is an ``nn.Sequential`` of four stages; ``features.3`` is the last conv
    stage (the natural GradCAM layer), followed by ``pool`` and ``head`` (linear).

    ``pool="max"`` (the shipped model) is global max pooling: with it the class evidence
    peaks on the object (Oquab et al., 2015), where global average pooling spreads it
    over the object's surroundings (rings around discs, peaks beyond corners).
    ``pool="avg"`` is available. The shipped weights also come from a training loss that
    makes the class map equivariant to flips and rotations (``examples/train_demo.py``),
    which takes GradCAM's pointing game from 86% to 97-100%.
    """

    def __init__(self, num_classes: int = len(CLASSES), widths=(32, 48, 64, 96), pool: str = "max"):
        super().__init__()
        w0, w1, w2, w3 = widths
        if pool not in ("avg", "max"):
            raise FxcamError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.normalize = Normalize()
        self.features = nn.Sequential(
            nn.Sequential(*_conv_bn_relu(3, w0, 2)),  # 48x48
            nn.Sequential(*_conv_bn_relu(w0, w1, 2), *_conv_bn_relu(w1, w1)),  # 24x24
            nn.Sequential(*_conv_bn_relu(w1, w2, 2), *_conv_bn_relu(w2, w2)),  # 12x12
            nn.Sequential(*_conv_bn_relu(w2, w3), *_conv_bn_relu(w3, w3)),  # 12x12
        )
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.head(torch.flatten(self.pool(x), 1))


class PatchEmbed(nn.Module):
    """Conv stem with total stride ``patch_size`` (8): (N, 3, 96, 96) -> (N, 144, dim).

    A few strided convs instead of one 8x8 linear projection: ViTs this small train
    from scratch far better with a convolutional stem, and the token grid is the same.
    """

    def __init__(self, dim: int, patch_size: int = 8):
        super().__init__()
        if patch_size != 8:
            raise FxcamError(f"PatchEmbed supports patch_size=8 only, got {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (IMAGE_SIZE // patch_size, IMAGE_SIZE // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, 32, 2), *_conv_bn_relu(32, 48, 2), *_conv_bn_relu(48, 48)
        )
        self.proj = nn.Conv2d(48, dim, 4, stride=2, padding=1)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid for an input of ``img_size`` (H, W), as timm's ``PatchEmbed``."""
        h, w = img_size
        return -(-h // self.patch_size), -(-w // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # (N, dim, 12, 12)
        return x.flatten(2).transpose(1, 2)  # (N, 144, dim)


class Attention(nn.Module):
    """Multi-head self-attention with the softmax written out for torch.fx."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise FxcamError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DemoViT(nn.Module):
    """Tiny ViT (timm layout): 12x12 patch tokens + 1 class token, ``depth`` blocks."""

    num_prefix_tokens = 1

    def __init__(
        self,
        num_classes: int = len(CLASSES),
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        patch_size: int = 8,
        global_pool: str = "token",
    ):
        super().__init__()
        if global_pool not in ("avg", "token"):
            raise FxcamError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
        self.global_pool = global_pool
        self.patch_size = patch_size
        self.embed_dim = dim
        self.normalize = Normalize()
        self.patch_embed = PatchEmbed(dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> normalized tokens (N, 1 + 144, dim), as in timm."""
        x = self.patch_embed(self.normalize(x))
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits: mean of the patch tokens (``global_pool="avg"``) or the class
        token (``"token"``), then ``head``, as in timm."""
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(1)
        else:
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_BUILDERS = {"cnn": DemoCNN, "vit": DemoViT}


def load_demo_model(name: str = "cnn", device="cpu") -> nn.Module:
    """Build a demo model and load its shipped weights; float32, eval mode, on ``device``.

    ``name`` is ``"cnn"`` or ``"vit"``. Weights live in ``fxcam/demo/weights/`` (stored
    as float16 to keep the package small; see ``examples/train_demo.py``).
    """
    if name not in _BUILDERS:
        raise FxcamError(f"unknown demo model {name!r}; choose one of {sorted(_BUILDERS)}")
    model = _BUILDERS[name]()
    ref = resources.files(__package__).joinpath("weights", _WEIGHTS[name])
    if not ref.is_file():
        raise FxcamError(
            f"demo weights {_WEIGHTS[name]!r} are missing from fxcam/demo/weights/; "
            "run `python examples/train_demo.py` to produce them"
        )
    state = torch.load(io.BytesIO(ref.read_bytes()), map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval()
