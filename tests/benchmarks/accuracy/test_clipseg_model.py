"""benchmarks.accuracy.clipseg_model: CLIPSeg behind the engine's contract, one caption per image, starting
from small logits."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from benchmarks.accuracy.clipseg_model import CLIPSegSegmenter  # noqa: E402


def test_clipseg_wrapper_takes_one_caption_per_image_and_answers_at_input_size():
    from tgcnet.tokenizer import OpenClipTokenizer

    model = CLIPSegSegmenter(image_size=64).eval()
    image = torch.rand(1, 3, 72, 72)   # not a multiple of the patch: CLIPSeg gives 64 px, resized to 72
    captions = ["unilateral pulmonary infection, one infected area, lower left lung.",
                "bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."]
    with torch.no_grad():
        both = model(image.expand(2, -1, -1, -1), captions)
        alone = model(image, captions[1:])
    assert both.shape == (2, 1, 72, 72) and alone.shape == (1, 1, 72, 72)
    assert not torch.allclose(both[0], both[1])          # each image is conditioned on its own caption
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-3)  # and on no other caption of the batch
    ids, mask = model.tokenize(captions)
    assert ids[0, :int(mask[0].sum())].tolist() == OpenClipTokenizer(77).encode(captions[:1])[0]
    with pytest.raises(ValueError, match="one caption per image"):
        model(image, captions)


def test_clipseg_decoder_starts_from_torch_init_so_its_first_logits_are_small():
    """transformers' generic init draws the decoder's weights from N(0, 1) (CLIPSeg's initializer_factor);
    from scratch that gives logits in the thousands and an all-background collapse in the first epoch."""
    torch.manual_seed(0)
    model = CLIPSegSegmenter(image_size=64).eval()
    film = model.model.decoder.film_mul.weight
    assert film.std() < 0.2                     # PyTorch's Kaiming-uniform: 1/sqrt(3 * 64) ~ 0.07, not 1.0
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64), ["bilateral pulmonary infection."] * 2)
    assert logits.abs().max() < 5
