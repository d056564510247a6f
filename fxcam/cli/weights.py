"""What ``--weights`` names: a ``state_dict`` file read into a model, or torchvision's weights by name
(fetched into torch's hub cache); with one-line errors."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .common import CLIError, one_line

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def looks_like_file(value: str) -> bool:
    """Whether a ``--weights`` value names a file (rather than DEFAULT or a weights name)."""
    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES) or Path(value).exists()


def load_state_dict_file(model: nn.Module, path: str, spec: str) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (or safetensors) into ``model``, strictly."""
    state = _read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        parts, mismatched = _differences(model.state_dict(), state)
        hint = " If the classifier has another number of classes, pass --num-classes." if mismatched else ""
        raise CLIError(
            f"Weights '{path}' do not fit {spec}: {'; '.join(parts) or one_line(exc)[:200]}.{hint}"
        ) from None


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """The dict of tensors in the file (unwrapped from a checkpoint dict, without DataParallel's prefix)."""
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"Weights file '{path}' does not exist; --weights takes a state_dict file or DEFAULT.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except ImportError:
        raise CLIError(f"Reading '{path}' needs the safetensors package: pip install safetensors.") from None
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors of all kinds
        raise CLIError(
            f"Cannot load weights '{path}': {type(exc).__name__}: {one_line(exc)[:200]}. --weights takes a "
            f"state_dict saved with torch.save(model.state_dict(), PATH) (a whole pickled model is not accepted)."
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CLIError(f"'{path}' does not hold a state_dict (a dict of tensors); got {type(state).__name__}.")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _differences(own: dict[str, Tensor], state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """What keeps ``state`` from fitting a model whose own state_dict is ``own``: descriptions, and the
    keys of another shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                     f"model {tuple(own[k].shape)})")
    return parts, mismatched


def torchvision_weights(enum: Any, value: str, spec: str) -> Any:
    """The member of torchvision's weights ``enum`` that ``--weights value`` names (DEFAULT, IMAGENET1K_V2, ...)."""
    members = list(enum.__members__) if enum is not None else []
    if enum is None or not members:
        raise CLIError(
            f"--weights {value}: torchvision has no pretrained weights for {spec}; pass --weights PATH to a state_dict."
        )
    key = value.split(".")[-1]  # accept ResNet50_Weights.IMAGENET1K_V2
    if key not in enum.__members__:
        raise CLIError(
            f"--weights {value!r} is neither a file nor a weights name of {spec}; valid names: {members} "
            f"(DEFAULT = {enum.DEFAULT.name if hasattr(enum, 'DEFAULT') else '-'}), or a path to a state_dict file."
        )
    return enum[key]


def fetch_torchvision_weights(weights: Any, spec: str) -> None:
    """Put the checkpoint in torch's hub cache (a no-op when it is there), or explain why not."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        return
    try:
        torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, map_location="cpu")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CLIError(
            f"--weights {weights.name.split('.')[-1] if hasattr(weights, 'name') else weights}: could not download "
            f"{weights} for {spec} from {weights.url} ({reason}); this machine seems to be offline. "
            f"Pass --weights PATH to a state_dict file (.pt/.pth, saved with torch.save(model.state_dict(), PATH)), "
            f"or copy the checkpoint to {cached}."
        ) from None
