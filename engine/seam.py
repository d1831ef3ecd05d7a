"""The cut between a source clip and its continuation: same size, same colour.

A model makes frames at its own size (48x32 for the world model) and drifts in colour; placed after a
192x128 plate, that cut shows. Two steps make it match, both on uint8 RGB frames before encoding:

- ``resize``: Lanczos (PIL) to the source's width and height.
- ``ColourMatch``: one affine colour transform, fitted once between the first generated frame (which
  reproduces the conditioning frame) and the source frame itself, then applied to every frame, so
  the whole clip moves together and nothing flickers. It works on linear light (the BT.709 transfer
  undone), where mixing colours is physical, and uses the Monge-Kantorovich linearisation (MKL,
  Pitie & Kokaram 2007): the linear map that takes one colour distribution's mean and covariance to
  the other's while moving colours least, its gains limited to ``MAX_GAIN`` (a model's blurred
  frame must not be stretched into halos). ``strength`` blends from 0 (off) to 1 (full match).

Why not the ``color-matcher`` package, which has MKL: it is GPL-3.0 and Magic141 is Apache-2.0, so
shipping it would change the licence of every studio's install. The tests check this MKL against
``color-matcher``'s, which is installed for tests only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image

from .scores import psnr

_EPS = 1e-6
MAX_GAIN = 1.5  # the most a colour match stretches or squeezes contrast along any colour axis


def resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [n, h, w, 3] frames resized to ``width`` x ``height`` with Lanczos (unchanged if equal)."""
    if frames.shape[1:3] == (height, width):
        return frames
    lanczos = PIL.Image.Resampling.LANCZOS
    resized = [PIL.Image.fromarray(frame).resize((width, height), lanczos) for frame in frames]
    return np.stack([np.asarray(image) for image in resized])


def to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 BT.709-encoded RGB to linear light in [0, 1] (the inverse of the BT.709 OETF)."""
    v = rgb.astype(np.float64) / 255.0
    return np.where(v < 0.081, v / 4.5, ((v + 0.099) / 1.099) ** (1 / 0.45))


def from_linear(linear: np.ndarray) -> np.ndarray:
    """Linear light back to uint8 BT.709-encoded RGB (clipped to the legal range)."""
    x = np.clip(linear, 0.0, 1.0)
    v = np.where(x < 0.018, 4.5 * x, 1.099 * x ** 0.45 - 0.099)
    return np.clip(np.round(v * 255.0), 0, 255).astype(np.uint8)


def _sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The square root of a symmetric positive semi-definite matrix, and its (regularised) inverse."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    roots = np.sqrt(np.clip(values, 0, None))
    return (vectors * roots) @ vectors.T, (vectors / (roots + _EPS)) @ vectors.T


def mkl_transform(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The 3x3 MKL matrix taking ``source``'s colour covariance to ``reference``'s ([n, 3] each)."""
    cov_s, cov_r = np.cov(source.T), np.cov(reference.T)
    root_s, inv_root_s = _sqrtm(cov_s)
    middle, _ = _sqrtm(root_s @ cov_r @ root_s)
    return inv_root_s @ middle @ inv_root_s


@dataclass(frozen=True)
class ColourMatch:
    """An affine colour transform in linear light: ``(x - source_mean) @ matrix.T + reference_mean``."""

    matrix: np.ndarray
    source_mean: np.ndarray
    reference_mean: np.ndarray
    strength: float

    @classmethod
    def fit(cls, generated: np.ndarray, reference: np.ndarray, strength: float = 1.0) -> ColourMatch:
        """Fitted between one generated frame and the source frame (uint8 [h, w, 3], any sizes)."""
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be from 0 to 1, got {strength}")
        src = to_linear(generated).reshape(-1, 3)
        ref = to_linear(reference).reshape(-1, 3)
        # MKL's matrix is symmetric: its eigenvalues are the gains along colour axes. A blurred or flat
        # generated frame has little spread, and stretching it to the source's (11x along one axis on
        # the world sample) draws dark halos and false colour, so the gains are kept within MAX_GAIN.
        values, vectors = np.linalg.eigh(mkl_transform(src, ref))
        matrix = (vectors * np.clip(values, 1 / MAX_GAIN, MAX_GAIN)) @ vectors.T
        return cls(matrix, src.mean(axis=0), ref.mean(axis=0), float(strength))

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [n, h, w, 3] frames with the transform applied at this strength."""
        if self.strength == 0:
            return frames
        linear = to_linear(frames)
        matched = (linear - self.source_mean) @ self.matrix.T + self.reference_mean
        return from_linear(linear + self.strength * (matched - linear))


def mean_colour_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The distance between two frames' mean linear colours (0-1 scale), whatever their sizes."""
    return float(np.linalg.norm(to_linear(a).reshape(-1, 3).mean(0) - to_linear(b).reshape(-1, 3).mean(0)))


def seam_score(last_source: np.ndarray, first_placed: np.ndarray) -> dict[str, float]:
    """How the cut looks: the mean CIEDE2000 colour difference and the PSNR (dB) between the source's
    last frame and the first frame placed after it (uint8 [h, w, 3]; the second resized to the first).

    A cut that shows the scene carrying on scores about what two neighbouring frames of real footage
    do (``magic141 eval`` scores the world's true continuation the same way).
    """
    import warnings

    with warnings.catch_warnings():  # colour warns, once, that its SciPy-based features are unavailable
        warnings.simplefilter("ignore")
        import colour

    height, width = last_source.shape[:2]
    placed = resize(first_placed[None], width, height)[0]
    bt709 = colour.RGB_COLOURSPACES["ITU-R BT.709"]

    def lab(rgb: np.ndarray) -> np.ndarray:  # linear light (the same BT.709 decoding as the match), D65
        xyz = colour.RGB_to_XYZ(to_linear(rgb), bt709, apply_cctf_decoding=False)
        return colour.XYZ_to_Lab(xyz, bt709.whitepoint)

    difference = colour.delta_E(lab(last_source), lab(placed), method="CIE 2000")
    return {"ciede2000": float(np.mean(difference)), "psnr": psnr(last_source, placed)}
