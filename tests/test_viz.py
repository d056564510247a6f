import numpy as np
import pytest
import torch
from PIL import Image

from fxcam import viz


def _cam_blob(h=32, w=48, cy=8, cx=36):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cam = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
    return cam / cam.max()


# --------------------------------------------------------------------------- colormaps
@pytest.mark.parametrize("name", viz.COLORMAPS)
def test_lut_shape_and_range(name):
    lut = viz.colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.float32
    assert lut.min() >= 0.0 and lut.max() <= 1.0
    with pytest.raises(ValueError):
        lut[0, 0] = 1.0  # read-only, shared


def test_jet_ends():
    jet = viz.apply_colormap(np.array([0.0, 0.5, 1.0]), "jet")
    np.testing.assert_allclose(jet[0], [0.0, 0.0, 0.5], atol=1e-6)  # dark blue
    np.testing.assert_allclose(jet[2], [0.5, 0.0, 0.0], atol=1e-6)  # dark red
    assert jet[1, 1] > 0.9  # green-ish in the middle


def test_gray_is_identity_and_clips():
    v = np.array([-1.0, 0.0, 0.25, 1.0, 3.0])
    out = viz.apply_colormap(v, "gray")
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0, 0.25, 1.0, 1.0], atol=1e-6)
    assert np.allclose(out[:, 0], out[:, 1]) and np.allclose(out[:, 1], out[:, 2])


def test_apply_colormap_shapes_and_tensor_input():
    v = torch.rand(2, 5, 7)
    out = viz.apply_colormap(v, "viridis")
    assert out.shape == (2, 5, 7, 3)
    with pytest.raises(ValueError, match="NaN"):
        viz.apply_colormap(np.array([np.nan]), "jet")


@pytest.mark.parametrize("name", ["jet", "turbo", "viridis", "inferno", "gray"])
def test_colormaps_match_matplotlib(name):
    mpl = pytest.importorskip("matplotlib")
    ref_name = "gray" if name == "gray" else name
    # Compare at matplotlib's table entries (i / 255): between them matplotlib is a
    # step function while we interpolate.
    ref = mpl.colormaps[ref_name](np.arange(256))[:, :3]
    ours = viz.apply_colormap(np.arange(256) / 255.0, name)
    assert np.abs(ours - ref).max() < 0.01


def test_unknown_colormap_names_it_and_lists_valid():
    with pytest.raises(ValueError) as e:
        viz.colormap_lut("hot_pink")
    msg = str(e.value)
    assert "hot_pink" in msg
    for name in viz.COLORMAPS:
        assert name in msg
    with pytest.raises(ValueError, match="hot_pink"):
        viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), colormap="hot_pink")


# --------------------------------------------------------------------------- to_pil
def test_to_pil_layouts():
    chw = torch.rand(3, 10, 20)
    p = viz.to_pil(chw)
    assert p.mode == "RGB" and p.size == (20, 10)
    np.testing.assert_array_equal(
        np.asarray(p), np.round(chw.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    )
    hwc = (np.random.default_rng(0).random((10, 20, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(viz.to_pil(hwc)), hwc)
    assert viz.to_pil(torch.rand(1, 3, 10, 20)).size == (20, 10)
    assert viz.to_pil(torch.rand(10, 20)).mode == "L"
    assert viz.to_pil(np.zeros((10, 20), bool)).mode == "L"
    assert viz.to_pil(np.zeros((10, 20, 4), np.uint8)).mode == "RGBA"
    img = Image.new("RGB", (5, 6))
    assert viz.to_pil(img) is img


def test_to_pil_bad_input():
    with pytest.raises(ValueError, match="shape"):
        viz.to_pil(torch.rand(5, 10, 20))
    with pytest.raises(ValueError, match="shape"):
        viz.to_pil(np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ValueError):
        viz.to_pil("not an image")
    with pytest.raises(ValueError, match="0..255"):
        viz.to_pil(np.full((4, 4), 300, dtype=np.int32))


# --------------------------------------------------------------------------- overlay
@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (48, 32), (128, 128, 128)),
        np.full((32, 48, 3), 128, np.uint8),
        torch.full((3, 32, 48), 0.5),
    ],
    ids=["pil", "uint8_hwc", "float_chw"],
)
def test_overlay_size_and_heat_location(image):
    cam = _cam_blob()  # peak at (y=8, x=36)
    out = viz.overlay(image, cam, colormap="jet", alpha=0.6)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (48, 32)
    a = np.asarray(out).astype(int)
    # Hot (red) where the cam peaks, cold (blue) far from it.
    assert a[8, 36, 0] > a[8, 36, 2] + 60
    assert a[30, 2, 2] > a[30, 2, 0] + 60


def test_overlay_resizes_low_res_cam():
    image = torch.zeros(3, 96, 96)
    cam = torch.zeros(12, 12)
    cam[1, 10] = 1.0  # top-right cell
    a = np.asarray(viz.overlay(image, cam, alpha=1.0)).astype(int)
    assert a.shape == (96, 96, 3)
    red = a[..., 0] - a[..., 2]
    y, x = np.unravel_index(red.argmax(), red.shape)
    assert 0 <= y < 24 and 72 <= x < 96


def test_overlay_alpha_extremes():
    img = np.full((8, 8, 3), 77, np.uint8)
    cam = np.ones((8, 8))
    np.testing.assert_array_equal(np.asarray(viz.overlay(img, cam, alpha=0.0)), img)
    heat = np.asarray(viz.overlay(img, cam, colormap="gray", alpha=1.0))
    assert (heat == 255).all()


def test_overlay_bad_input():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="single map"):
        viz.overlay(img, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(img, np.zeros((8, 8)), alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        viz.overlay(img, np.full((8, 8), np.nan))


# --------------------------------------------------------------------------- grid
def test_grid_size_default_and_nrow():
    ims = [torch.rand(3, 10, 20) for _ in range(5)]
    g = viz.grid(ims, pad=2)  # 3 per row -> 3 x 2
    assert g.size == (2 + 3 * (20 + 2), 2 + 2 * (10 + 2))
    g = viz.grid(torch.rand(5, 3, 10, 20), nrow=5, pad=0)
    assert g.size == (100, 10)
    g = viz.grid(np.zeros((4, 10, 20, 3), np.uint8), nrow=1, pad=1)
    assert g.size == (1 + 21, 1 + 4 * 11)


def test_grid_places_tiles_in_order():
    ims = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    a = np.asarray(viz.grid(ims, nrow=2, pad=1))
    assert a[1, 1, 0] == 10 and a[1, 6, 0] == 20 and a[6, 1, 0] == 30 and a[6, 6, 0] == 40
    assert a[0, 0, 0] == 255  # padding


def test_grid_labels_add_space():
    ims = [torch.rand(3, 16, 16) for _ in range(4)]
    plain = viz.grid(ims, nrow=2)
    cap = viz.grid(ims, nrow=2, labels=list("abcd"))
    titled = viz.grid(ims, nrow=2, row_labels=["row one", "row two"], col_labels=["x", "y"])
    assert cap.height > plain.height and cap.width == plain.width
    assert titled.width > plain.width and titled.height > plain.height


def test_grid_bad_input():
    with pytest.raises(ValueError, match="no images"):
        viz.grid([])
    with pytest.raises(ValueError, match="labels"):
        viz.grid([torch.rand(3, 4, 4)] * 3, labels=["a"])
    with pytest.raises(ValueError, match="row_labels"):
        viz.grid([torch.rand(3, 4, 4)] * 4, nrow=2, row_labels=["a"])
    with pytest.raises(ValueError, match="sequence"):
        viz.grid(torch.rand(3, 4, 4))
