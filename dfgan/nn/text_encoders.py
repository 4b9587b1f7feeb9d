"""Text encoders: captions -> (word embeddings (B, D, T), sentence embedding (B, D)). Frozen while the GAN trains.

Built as ``TEXT_ENCODERS.build(name, spec=TextEncoderSpec, n_words=...)`` and called as
``encoder(captions, lengths)``. An encoder's ``provides`` says whether it gives word embeddings.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dfgan.registry import TEXT_ENCODERS

DAMSM_EMBED = 300  # AttnGAN/DF-GAN RNN_ENCODER ninput
DAMSM_HIDDEN = 256  # nhidden; each direction has 128


class DAMSMTextEncoder(nn.Module):
    """AttnGAN's DAMSM text encoder (official ``RNN_ENCODER``), as frozen by DF-GAN (reference Sec. 4).

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


@TEXT_ENCODERS.register("damsm", provides={"words"})
def damsm(spec, n_words: int) -> DAMSMTextEncoder:
    """AttnGAN's bi-LSTM DAMSM text encoder (DF-GAN's default), pretrained then frozen."""
    return DAMSMTextEncoder(n_words, nhidden=spec.embedding_dim)
