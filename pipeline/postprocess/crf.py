"""Dense CRF post-processing (Kraehenbuehl and Koltun, NeurIPS 2011) with pydensecrf.

CAMs carry no background channel. As in PSA and MCTformer, a background score is made from the
foreground scores, ``bg = (1 - max_k cam_k) ** alpha``: a larger power ``alpha`` shrinks the
background (``1 - max`` lies in [0, 1]), so a small alpha keeps only confident foreground and a
large alpha keeps only confident background. The stacked scores ``[bg, cam_1..cam_K]`` are read
as (unnormalised) probabilities; the unary energy is their negative log. The pairwise terms are a
Gaussian smoothness kernel and a bilateral appearance kernel; mean-field inference returns the
posterior (K + 1, H, W), which sums to 1 per pixel.

pydensecrf needs C-contiguous float32 unaries and a C-contiguous uint8 image; everything here
makes those copies itself. One call handles one image on one core: run images in parallel.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import CRFKernels

EPS = 1e-5


def background_probs(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Stack the background score in front of the foreground scores.

    scores: (K, H, W) foreground scores in [0, 1]. Returns (K + 1, H, W) float32:
    channel 0 = (1 - max_k scores_k) ** alpha, channels 1..K = scores.
    """
    scores = np.asarray(scores, np.float32)
    top = scores.max(0) if scores.shape[0] else np.zeros(scores.shape[1:], np.float32)
    bg = np.power(np.clip(1.0 - top, 0.0, 1.0), alpha, dtype=np.float32)
    return np.concatenate([bg[None], scores], axis=0)


def crf_inference(image: np.ndarray, probs: np.ndarray, kernels: CRFKernels) -> np.ndarray:
    """Mean-field dense CRF with the kernels and iteration count of ``kernels`` (a ``crf`` or ``eval.crf``
    params section).

    image: (H, W, 3) uint8 RGB; probs: (L, H, W) non-negative label scores (normalising is not
    needed: unary = -log(max(probs, 1e-5))). Returns the posterior (L, H, W) float32.
    """
    import pydensecrf.densecrf as dcrf

    image = np.asarray(image)
    probs = np.asarray(probs, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    n_labels, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and scores {(h, w)} differ in size")
    if n_labels == 1:
        return np.ones((1, h, w), np.float32)
    unary = np.ascontiguousarray(-np.log(np.maximum(probs, EPS)).reshape(n_labels, -1), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary)
    k = kernels
    if k.gauss_compat > 0:
        crf.addPairwiseGaussian(sxy=float(k.gauss_sxy), compat=float(k.gauss_compat))
    if k.bi_compat > 0:
        rgb = np.ascontiguousarray(image, dtype=np.uint8)
        crf.addPairwiseBilateral(sxy=float(k.bi_sxy), srgb=float(k.bi_srgb), rgbim=rgb, compat=float(k.bi_compat))
    q = crf.inference(int(k.iterations))
    return np.asarray(q, np.float32).reshape(n_labels, h, w)


def crf_scores(image: np.ndarray, scores: np.ndarray, alpha: float, kernels: CRFKernels) -> np.ndarray:
    """CRF-refined foreground scores.

    image: (H, W, 3) uint8; scores: (K, H, W) in [0, 1]. Returns (K, H, W) float32, the CRF
    posterior of the foreground classes with background power ``alpha`` (in [0, 1]).
    """
    if scores.shape[0] == 0:
        return np.zeros(scores.shape, np.float32)
    return crf_inference(image, background_probs(scores, alpha), kernels)[1:]


def crf_labels(image: np.ndarray, scores: np.ndarray, keys: np.ndarray, alpha: float,
               kernels: CRFKernels) -> np.ndarray:
    """Argmax of the CRF posterior over [background, keys]: (H, W) int64 in class ids."""
    keys = np.asarray(keys, np.int64)
    if scores.shape[0] == 0:
        return np.zeros(scores.shape[1:], np.int64)
    post = crf_inference(image, background_probs(scores, alpha), kernels)
    return np.concatenate([[0], keys])[post.argmax(0)]
