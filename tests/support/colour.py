"""Colour and picture-quality tools for tests: an ICC profile builder (Display P3), sRGB to
CIELAB, ΔE (CIE76), SSIM and PSNR, all in numpy."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

# CIE xy chromaticities.
D65 = (0.3127, 0.3290)
D50_XYZ = (0.9642, 1.0, 0.8249)  # the ICC profile connection space's white (s15Fixed16)
P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
SRGB_PRIMARIES = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
# sRGB's transfer function as ICC parametric curve type 3: Y = (aX+b)^g if X >= d, else cX.
SRGB_TRC = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz_matrix(
    primaries: tuple[tuple[float, float], ...], white: tuple[float, float] = D65
) -> np.ndarray:
    """The linear-RGB to XYZ matrix of a colour space (its white at Y = 1)."""
    m = np.column_stack([_xyz(p) for p in primaries])
    scale = np.linalg.solve(m, _xyz(white))
    return m * scale


def bradford(src_white: np.ndarray, dst_white: np.ndarray) -> np.ndarray:
    """The Bradford chromatic adaptation matrix from one white (XYZ) to another."""
    src, dst = _BRADFORD @ src_white, _BRADFORD @ dst_white
    return np.linalg.inv(_BRADFORD) @ np.diag(dst / src) @ _BRADFORD


# --- an ICC v4 matrix/TRC display profile ----------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _mluc(text: str) -> bytes:
    encoded = text.encode("utf-16-be")
    return (
        b"mluc"
        + bytes(4)
        + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(encoded), 28)
        + (encoded)
    )


def _xyz_tag(xyz: np.ndarray | tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in xyz)


def _para(params: tuple[float, ...]) -> bytes:
    return b"para" + bytes(4) + struct.pack(">HH", 3, 0) + b"".join(_s15(v) for v in params)


def matrix_trc_profile(
    primaries: tuple[tuple[float, float], ...],
    white: tuple[float, float] = D65,
    trc: tuple[float, ...] = SRGB_TRC,
    description: str = "Display P3 (test)",
) -> bytes:
    """An ICC v4 display profile: colorants Bradford-adapted to D50, one parametric curve for
    the three channels, and the adaptation matrix in 'chad'."""
    d50 = np.array(D50_XYZ)
    chad = bradford(_xyz(white), d50)
    colorants = chad @ rgb_to_xyz_matrix(primaries, white)
    curve = _para(trc)
    tags: list[tuple[bytes, bytes]] = [
        (b"desc", _mluc(description)),
        (b"cprt", _mluc("No copyright, test data")),
        (b"wtpt", _xyz_tag(d50)),
        (b"rXYZ", _xyz_tag(colorants[:, 0])),
        (b"gXYZ", _xyz_tag(colorants[:, 1])),
        (b"bXYZ", _xyz_tag(colorants[:, 2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"chad", b"sf32" + bytes(4) + b"".join(_s15(v) for v in chad.flatten())),
    ]
    table_end = 128 + 4 + 12 * len(tags)
    body = b""
    entries = b""
    for signature, data in tags:
        offset = table_end + len(body)
        entries += signature + struct.pack(">II", offset, len(data))
        body += data + bytes(-len(data) % 4)
    size = table_end + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)  # preferred CMM
        + struct.pack(">I", 0x04300000)  # version 4.3
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4)  # platform
        + bytes(4)  # flags
        + bytes(8)  # manufacturer, model
        + bytes(8)  # attributes
        + struct.pack(">I", 0)  # rendering intent: perceptual
        + b"".join(_s15(v) for v in D50_XYZ)
        + bytes(4)  # creator
        + bytes(16)  # profile ID (optional)
        + bytes(28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + entries + body


def display_p3_profile() -> bytes:
    return matrix_trc_profile(P3_PRIMARIES)


# --- colour maths ---------------------------------------------------------------------------


def srgb_decode(values: np.ndarray) -> np.ndarray:
    """8-bit (or 0..255 float) sRGB-encoded values to linear 0..1."""
    c = np.asarray(values, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear 0..1 to sRGB-encoded 0..255 floats (clipped to the gamut)."""
    c = np.clip(linear, 0.0, 1.0)
    return 255.0 * np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65 white) of sRGB pixels, shape (..., 3)."""
    xyz = srgb_decode(rgb) @ rgb_to_xyz_matrix(SRGB_PRIMARIES).T
    white = _xyz(D65)
    t = xyz / white
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def delta_e76(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference between two sRGB pixel arrays."""
    diff = srgb_to_lab(rgb_a) - srgb_to_lab(rgb_b)
    return np.sqrt((diff**2).sum(axis=-1))


def p3_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """Display-P3 pixels to sRGB (0..255 floats), by the matrices alone (both D65)."""
    to_srgb = np.linalg.inv(rgb_to_xyz_matrix(SRGB_PRIMARIES)) @ rgb_to_xyz_matrix(P3_PRIMARIES)
    return srgb_encode(srgb_decode(rgb) @ to_srgb.T)


# --- picture quality -----------------------------------------------------------------------


def _luma(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64)


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio (dB) over the RGB channels; inf when equal."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """Means over every size x size window (valid positions only), by an integral image."""
    s = np.pad(values, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    total = s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]
    return total / (size * size)


def ssim(a: Image.Image, b: Image.Image, window: int = 7) -> float:
    """Mean structural similarity of the two pictures' luma (Wang et al. 2004, a uniform
    window as scikit-image's default, sample covariances)."""
    if a.size != b.size:
        raise ValueError(f"sizes differ: {a.size} and {b.size}")
    x, y = _luma(a), _luma(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = window * window
    correction = n / (n - 1)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = (_box_mean(x * x, window) - mx * mx) * correction
    vy = (_box_mean(y * y, window) - my * my) * correction
    cxy = (_box_mean(x * y, window) - mx * my) * correction
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())
