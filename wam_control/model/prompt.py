"""The word-level tokenizer of prompted WAMs (contract v2 `instruction_tokens`).

A prompt here names a task and an object ("put the red cube on the yellow square"), so a word-level
vocabulary is all a small model needs: every word of the sim's prompts gets an id, anything else is
`[UNK]`. It is written in the `tokenizers` library's JSON format, the format the runtime reads
(`policy.instruction.InstructionTokenizer`), beside the model as `<model>.tokenizer.json`; `[PAD]` is
id 0, which the model's prompt encoder masks out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"


def task_prompts() -> list[str]:
    """Every prompt the sim's tasks can give (pick_place's with each cube colour)."""
    from wam_control.sim.tasks import CUBE_COLOURS, PROMPTS

    out: list[str] = []
    for phrasings in PROMPTS.values():
        for p in phrasings:
            colours = CUBE_COLOURS if "{colour}" in p else ("",)
            out.extend(p.format(colour=c) for c in colours)
    return out


def build_tokenizer(texts: Iterable[str]) -> str:
    """A word-level tokenizer (lower-cased, split on whitespace and punctuation) whose vocabulary is
    the words of `texts`; returns its JSON."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({PAD: 0, UNK: 1}, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = sorted(
        {w for t in texts for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t))}
    )
    vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok.model = WordLevel(vocab, unk_token=UNK)
    return str(tok.to_str())


class PromptEncoder:
    """`encode(text)` -> int64 [length] ids padded with 0, as the runtime's InstructionTokenizer pads."""

    def __init__(self, tokenizer_json: str, length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer_json)
        self.length = int(length)
        self.vocab_size = int(self._tok.get_vocab_size())
        if self._tok.token_to_id(PAD) != 0:
            raise ValueError(f"tokenizer: {PAD} must be id 0")

    def encode(self, text: str) -> np.ndarray:
        ids = self._tok.encode(text).ids[: self.length]
        out = np.zeros(self.length, np.int64)
        out[: len(ids)] = ids
        return out


def write_tokenizer(tokenizer_json: str, model_path: str | os.PathLike[str]) -> str:
    """Write `<model>.tokenizer.json` beside `model_path`; returns its path."""
    from wam_control.policy.contract import tokenizer_path
    from wam_control.policy.engine_cache import atomic_write

    path = tokenizer_path(model_path)
    atomic_write(Path(path), tokenizer_json.encode())
    return path
