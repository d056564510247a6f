"""``--weights PATH``: reading a ``state_dict`` file into a model, with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .common import CLIError, one_line

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def looks_like_file(value: str) -> bool:
    """Whether a ``--weights`` value names a file (rather than DEFAULT or a weights name)."""
    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES) or Path(value).exists()


def load_state_dict_file(model: nn.Module, path: str, spec: str) -> None:
    """Load a ``state_dict`` saved with ``torch.save`` (or safetensors) into ``model``, strictly."""
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
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = model.state_dict()
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
        hint = " If the classifier has another number of classes, pass --num-classes." if mismatched else ""
        raise CLIError(
            f"Weights '{path}' do not fit {spec}: {'; '.join(parts) or one_line(exc)[:200]}.{hint}"
        ) from None
