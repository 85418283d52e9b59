"""A character-level tokenizer made locally (no hub), and a loader that keeps it intact.

Pitfall this module exists for: a char-level ``tokenizers`` tokenizer saved next to a Qwen2 config
reloads through ``AutoTokenizer`` as ``Qwen2Tokenizer``, which silently swaps in Qwen2's
pre-tokenizer. :func:`load_tokenizer` detects our tokenizer (marker file) and loads it as
``PreTrainedTokenizerFast``; everything else goes through ``AutoTokenizer``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RlvrLinearError

MARKER = "rlvr_linear_tokenizer.json"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
#: printable ASCII plus newline: enough for arithmetic and most reasoning-gym prompts
DEFAULT_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """Return a ``PreTrainedTokenizerFast`` with one token per character (left padding)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tok.padding_side = "left"
    return tok


def save_char_tokenizer(tok, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"class": "PreTrainedTokenizerFast", "kind": "char"}) + "\n")


def load_tokenizer(path: str | Path):
    """Load the tokenizer stored with a model directory, keeping a char tokenizer intact; left padding."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if (path / MARKER).exists():
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise RlvrLinearError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {e})") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
