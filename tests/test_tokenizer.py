"""Tokenisers offline: Hugging Face tokenizers from a folder, clear errors when they are missing."""
import pytest
import torch

from helpers import CAPTIONS, images, write_bert_tokenizer
from tgcnet import create_model
from tgcnet.tokenizer import CaptionTokenizer, HFTokenizer, OpenClipTokenizer


def test_model_builds_and_counts_without_tokenizer_files_then_names_the_folder_to_pass():
    model = create_model("tgcnet-tiny-biomedclip", knowledge=None)
    assert model.count_parameters()[-1]["total"] > 0
    with pytest.raises(ValueError, match=r"tokenizer 'tgcnet/tiny-bert' .*not available.*clip__tokenizer="
                                         r"'/path/to/folder'.*vocab.txt"):
        model(images(1), CAPTIONS[:1])


def test_tokenizer_folder_without_vocabulary_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    model = create_model("tgcnet-tiny-biomedclip", knowledge=None, clip__tokenizer=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="clip.tokenizer=.*empty.*tokenizer_config.json"):
        model(images(1), CAPTIONS[:1])


def test_overlong_caption_uses_the_towers_own_context(tmp_path):
    model = create_model("tgcnet-tiny-biomedclip", knowledge=None,
                         clip__tokenizer=write_bert_tokenizer(tmp_path / "tok"))
    assert model.max_caption_tokens == 64 - 2
    caption = " ".join(["lung"] * 61) + "."   # canonical form (final period): 62 word pieces
    assert model.overlong_captions([caption, "lung " + caption]) == [(1, 63)]
    with pytest.raises(ValueError, match="caption 1 has 63 tokens"):
        model(images(2), [caption, "lung " + caption])


def test_hf_descriptions_are_truncated_with_a_warning(tmp_path):
    folder = write_bert_tokenizer(tmp_path / "tok")
    tokenize = CaptionTokenizer(HFTokenizer(folder, 8, folder, "test"))
    with pytest.warns(UserWarning, match="description 0 has 9 tokens"):
        ids = tokenize(["left lung " * 3 + "lower left lung"], what="description")
    assert ids.shape == (1, 8) and ids[0, -1] == 3   # [SEP] kept at the end


def test_rows_pad_to_the_longest_or_to_the_context():
    texts = ["left lung.", "bilateral pulmonary infection, lower left lung."]
    short = CaptionTokenizer(OpenClipTokenizer(77))(texts)
    full = CaptionTokenizer(OpenClipTokenizer(77), pad_to_context=True)(texts)
    assert short.shape[1] < 77 and full.shape == (2, 77)
    assert torch.equal(full[:, :short.shape[1]], short) and not full[:, short.shape[1]:].any()


def test_siglip_by_name_builds_offline_and_says_where_its_tokenizer_must_come_from():
    """Its tokenizer is fetched by name: offline, building works and the first use says what to do."""
    model = create_model("tgcnet-tiny", clip_model="ViT-B-16-SigLIP", knowledge=None,
                         sse__vit_indices=[2, 5, 8, 11])
    assert model.date.text_tower.pads_to_context
    with pytest.raises(ValueError, match="tokenizer 'timm/ViT-B-16-SigLIP'.*hf download"):
        model.overlong_captions(CAPTIONS)
