"""Training augmentations that need to know what the scene shows.

`CubeColourSwap` re-colours the pick_place cubes by a permutation of their colours and renames the
colour in the prompt to match: the red cube, painted green, with "green" in the prompt, is still the
cube the demonstration picks up, so its action labels stay exact. Every scene then appears with every
colour-to-place assignment (six times the scenes for the same demonstrations). It does not take away
the other cue to which cube: where the arm already heads. Labels that only the word tells apart do
that (model/rollout.py, CounterfactualLabels); `bench grounding` measures both.

A lit cube pixel is its colour scaled by the diffuse light plus white from the specular highlight,
clipped at 255: p = min(s c + h, 255) (MuJoCo's lighting: ambient and diffuse terms multiply the
colour, the specular term does not). Per pixel, (s, h) is fitted for each cube colour from the
channels that did not clip; a pixel some cube colour explains (small residual, clipped channels
predicted at or above the clip, a strong colour term) is re-lit in the new colour: min(s c' + h, 255).
Everything else (the grey table, the white arm, the yellow zone, the background) keeps its pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np


class CubeColourSwap:
    """Apply one of the permutations of the cube colours per sample (index 0 is the identity)."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        colours: Sequence[str],
        rgb: Sequence[Sequence[float]],
        max_residual: float = 10.0,
        min_chroma: float = 40.0,
    ) -> None:
        c = np.asarray(rgb, np.float32)  # [n colours, 3]
        if c.shape != (len(colours), 3) or len(colours) < 2:
            raise ValueError(f"CubeColourSwap: expected an RGB triple per colour, got {c.shape} for {len(colours)}")
        missing = [w for w in colours if w not in vocab]
        if missing:
            raise ValueError(f"CubeColourSwap: the prompt vocabulary has no word for {missing}")
        self.rgb = c * 255.0
        self.perms = list(itertools.permutations(range(len(colours))))  # perms[k][i]: colour i becomes it
        self.token_maps = []  # [k] vocab-sized id map
        ids = [int(vocab[w]) for w in colours]
        size = max(vocab.values()) + 1
        for perm in self.perms:
            t = np.arange(size, dtype=np.int64)
            for i, j in enumerate(perm):
                t[ids[i]] = ids[j]
            self.token_maps.append(t)
        self.colour_ids = np.asarray(ids, np.int64)
        self.max_residual = float(max_residual)
        self.min_chroma = float(min_chroma)

    def names_one_colour(self, tokens: np.ndarray) -> bool:
        """Whether a prompt's token ids name exactly one of the cube colours (the prompts the swap can relabel)."""
        return int(np.isin(self.colour_ids, tokens).sum()) == 1

    def draw(self, rng: np.random.Generator, eligible: np.ndarray, prob: float) -> np.ndarray:
        """Per sample: a permutation index, 0 (identity) for ineligible samples and with prob 1 - `prob`."""
        k = rng.integers(1, len(self.perms), size=len(eligible))
        return np.where(eligible & (rng.random(len(eligible)) < prob), k, 0)

    def _fit(self, px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """px float [P,3] -> per pixel: the cube colour that explains it (-1: none), its s and h."""
        unclipped = px < 254.5
        best = np.full(len(px), np.inf, np.float32)
        colour = np.full(len(px), -1, np.int64)
        s_out = np.zeros(len(px), np.float32)
        h_out = np.zeros(len(px), np.float32)
        w = unclipped.astype(np.float32)
        for i, c in enumerate(self.rgb / 255.0):
            # Weighted least squares for p ~ s c + h over the unclipped channels (2x2 normal equations).
            a11, a12, a22 = (w * c * c).sum(1), (w * c).sum(1), w.sum(1)
            b1, b2 = (w * c * px).sum(1), (w * px).sum(1)
            det = a11 * a22 - a12 * a12
            ok = np.abs(det) > 1e-6  # at least two unclipped channels that c tells apart
            safe = np.where(ok, det, 1.0)
            s = np.where(ok, (b1 * a22 - b2 * a12) / safe, 0.0)
            h = np.where(ok, (a11 * b2 - a12 * b1) / safe, 0.0)
            pred = s[:, None] * c[None] + h[:, None]
            resid = np.sqrt((w * (pred - px) ** 2).sum(1) / np.maximum(w.sum(1), 1.0))
            clip_ok = np.all(unclipped | (pred >= 250.0), axis=1)
            strong = s * float(c.max() - c.min()) >= self.min_chroma
            good = ok & clip_ok & strong & (h > -20.0) & (resid <= self.max_residual) & (resid < best)
            best = np.where(good, resid, best)
            colour = np.where(good, i, colour)
            s_out = np.where(good, s, s_out)
            h_out = np.where(good, h, h_out)
        return colour, s_out, h_out

    def images(self, frames: np.ndarray, which: np.ndarray) -> np.ndarray:
        """uint8 [B,...,H,W,3] and a permutation index per sample -> re-coloured copy (or `frames`)."""
        if not np.any(which):
            return frames
        out = frames.copy()
        sel = np.flatnonzero(which)
        # Only coloured pixels can be cubes: the fit runs on the few with any chroma (a cube's is far
        # above it; the table, the arm and the background have next to none).
        chroma = frames[sel].max(axis=-1) - frames[sel].min(axis=-1)
        for b, c in zip(sel, chroma):
            flat = out[b].reshape(-1, 3)
            cand = np.flatnonzero(c.reshape(-1) >= 0.5 * self.min_chroma)
            if len(cand) == 0:
                continue
            colour, s, h = self._fit(flat[cand].astype(np.float32))
            cube = colour >= 0
            new = self.rgb[np.asarray(self.perms[int(which[b])])[colour[cube]]] / 255.0
            flat[cand[cube]] = np.clip(np.rint(s[cube, None] * new + h[cube, None]), 0, 255).astype(np.uint8)
        return out

    def tokens(self, tokens: np.ndarray, which: np.ndarray) -> np.ndarray:
        """int64 [B,L] and a permutation index per sample -> the prompts with the colour word renamed."""
        if not np.any(which):
            return tokens
        out = tokens.copy()
        for b in np.flatnonzero(which):
            out[b] = self.token_maps[int(which[b])][tokens[b]]
        return out
