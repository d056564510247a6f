"""The ``fxcam`` command end to end, in a temporary folder.

Most runs call ``fxcam.cli.main(argv)`` in-process (fast); one runs ``python -m fxcam`` in a
subprocess and one the installed console script (when there is one). Every error case checks
the contract: non-zero exit, one ``fxcam: error:`` line on stderr, no traceback, and no
output (not even a hidden temporary folder) left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fxcam
from fxcam import methods
from fxcam.cli import main
from fxcam.cli.images import Preprocess, cam_to_image
from fxcam.demo import CLASSES, DEFAULT_LAYERS, IMAGE_SIZE, load_demo_model, make_scenes
from fxcam.metrics import pointing_game

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    """``main(argv)`` -> (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders the atomic writer would leave if it failed to clean up."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("fxcam: warning:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("fxcam: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Three generated scenes as PNGs (one resized to a non-square size) and their object masks."""
    folder = tmp_path_factory.mktemp("scenes")
    images, labels, masks = make_scenes(3, seed=123)
    paths, mask_arrays = [], []
    for i in range(3):
        img = Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        mask = Image.fromarray(masks[i].numpy().astype(np.uint8) * 255)
        if i == 2:  # a non-square image at another size: the overlay and map keep its size
            img, mask = img.resize((150, 120), Image.BILINEAR), mask.resize((150, 120), Image.NEAREST)
        path = folder / f"scene{i}_{CLASSES[int(labels[i])]}.png"
        img.save(path)
        paths.append(path)
        mask_arrays.append(np.asarray(mask) > 127)
    return paths, [int(v) for v in labels], mask_arrays


# --------------------------------------------------------------------------- explain
def test_explain_demo_cnn_writes_overlays_maps_and_manifest(scenes, tmp_path, capsys):
    paths, labels, masks = scenes
    out = tmp_path / "out"
    rc, stdout, err = run(
        capsys, "explain", paths[0].parent, "--model", "demo:cnn", "--out", out, "--batch-size", 2, "--no-progress"
    )
    assert rc == 0, err
    assert "Traceback" not in err and "random weights" not in err
    names = sorted(p.name for p in out.iterdir())
    stems = [p.stem for p in paths]
    assert names == sorted(["manifest.json"] + [f"{s}_overlay.png" for s in stems] + [f"{s}_cam.npy" for s in stems])
    assert leftovers(tmp_path) == []

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "demo:cnn"
    assert manifest["method"] == "gradcam"
    assert manifest["layers"] == [DEFAULT_LAYERS["cnn"]]
    assert manifest["versions"]["fxcam"] and manifest["versions"]["torch"] == torch.__version__
    assert [r["input"] for r in manifest["images"]] == [str(p.resolve()) for p in paths]
    for record, path, label, mask in zip(manifest["images"], paths, labels, masks):
        predicted, explained = record["predicted"], record["explained"]
        assert predicted["name"] == CLASSES[predicted["index"]]
        assert 0 < predicted["probability"] <= 1
        assert explained["index"] == predicted["index"]  # no --target: the top-1 class
        assert predicted["index"] == label  # the demo CNN classifies its own scenes
        size = Image.open(path).size
        assert record["image_size"] == list(size)
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == size
            overlay.load()
        cam = np.load(out / record["cam"])
        assert cam.dtype == np.float32 and cam.shape == (size[1], size[0])
        assert 0 <= cam.min() and cam.max() <= 1
        assert cam[mask].mean() > 2 * cam[~mask].mean()  # the heat is on the object
    assert f"in {out}/" in stdout and CLASSES[labels[0]] in stdout


def test_explain_target_by_name_method_and_overwrite(scenes, tmp_path, capsys):
    paths, labels, _ = scenes
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced only once the new result is complete")
    target = CLASSES[(labels[0] + 1) % len(CLASSES)]
    rc, _, err = run(
        capsys, "explain", paths[0], paths[1], "--model", "demo:cnn", "--method", "Grad-CAM++", "--target", target,
        "--out", out, "--overwrite", "--colormap", "turbo", "-q",
    )
    assert rc == 0, err
    assert not (out / "old.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "gradcampp"
    assert {r["explained"]["name"] for r in manifest["images"]} == {target}
    assert leftovers(tmp_path) == []


def test_explain_file_factory_spec(tmp_path, capsys, scenes):
    """path/to/file.py:factory builds the model; ImageNet preprocessing at --size."""
    (tmp_path / "tiny.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, 4))\n"
    )
    out = tmp_path / "out"
    rc, _, err = run(capsys, "explain", scenes[0][2], "--model", f"{tmp_path / 'tiny.py'}:make", "--size", 32,
                     "--layer", "1", "--out", out, "-q")
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == ["1"] and manifest["preprocess"]["input_size"] == [32, 32]
    assert np.load(out / manifest["images"][0]["cam"]).shape == (120, 150)


# --------------------------------------------------------------------------- errors
@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "exists").mkdir()
    (tmp_path / "tiny.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(2, 2)\n")
    return tmp_path


ERRORS = {
    "missing image": (["explain", "{d}/nope.png", "--model", "demo:cnn"], ["nope.png", "does not exist"]),
    "non-image file": (["explain", "{d}/notes.txt", "--model", "demo:cnn"], ["notes.txt", "not a format PIL"]),
    "corrupt image": (["explain", "{d}/fake.png", "--model", "demo:cnn"], ["fake.png"]),
    "folder without images": (["explain", "{d}/empty", "--model", "demo:cnn"], ["holds no image files"]),
    "empty image file": (["explain", "{d}/empty.png", "--model", "demo:cnn"], ["empty.png", "empty file"]),
    "image name too long": (
        ["explain", "{d}/" + "x" * 300 + ".png", "--model", "demo:cnn"], ["Cannot read", "name too long"]
    ),
    "spec without kind": (["explain", "{img}", "--model", "resnet18"], ["torchvision:resnet18"]),
    "unknown torchvision model": (["explain", "{img}", "--model", "torchvision:resnet51"], ["resnet50"]),
    "unknown demo model": (["explain", "{img}", "--model", "demo:rnn"], ["demo:cnn"]),
    "missing model file": (["explain", "{img}", "--model", "{d}/none.py:make"], ["does not exist"]),
    "missing factory": (["explain", "{img}", "--model", "{d}/tiny.py:build"], ["'build'", "make"]),
    "unknown method": (["explain", "{img}", "--model", "demo:cnn", "--method", "gradcan"], ["gradcam", "Closest"]),
    "unknown layer": (["explain", "{img}", "--model", "demo:cnn", "--layer", "features.9"], ["features.9", "Closest"]),
    "existing out": (["explain", "{img}", "--model", "demo:cnn", "--out", "{d}/exists"], ["already exists", "--overwrite"]),
    "missing weights file": (["explain", "{img}", "--model", "demo:cnn", "--weights", "{d}/w.pth"], ["w.pth"]),
    "unknown target": (["explain", "{img}", "--model", "demo:cnn", "--target", "circel"], ["circle"]),
    "target out of range": (["explain", "{img}", "--model", "demo:cnn", "--target", "9"], ["[0, 5]"]),
    "bad size": (["explain", "{img}", "--model", "demo:cnn", "--size", "1", "2", "3"], ["--size"]),
    "layers of a bad spec": (["layers", "torchvision:resnet51"], ["resnet50"]),
    "export to a bad suffix": (["export", "demo:cnn", "--out", "{d}/model.zip"], [".onnx", ".pt2"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_clear_line_and_leaves_nothing(case, bad_inputs, scenes, capsys):
    argv, needles = ERRORS[case]
    argv = [a.format(d=bad_inputs, img=scenes[0][0]) for a in argv]
    out = bad_inputs / "out"
    if argv[0] == "explain" and "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in bad_inputs.iterdir())
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, *needles)
    assert sorted(p.name for p in bad_inputs.iterdir()) == before  # nothing created, nothing removed


def test_weights_default_offline_says_so(monkeypatch, tmp_path, scenes, capsys):
    """No network (simulated): a one-line error that says so and suggests --weights PATH."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    out = tmp_path / "out"
    rc, _, err = run(
        capsys, "explain", scenes[0][0], "--model", "torchvision:resnet18", "--weights", "DEFAULT", "--out", out
    )
    assert_one_line_error(rc, err, "offline", "--weights PATH", "resnet18")
    assert not out.exists() and leftovers(tmp_path) == []


def test_weights_default_from_the_hub_cache(monkeypatch, tmp_path, scenes, capsys):
    """A checkpoint in torch's hub cache is used offline, with the weights' own resize + center crop."""
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    weights = MobileNet_V3_Small_Weights.DEFAULT
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(mobilenet_v3_small().state_dict(), cache / Path(weights.url).name)  # stands in for the download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", None)  # any download attempt would fail
    out = tmp_path / "out"
    rc, _, err = run(capsys, "explain", scenes[0][2], "--model", "torchvision:mobilenet_v3_small", "--weights",
                     "DEFAULT", "--out", out, "-q")
    assert rc == 0, err
    assert err == ""  # no random-weights warning
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == str(weights)
    assert manifest["preprocess"]["center_crop"] and manifest["preprocess"]["input_size"] == [224, 224]
    record = manifest["images"][0]
    assert record["predicted"]["name"] == weights.meta["categories"][record["predicted"]["index"]]
    cam = np.load(out / record["cam"])
    assert cam.shape == (120, 150)  # the whole image; the cropped-off sides (150 vs 120 wide) are 0
    assert cam[:, :10].max() == 0 and cam[:, -10:].max() == 0 and cam[:, 20:-20].max() > 0.9


def test_weights_path_must_fit_the_model(tmp_path, scenes, capsys):
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--weights", tmp_path / "other.pt",
                     "--out", tmp_path / "out")
    assert_one_line_error(rc, err, "do not fit demo:cnn", "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_random_weights_warning(tmp_path, scenes, capsys):
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "torchvision:mobilenet_v3_small", "--size", 64,
                     "--out", tmp_path / "out", "-q")
    assert rc == 0, err
    assert "fxcam: warning: torchvision:mobilenet_v3_small has random weights" in err


def test_failure_midway_leaves_no_output_and_keeps_the_old_one(tmp_path, scenes, capsys):
    """An image that fails to decode in the second batch: the first batch's files are discarded."""
    truncated = tmp_path / "zz_truncated.png"
    truncated.write_bytes(scenes[0][0].read_bytes()[:300])  # a valid header, cut-off data
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the previous result")
    rc, _, err = run(capsys, "explain", scenes[0][0], scenes[0][1], truncated, "--model", "demo:cnn",
                     "--batch-size", 2, "--out", out, "--overwrite")
    assert_one_line_error(rc, err, "zz_truncated.png")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert leftovers(tmp_path) == []


def test_interrupted_run_leaves_nothing(monkeypatch, tmp_path, scenes, capsys):
    import fxcam.viz

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fxcam.viz, "overlay", interrupt)
    out = tmp_path / "deeper" / "out"
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", out)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it created


def test_sigterm_exits_143_and_restores_the_handler(monkeypatch, tmp_path, scenes, capsys):
    import fxcam.viz

    def terminate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(fxcam.viz, "overlay", terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", out)
    assert rc == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    assert_one_line_error(rc, err)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_debug_shows_the_traceback(tmp_path, scenes, monkeypatch):
    monkeypatch.setenv("FXCAM_DEBUG", "1")
    with pytest.raises(Exception, match="does not exist"):
        main(["explain", str(tmp_path / "nope.png"), "--model", "demo:cnn", "--out", str(tmp_path / "out")])


def test_usage_error_is_one_line(capsys):
    rc, _, err = run(capsys, "explain", "x.png")  # --model missing
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--model" in err and "--help" in err


# --------------------------------------------------------------------------- layers, methods, demo
@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_layers_lists_names_and_shapes_and_marks_the_default(name, capsys):
    from fxcam import layer_shapes, list_layers

    rc, stdout, err = run(capsys, "layers", f"demo:{name}")
    assert rc == 0, err
    table_rows = [line.split() for line in stdout.split("\n\n")[0].splitlines()[2:]]  # after header and rule
    model = load_demo_model(name)
    shapes = layer_shapes(model, (IMAGE_SIZE, IMAGE_SIZE))
    names = list_layers(model)
    assert [r[-2] for r in table_rows] == names  # every name, in execution order
    for r in table_rows:
        assert r[-1] == ("x".join(map(str, shapes[r[-2]])) if r[-2] in shapes else "-")
    assert [r[1] for r in table_rows if len(r) == 3 and r[0] == "*"] == [DEFAULT_LAYERS[name]]
    assert f"default ({DEFAULT_LAYERS[name]})" in stdout


def test_methods_lists_every_method_with_its_description(capsys):
    rc, stdout, _ = run(capsys, "methods")
    assert rc == 0
    for name, summary in methods.describe().items():
        assert any(line.split()[0] == name and summary in line for line in stdout.splitlines()), name


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = run(capsys, "demo", "--out", out, "--n", 12, "--rows", 2, "--methods", "gradcam", "layercam",
                          "--no-progress")
    assert rc == 0, err
    assert (out / "cnn_grid.png").is_file() and (out / "vit_grid.png").is_file()
    with Image.open(out / "cnn_grid.png") as grid:
        assert grid.width > 3 * 2 * IMAGE_SIZE and grid.height > 2 * 2 * IMAGE_SIZE  # 3 columns, 2 rows of 2x tiles
    assert len(list((out / "vit" / "layercam").glob("*.png"))) == 2
    results = json.loads((out / "results.json").read_text())
    assert set(results["pointing_game"]) == {"cnn", "vit"}
    assert set(results["pointing_game"]["cnn"]) == {"gradcam", "layercam"}
    lines = stdout.splitlines()
    assert any(line.startswith("gradcam") and line.count("%") == 2 for line in lines)
    assert any(line.startswith("(model accuracy)") for line in lines)
    assert leftovers(tmp_path) == []


def test_pointing_game_counts_the_argmax_on_the_mask():
    cams = torch.zeros(2, 4, 4)
    cams[0, 1, 1] = 1.0
    cams[1, 3, 3] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    assert pointing_game(cams, masks).tolist() == [True, False]


# --------------------------------------------------------------------------- preprocessing
def test_preprocess_matches_torchvision_weights_transforms():
    """--weights DEFAULT preprocessing is the weights' own transform (no download needed to check)."""
    from torchvision.models import ResNet18_Weights

    t = ResNet18_Weights.DEFAULT.transforms()
    pre = Preprocess((224, 224), 256, tuple(t.mean), tuple(t.std), t.interpolation.value)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    x, box = pre(img)
    torch.testing.assert_close(x, t(img), rtol=0, atol=0)
    # 400x300 -> 341x256 (shorter side 256), center crop 224 at (58, 16): that box in original pixels
    sx, sy = 400 / 341, 300 / 256
    assert box == pytest.approx((58 * sx, 16 * sy, 282 * sx, 240 * sy))


def test_cam_to_image_fills_the_crop_box_only():
    cam = torch.ones(7, 7)
    full = cam_to_image(cam, (40, 30), (0, 0, 40, 30))
    assert full.shape == (30, 40) and full.min() == pytest.approx(1)
    cropped = cam_to_image(cam, (40, 30), (5, 0, 35, 30))
    assert cropped[:, 5:35].min() == pytest.approx(1) and cropped[:, :5].max() == 0 and cropped[:, 35:].max() == 0


# --------------------------------------------------------------------------- image depths and modes
def _ramp16(h: int = 40, w: int = 130) -> np.ndarray:
    """A 0..65535 grey ramp (left to right, plus a little top to bottom), uint16."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.round((0.8 * xx / (w - 1) + 0.2 * yy / (h - 1)) * 65535).astype(np.uint16)


def _save_deep(folder: Path, kind: str, ramp: np.ndarray) -> Path:
    """``ramp`` saved as a grey image deeper than 8 bits, in the file format and PIL mode ``kind``."""
    h, w = ramp.shape
    if kind == "I;16 png":
        img, name = Image.fromarray(ramp), "ramp16.png"
    elif kind == "I;16B tiff":
        img, name = Image.frombytes("I;16B", (w, h), ramp.astype(">u2").tobytes()), "ramp16b.tif"
    elif kind == "I tiff":
        img, name = Image.fromarray(ramp.astype(np.int32)), "ramp32.tif"
    elif kind == "I pgm":
        img, name = Image.fromarray(ramp), "ramp16.pgm"
    elif kind == "F tiff":
        img, name = Image.fromarray((ramp / 65535).astype(np.float32)), "rampf.tif"
    else:
        raise AssertionError(kind)
    img.save(folder / name)
    with Image.open(folder / name) as check:  # the mode PIL reads back is the one under test
        assert check.mode == kind.split()[0]
    return folder / name


DEEP_KINDS = ["I;16 png", "I;16B tiff", "I tiff", "I pgm", "F tiff"]


@pytest.mark.parametrize("kind", DEEP_KINDS)
@pytest.mark.parametrize("pre", [Preprocess((96, 96), None, None, None), Preprocess((64, 64), 72, None, None)],
                         ids=["resize", "crop"])
def test_deep_grey_image_reads_like_its_8bit_equivalent(kind, pre, tmp_path):
    """16-bit and float grey images are scaled by their range, not clipped by convert('RGB').

    The values read are exact (value / 65535); preprocessed, the image matches its 8-bit
    equivalent (a ramp of multiples of 257, so that one exists) within 1/255, the rounding
    of PIL's two 8-bit resize passes."""
    from fxcam.cli.images import read_image

    full = _save_deep(tmp_path, kind, _ramp16())
    read = read_image(full)
    assert read.mode == "F" and read.size == (130, 40)
    np.testing.assert_allclose(np.asarray(read), _ramp16() / 65535, rtol=0, atol=1e-7)

    ramp8 = np.round(_ramp16() / 257).astype(np.uint8)
    deep = _save_deep(tmp_path, kind, ramp8.astype(np.uint16) * 257)
    Image.fromarray(ramp8).save(tmp_path / "ramp8.png")  # mode L
    x_deep, box_deep = pre(read_image(deep))
    x_8bit, box_8bit = pre(read_image(tmp_path / "ramp8.png"))
    assert x_deep.dtype == torch.float32 and x_deep.shape == x_8bit.shape == (3, *pre.size)
    assert box_deep == box_8bit
    assert (x_deep - x_8bit).abs().max() <= 1 / 255
    assert 0 <= x_deep.min() and x_deep.max() <= 1


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "RGB"])
def test_8bit_modes_read_as_before(mode, tmp_path):
    """8-bit images are converted exactly as they always were: convert('RGB'), bit for bit."""
    from fxcam.cli.images import read_image

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (23, 31, 4), dtype=np.uint8), "RGBA")
    img = img.convert(mode) if mode in ("RGBA", "LA") else img.convert("RGB").convert(mode)
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    img.save(path)
    got = read_image(path)
    with Image.open(path) as ref:
        expected = ref.convert("RGB")
    assert got.mode == "RGB" and got.tobytes() == expected.tobytes()
    pre = Preprocess((16, 16))
    torch.testing.assert_close(pre(got)[0], pre(expected)[0], rtol=0, atol=0)


def test_explain_16bit_png_end_to_end(tmp_path, capsys):
    """The overlay of a 16-bit ramp shows the ramp (not a white image), like the 8-bit equivalent's."""
    ramp = _ramp16()
    deep = _save_deep(tmp_path, "I;16 png", ramp)
    Image.fromarray(np.round(ramp / 257).astype(np.uint8)).save(tmp_path / "ramp8.png")
    out = tmp_path / "out"
    rc, _, err = run(capsys, "explain", deep, tmp_path / "ramp8.png", "--model", "demo:cnn", "--alpha", 0,
                     "--out", out, "-q")
    assert rc == 0 and err == "", err
    with Image.open(out / "ramp16_overlay.png") as a, Image.open(out / "ramp8_overlay.png") as b:
        shown, expected = np.asarray(a).astype(int), np.asarray(b).astype(int)
    assert shown.shape == expected.shape == (40, 130, 3)
    assert np.abs(shown - expected).max() <= 1
    cam = np.load(out / "ramp16_cam.npy")
    assert cam.shape == (40, 130) and np.isfinite(cam).all() and 0 <= cam.min() and cam.max() <= 1


BAD_DEPTHS = {
    "float above 1": (np.float32, lambda r: r / 257.0, ["rampf.tif", "[0, 255]", "[0, 1]"]),
    "float NaN": (np.float32, lambda r: np.where(r > 60000, np.nan, r / 65535), ["rampf.tif", "NaN"]),
    "int negative": (np.int32, lambda r: r.astype(np.int64) - 1000, ["rampi.tif", "-1000", "0..65535"]),
    "int above 16 bits": (np.int32, lambda r: r.astype(np.int64) * 4, ["rampi.tif", "262140", "0..65535"]),
}


@pytest.mark.parametrize("case", list(BAD_DEPTHS))
def test_deep_image_out_of_range_is_one_clear_line(case, tmp_path, capsys):
    dtype, values, needles = BAD_DEPTHS[case]
    name = "rampf.tif" if dtype == np.float32 else "rampi.tif"
    Image.fromarray(values(_ramp16()).astype(dtype)).save(tmp_path / name)
    rc, _, err = run(capsys, "explain", tmp_path / name, "--model", "demo:cnn", "--out", tmp_path / "out")
    assert_one_line_error(rc, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


# --------------------------------------------------------------------------- where --out can go
OUT_COMMANDS = {
    "explain": ["explain", "{img}", "--model", "demo:cnn", "--out", "{out}"],
    "demo": ["demo", "--n", "6", "--methods", "gradcam", "--out", "{out}"],
    "export": ["export", "demo:cnn", "--out", "{out}"],
}


@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_out_under_a_file_is_one_clear_line(command, tmp_path, scenes, capsys):
    (tmp_path / "somefile.txt").write_text("a file, not a folder")
    out = tmp_path / "somefile.txt" / ("model.pt2" if command == "export" else "sub")
    argv = [a.format(img=scenes[0][0], out=out) for a in OUT_COMMANDS[command]]
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, str(tmp_path / "somefile.txt"), "is a file, not a folder", "--out")
    assert "FileExistsError" not in err and "NotADirectoryError" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile.txt"]
    assert (tmp_path / "somefile.txt").read_text() == "a file, not a folder"


def test_out_with_a_long_name(tmp_path, scenes, capsys):
    """A 250-character --out name works (the temporary folder's name is shortened); 300 is one line."""
    fine = tmp_path / ("o" * 250)
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", fine, "-q")
    assert rc == 0, err
    assert (fine / "manifest.json").is_file()
    too_long = tmp_path / ("o" * 300)
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", too_long)
    assert_one_line_error(rc, err, "cannot be used", "name too long", "choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fine.name]


def test_out_in_an_unwritable_folder_fails_before_any_work(monkeypatch, tmp_path, scenes, capsys):
    """os.access says no (as it does for a read-only folder when not root): one line, no model loaded."""
    import fxcam.cli.explain

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(fxcam.cli.explain, "load_model", no_work)
    rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", locked / "new" / "out")
    assert_one_line_error(rc, err, str(locked), "not writable", "--out")
    assert list(locked.iterdir()) == []


def test_out_in_a_read_only_folder(tmp_path, scenes, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        rc, _, err = run(capsys, "explain", scenes[0][0], "--model", "demo:cnn", "--out", locked / "out")
        assert_one_line_error(rc, err, str(locked), "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- export, processes
def test_export_pt2(tmp_path, capsys):
    from fxcam import instrument

    out, layer = tmp_path / "cnn.pt2", DEFAULT_LAYERS["cnn"]
    rc, stdout, err = run(capsys, "export", "demo:cnn", "--layer", layer, "--out", out)
    assert rc == 0, err
    images = make_scenes(3, seed=5)[0]
    logits, acts = torch.export.load(str(out)).module()(images)
    with torch.no_grad():
        ref_logits, ref_acts = instrument(load_demo_model("cnn"), layer)(images)  # eager, the reference
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(acts[layer], ref_acts[layer], rtol=1e-4, atol=1e-5)
    rc, _, err = run(capsys, "export", "demo:cnn", "--out", out)
    assert_one_line_error(rc, err, "already exists")


def test_export_default_layer_and_explainer_graph(tmp_path, capsys):
    """Without --layer the default layer's activations; with --method the explainer graph (static batch)."""
    out = tmp_path / "acts.pt2"
    rc, _, err = run(capsys, "export", "demo:vit", "--out", out)
    assert rc == 0, err
    images = make_scenes(3, seed=5)[0]
    _, acts = torch.export.load(str(out)).module()(images[:1])
    assert list(acts) == [DEFAULT_LAYERS["vit"]]
    out = tmp_path / "cam.pt2"
    rc, _, err = run(capsys, "export", "demo:vit", "--layer", DEFAULT_LAYERS["vit"], "--method", "hirescam",
                     "--static-batch", "--batch-size", 3, "--out", out)
    assert rc == 0, err
    logits, cams = torch.export.load(str(out)).module()(images)
    expected = fxcam.Explainer(load_demo_model("vit"), DEFAULT_LAYERS["vit"], "hirescam")(images)
    torch.testing.assert_close(cams, expected, rtol=0, atol=1e-4)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("FXCAM_DEBUG", None)
    return env


def test_python_dash_m_fxcam(scenes, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fxcam", "explain", str(scenes[0][0]), "--model", "demo:cnn", "--out", str(out)],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file() and (out / f"{scenes[0][0].stem}_overlay.png").is_file()
    assert proc.stderr == "" and "1 image explained" in proc.stdout


def test_console_script():
    script = Path(sys.executable).parent / ("fxcam.exe" if os.name == "nt" else "fxcam")
    if not script.exists():
        pytest.skip("fxcam is not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "methods"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0 and "gradcam" in proc.stdout


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_midway_exits_128_plus_signal_and_leaves_the_old_output(signum, status, tmp_path):
    """A real process, stopped while it writes: exit 128 + the signal, one line, the old --out intact."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(images / "a000.png")
    for i in range(1, 400):  # hard links: distinct inputs, no time spent encoding them
        os.link(images / "a000.png", images / f"a{i:03d}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the previous result")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fxcam", "explain", str(images), "--model", "demo:cnn", "--out", str(out),
         "--overwrite", "--batch-size", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".out.tmp-*/*_cam.npy")):  # it has started writing
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("fxcam: error: "), stderr
    assert ("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted") in stderr
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "the previous result"
