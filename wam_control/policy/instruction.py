"""Language prompts for models with an `instruction_tokens` input (contract v2, docs/model_contract.md).

The tokenizer ships beside the model as `<model>.tokenizer.json`, in the format of the `tokenizers`
library (Hugging Face's; `pip install 'wam_control[prompt]'`). A prompt is tokenized once per change,
by whoever sets it (the transport's subscription thread, or start-up for the config's `instruction:`),
never on the control path; the controller copies the ids into the next request.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from wam_control.policy.contract import ContractError, ModelContract, tokenizer_path

log = logging.getLogger(__name__)


class InstructionTokenizer:
    """`encode(text)` -> int64 [max_instruction_tokens]: the token ids, padded with the tokenizer's pad
    id (its padding settings, else a `[PAD]`/`<pad>` token, else 0), truncated (with a warning) when
    the prompt is longer than the model takes."""

    def __init__(self, model_path: str | os.PathLike[str], contract: ModelContract) -> None:
        if not contract.has_instruction:
            raise ContractError(
                "instruction_tokens", f"model {contract.model_name} takes no language prompt"
            )
        self.path = tokenizer_path(model_path)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(
                f"model {contract.model_name} takes a language prompt; its tokenizer needs the tokenizers "
                "package: pip install 'wam_control[prompt]'"
            ) from None
        if not os.path.isfile(self.path):
            raise ContractError("tokenizer", f"tokenizer {self.path} for model {model_path} does not exist")
        try:
            self._tok = Tokenizer.from_file(self.path)
        except Exception as exc:
            raise ContractError("tokenizer", f"tokenizer {self.path} cannot be read: {exc}") from None
        self.length = contract.max_instruction_tokens
        padding = self._tok.padding
        pad_id = padding.get("pad_id") if padding else None
        if pad_id is None:
            for token in ("[PAD]", "<pad>", "<|pad|>"):
                pad_id = self._tok.token_to_id(token)
                if pad_id is not None:
                    break
        self.pad_id = int(pad_id or 0)
        # Padding and truncation are done here, to exactly the model's length.
        self._tok.no_padding()
        self._tok.no_truncation()

    def encode(self, text: str) -> np.ndarray:
        ids = self._tok.encode(text).ids
        if len(ids) > self.length:
            log.warning(
                "instruction %r is %d tokens; the model takes %d: truncated", text, len(ids), self.length
            )
            ids = ids[: self.length]
        out = np.full(self.length, self.pad_id, np.int64)
        out[: len(ids)] = ids
        return out


class InstructionInput:
    """The one path a prompt takes to a controller, whoever gives it (`~/instruction` in the transport
    adapter, the config's `instruction:` at start-up, the closed loop's per-episode task prompt):
    tokenized once per change, set on the controller (`set_instruction(text, ids)`), the text kept.

    `tokenizer`: an `InstructionTokenizer` (anything with `encode(text) -> ids`), None for a model
    without a prompt input (every prompt is then refused)."""

    NO_PROMPT = "the model takes no language prompt (no instruction_tokens input)"

    def __init__(self, controller: Any, tokenizer: Any = None) -> None:
        self.controller = controller
        self.tokenizer = tokenizer
        self.text = ""
        """The prompt in force (the last one set; "" before any)."""

    def set(self, text: str) -> str | None:
        """Give `text` (stripped) to the controller unless it is the prompt in force; None when it is
        in force now, else why it was refused (no prompt input, empty prompt)."""
        text = text.strip()
        if self.tokenizer is None:
            return self.NO_PROMPT
        if not text:
            return "empty instruction"
        if text != self.text:
            self.controller.set_instruction(text, self.tokenizer.encode(text))
            self.text = text
            log.info("instruction: %r (takes effect with the next request)", text)
        return None
