"""Decoder files, read without torch: where a model's decoder lives, its metadata, the match check.

The latent decoder (`wam_control.model.decoder`, trained and exported with torch) maps the world-model
latent back to a small camera frame. Its ONNX file carries metadata (`kind`, `latent_dim`,
`wam_weights_sha256`, `camera`, ...). The frame check (policy.frame_check), the surprise monitor and the
imagination preview read and check it through these helpers, which need onnxruntime only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wam_control.policy.contract import ModelContract

DECODER_KIND = "wam_control.latent-decoder"


class DecoderError(ValueError):
    """A decoder file is missing, not a decoder, or made for another model."""


def default_decoder_path(model_path: str | os.PathLike[str]) -> Path:
    """`models/wam_reach.onnx` -> `models/wam_reach.decoder.onnx` (the rule of `model.decoder`, without
    importing torch: the runtime resolves the path with this)."""
    p = Path(model_path)
    return p.with_name(f"{p.name.rsplit('.', 1)[0]}.decoder.onnx")


def read_decoder_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DecoderError(
            f"imagination decoder {p} does not exist: train it with `python -m wam_control.model.decoder` "
            "or disable the imagination preview"
        )
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        raise DecoderError(f"imagination decoder {p} is not a readable ONNX file: {exc}") from None
    meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    if meta.get("kind") != DECODER_KIND:
        raise DecoderError(f"{p} is not an imagination decoder (metadata 'kind' is {meta.get('kind')!r})")
    return meta


def check_decoder(meta: dict[str, Any], contract: ModelContract, source: str) -> None:
    if int(meta.get("latent_dim", -1)) != contract.latent_dim:
        raise DecoderError(
            f"{source}: decoder latent_dim {meta.get('latent_dim')} != model latent_dim {contract.latent_dim}"
        )
    sha = str(meta.get("wam_weights_sha256", ""))
    if sha != contract.weights_sha256:
        raise DecoderError(
            f"{source}: decoder was trained for weights {sha[:12]}..., the model is "
            f"{contract.weights_sha256[:12]}...: retrain it for this model"
        )
