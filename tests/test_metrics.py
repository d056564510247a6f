"""fxcam.metrics on toy maps whose answers are worked out by hand."""

from __future__ import annotations

import torch

import fxcam.metrics
from fxcam.metrics import pointing_game


def test_pointing_game_is_public():
    assert "pointing_game" in fxcam.metrics.__all__
    assert fxcam.metrics.pointing_game is pointing_game


def test_pointing_game_two_3x3_maps():
    cams = torch.tensor(
        [
            [[0.1, 0.2, 0.3],
             [0.4, 0.9, 0.5],  # maximum at the centre (1, 1)
             [0.0, 0.1, 0.2]],
            [[0.0, 0.0, 0.0],
             [0.0, 0.2, 0.0],
             [0.0, 0.0, 0.7]],  # maximum at the bottom-right corner (2, 2)
        ]
    )
    masks = torch.tensor(
        [
            [[0, 0, 0],
             [0, 1, 1],
             [0, 0, 0]],  # (1, 1) is inside: a hit
            [[1, 1, 0],
             [1, 1, 0],
             [0, 0, 0]],  # (2, 2) is outside: a miss
        ]
    )
    hits = pointing_game(cams, masks)
    assert hits.dtype == torch.bool and hits.shape == (2,)
    assert hits.tolist() == [True, False]
    assert pointing_game(cams, 1 - masks).tolist() == [False, True]


def test_pointing_game_ties_take_the_first_maximum():
    cams = torch.zeros(1, 3, 3)
    cams[0, 0, 2] = 1.0  # flat index 2: the first of the two maxima
    cams[0, 2, 0] = 1.0  # flat index 6
    first_only = torch.zeros(1, 3, 3, dtype=torch.bool)
    first_only[0, 0, 2] = True
    second_only = torch.zeros(1, 3, 3, dtype=torch.bool)
    second_only[0, 2, 0] = True
    assert pointing_game(cams, first_only).tolist() == [True]
    assert pointing_game(cams, second_only).tolist() == [False]
