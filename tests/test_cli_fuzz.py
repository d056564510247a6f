"""Generated bad input for ``fxcam explain`` (hypothesis): the command never crashes.

Each example writes a few files into a fresh folder: valid images in odd modes (1, L, LA, P,
RGB, RGBA, CMYK, I;16, I, F) and odd sizes (1x1, 1xN, very wide), random bytes, empty files,
truncated and corrupted images, 16-bit and float images with values out of range; and runs
``fxcam explain <files or their folder> --model demo:cnn --out DIR -q`` in-process
(``fxcam.cli.main``). The contract, for every example:

- success (exit 0): one map per image, ``float32 (H, W)`` at the image's size, values in
  [0, 1], no NaN; an overlay of the same size; ``manifest.json`` listing every image;
- failure: a non-zero exit, exactly one line ``fxcam: error: ...`` on stderr (warnings
  aside), no traceback, no unexpected exception (the "rerun with --debug" last line of
  defence counts as a crash), and no ``--out`` at all, not even a hidden temporary folder;
- only valid images: success; a file known to be bad (empty, values out of range): failure.

The default profile is small and derandomized (the same examples every run), so the suite
stays fast. For a longer search::

    FXCAM_FUZZ_EXAMPLES=500 pytest tests/test_cli_fuzz.py          # more examples, same seed
    FXCAM_FUZZ_EXAMPLES=500 FXCAM_FUZZ_RANDOM=1 pytest tests/test_cli_fuzz.py   # new ones each run

A crash found that way is fixed in ``fxcam/cli/`` and kept here as an ``@example``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fxcam.cli import main

EXAMPLES = int(os.environ.get("FXCAM_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FXCAM_FUZZ_RANDOM", "") in ("", "0"),
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# the file formats each PIL mode can be saved in
FORMATS = {
    "1": ["png", "bmp", "tif"],
    "L": ["png", "jpg", "bmp", "gif", "pgm", "tif"],
    "LA": ["png"],
    "P": ["png", "gif", "bmp"],
    "RGB": ["png", "jpg", "ppm", "bmp", "tif", "webp"],
    "RGBA": ["png", "tif"],
    "CMYK": ["jpg", "tif"],
    "I;16": ["png", "tif"],
    "I": ["tif"],
    "F": ["tif"],
}
SIZES = [(1, 1), (1, 5), (5, 1), (1, 300), (300, 1), (2500, 3), (3, 1200)]  # (W, H)


@dataclass(frozen=True)
class FileSpec:
    """One input file. ``kind``: ``image`` (valid), ``range`` (a deep image with values out of
    range), ``truncated`` (the first ``cut`` of an image's bytes), ``corrupt`` (an image with
    bytes overwritten: ``flips`` = (position, byte) pairs, the position an index into the file
    if an int, a fraction of its length if a float), ``random`` (``data``), ``empty``."""

    kind: str
    fmt: str = "png"
    mode: str = "RGB"
    size: tuple[int, int] = (8, 8)
    seed: int = 0
    cut: float = 1.0
    flips: tuple[tuple[int | float, int], ...] = ()
    data: bytes = b""


def pixels(mode: str, size: tuple[int, int], seed: int, out_of_range: bool = False) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w)).astype(bool))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        low, high = (-70000, 70000) if out_of_range else (0, 65536)
        values = rng.integers(low, high, (h, w)).astype(np.int32)
        values.flat[0] = -1 if out_of_range else values.flat[0]  # at least one value out of range
        return Image.fromarray(values)
    if mode == "F":
        values = rng.random((h, w), dtype=np.float32)
        if out_of_range:
            values = values * 300 - 20
            values.flat[0] = 1.5
        return Image.fromarray(values)
    channels = {"L": 1, "LA": 2, "RGBA": 4}.get(mode, 3)
    array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(array[..., 0] if channels == 1 else array)
    return img.convert(mode) if mode in ("P", "CMYK") else img


def encode(mode: str, fmt: str, size: tuple[int, int], seed: int, out_of_range: bool = False) -> bytes:
    buffer = io.BytesIO()
    img = pixels(mode, size, seed, out_of_range)
    img.save(buffer, format={"jpg": "JPEG", "tif": "TIFF", "pgm": "PPM", "ppm": "PPM"}.get(fmt, fmt.upper()))
    return buffer.getvalue()


def content(spec: FileSpec) -> bytes:
    if spec.kind == "empty":
        return b""
    if spec.kind == "random":
        return spec.data
    data = encode(spec.mode, spec.fmt, spec.size, spec.seed, out_of_range=spec.kind == "range")
    if spec.kind == "truncated":
        return data[: int(len(data) * spec.cut)]
    if spec.kind == "corrupt":
        data = bytearray(data)
        for where, byte in spec.flips:
            data[min(where if isinstance(where, int) else int(len(data) * where), len(data) - 1)] = byte
        return bytes(data)
    return data


# --------------------------------------------------------------------------- strategies
def _image_fields(draw) -> dict:
    mode = draw(st.sampled_from(sorted(FORMATS)))
    return {
        "mode": mode,
        "fmt": draw(st.sampled_from(FORMATS[mode])),
        "size": draw(st.one_of(st.sampled_from(SIZES), st.tuples(st.integers(1, 40), st.integers(1, 40)))),
        "seed": draw(st.integers(0, 2**16)),
    }


@st.composite
def image_specs(draw) -> FileSpec:
    return FileSpec("image", **_image_fields(draw))


@st.composite
def file_specs(draw) -> FileSpec:
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "corrupt", "random", "empty", "range"]))
    suffix = draw(st.sampled_from(["png", "jpg", "tif", "gif", "bmp"]))
    if kind == "empty":
        return FileSpec("empty", suffix)
    if kind == "random":
        return FileSpec("random", suffix, data=draw(st.binary(min_size=1, max_size=600)))
    if kind == "range":
        mode = draw(st.sampled_from(["I", "F"]))
        return FileSpec("range", "tif", mode, draw(st.tuples(st.integers(1, 30), st.integers(1, 30))),
                        draw(st.integers(0, 2**16)))
    fields = _image_fields(draw)
    if kind == "truncated":
        fields["cut"] = draw(st.floats(0.02, 0.98))
    if kind == "corrupt":
        where = st.one_of(st.integers(0, 63), st.floats(0, 1))  # the header, or anywhere
        fields["flips"] = tuple(draw(st.lists(st.tuples(where, st.integers(0, 255)), min_size=1, max_size=6)))
    return FileSpec(kind, **fields)


# --------------------------------------------------------------------------- the check
def explain(specs: list[FileSpec], as_folder: bool) -> int:
    """Run ``fxcam explain`` on files made from ``specs`` and check the contract; the exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        paths = []
        for i, spec in enumerate(specs):
            path = inputs / f"f{i}.{spec.fmt}"
            path.write_bytes(content(spec))
            paths.append(path)
        if as_folder:
            (inputs / "notes.txt").write_text("not an image, and not an image suffix: ignored")
        out = tmp / "out"
        argv = [str(inputs)] if as_folder else [str(p) for p in paths]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(["explain", *argv, "--model", "demo:cnn", "--out", str(out), "-q"])
        err = stderr.getvalue()
        assert "Traceback" not in err, err
        assert [p.name for p in tmp.iterdir() if p.name != "in"] == (["out"] if rc == 0 else []), err
        kinds = {s.kind for s in specs}
        if rc == 0:
            check_results(out, paths)
            assert stdout.getvalue() == ""
            assert all(line.startswith("fxcam: warning: ") for line in err.splitlines()), err
            assert not kinds & {"empty", "range"}, "a file known to be bad was accepted"
        else:
            lines = [line for line in err.splitlines() if not line.startswith("fxcam: warning: ")]
            assert rc == 1 and len(lines) == 1 and lines[0].startswith("fxcam: error: "), (rc, err)
            assert "rerun with --debug" not in lines[0], f"an unexpected exception: {lines[0]}"
            assert kinds != {"image"}, f"valid images were refused: {lines[0]}"
        return rc


def check_results(out: Path, paths: list[Path]) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    records = manifest["images"]
    assert [r["input"] for r in records] == [str(p.resolve()) for p in paths]
    for record in records:
        w, h = record["image_size"]
        cam = np.load(out / record["cam"])
        assert cam.dtype == np.float32 and cam.shape == (h, w)
        assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.size == (w, h) and overlay.mode == "RGB"
    expected = {"manifest.json"} | {r["cam"] for r in records} | {r["overlay"] for r in records}
    assert {p.name for p in out.iterdir()} == expected


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels (valid chunks, a few bytes of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# found by this fuzz: PIL's DecompressionBombError (not an OSError) reached the last line of defence
BOMB = FileSpec("random", "png", data=png_header(100_000, 100_000))
# found by this fuzz: a TIFF whose width became 67108865: PIL raises MemoryError while decoding
WIDE_TIFF = FileSpec("corrupt", "tif", "F", (1, 1), flips=((21, 4),))

# half the examples hold valid images only (they must succeed), half a mix of anything
SPEC_LISTS = st.one_of(st.lists(image_specs(), min_size=1, max_size=3), st.lists(file_specs(), min_size=1, max_size=4))


# --------------------------------------------------------------------------- the tests
@FUZZ
@given(specs=SPEC_LISTS)
@example(specs=[BOMB])
@example(specs=[FileSpec("image", "png", "RGB", (5, 5)), BOMB])
@example(specs=[WIDE_TIFF])
def test_explain_generated_files(specs):
    event(f"exit {explain(specs, as_folder=False)}")


@FUZZ
@given(specs=SPEC_LISTS)
def test_explain_a_folder_with_a_mix(specs):
    event(f"exit {explain(specs, as_folder=True)}")


@pytest.mark.parametrize("spec", [
    FileSpec("image", "png", "I;16", (1, 1)),
    FileSpec("image", "tif", "F", (2500, 3)),
    FileSpec("image", "gif", "L", (1, 300)),
    FileSpec("image", "jpg", "CMYK", (3, 1200)),
    FileSpec("image", "png", "LA", (17, 5)),
    FileSpec("truncated", "jpg", "RGB", (40, 30), cut=0.5),
    FileSpec("empty", "png"),
], ids=lambda s: f"{s.kind}-{s.mode}-{s.fmt}-{s.size[0]}x{s.size[1]}")
def test_explain_hand_picked(spec):
    """A few of the cases above, always run, whatever the generated examples are."""
    explain([spec], as_folder=False)
