"""benchmarks.speed.members: each variant built through public API, and its toggles faithful: the same numbers
where a variant changes only how the work is done."""
from __future__ import annotations

import pytest
import torch

from benchmarks.speed.harness import Comparison, Member, Settings
from benchmarks.speed.members import PaddedKnowledge, build, method_core_loss, undeduplicated
from helpers import StaticKnowledge, images

CAPTIONS = ["bilateral pulmonary infection, lower left lung."] * 2


def _build(model, mode="infer", variant="default", size=64):
    member = Member(model, mode, variant)
    settings = Settings(preset="tgcnet-tiny", rounds=1, min_run_time=0.0, isolate=False, tiny_peers=True)
    return build(member, Comparison("check", "check", (member,), 2, size), settings, torch.device("cpu"))


def test_no_dedup_toggle_changes_work_not_numbers():
    """Trailing spaces defeat de-duplication but tokenise identically: same logits, more strings encoded."""
    from tgcnet import create_model

    knowledge = StaticKnowledge()
    torch.manual_seed(0)
    model = create_model("tgcnet-tiny", knowledge=knowledge).eval()
    torch.manual_seed(0)
    padded_model = create_model("tgcnet-tiny", knowledge=PaddedKnowledge(knowledge)).eval()
    x = images(2, 64)
    with torch.no_grad():
        ref = model(x, CAPTIONS)
        padded = undeduplicated(CAPTIONS)
        out = padded_model(x, padded)
    assert len(set(padded)) == 2
    per_caption = set(padded_model.date.knowledge.source.descriptions_for(CAPTIONS[0]))
    descs = {d for c in padded for d in padded_model.date.knowledge.descriptions_for(c)}
    assert len(descs) == 2 * len(per_caption) == 6
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("variant", ["no_caption_cache", "light_head", "onednn_linear", "torch_linear",
                                     "no_knowledge+lora_merged", "channels_last", "no_dedup"])
def test_tgcnet_variants_build_and_step(variant):
    """Each variant builds through public API and runs."""
    bench = _build("tgcnet", "infer", variant)
    bench.call()
    bench.call()
    if variant == "light_head":
        assert bench.trainable < _build("tgcnet").trainable


def test_unknown_variants_and_models_are_named():
    with pytest.raises(ValueError, match="unknown variant"):
        _build("tgcnet", "infer", "warp_drive")
    with pytest.raises(ValueError, match="unknown model"):
        _build("nothing")


def test_linear_variants_go_through_optimize_for_cpu():
    """The kernel variants are optimize_for_cpu's choices on the built model: same numbers to float rounding."""
    from tgcnet.accel import has_onednn_linears, onednn_linear_available

    torch_model = _build("tgcnet", "infer", "torch_linear").model
    onednn_model = _build("tgcnet", "infer", "onednn_linear").model
    assert not has_onednn_linears(torch_model.sse.clip_visual)
    assert has_onednn_linears(onednn_model.sse.clip_visual) is onednn_linear_available()
    x = images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(onednn_model(x, CAPTIONS), torch_model(x, CAPTIONS), rtol=1e-4, atol=1e-4)


def test_lora_merged_runs_with_knowledge_off_and_computes_the_same():
    """A merged LoRA cannot be bypassed for the frozen knowledge encoder: the variant refuses knowledge on, and
    with knowledge off its outputs are the unmerged model's (the row measures the same computation)."""
    with pytest.raises(ValueError, match="'lora_merged' needs 'no_knowledge'"):
        _build("tgcnet", "infer", "lora_merged")
    from tgcnet.adapters import lora_layers, merge_lora

    merged = _build("tgcnet", "infer", "no_knowledge+lora_merged").model
    plain = _build("tgcnet", "infer", "no_knowledge").model
    assert merged.date.knowledge is None and lora_layers(merged.date.text_tower)
    assert all(layer.merged for layer in lora_layers(merged.date.text_tower).values())
    x = images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x, CAPTIONS), plain.eval()(x, CAPTIONS), rtol=1e-4, atol=1e-4)
        for name, p in plain.date.text_tower.named_parameters():   # LoRA starts at zero: give the merge work
            if "lora_B" in name:
                p.fill_(0.01)
        before = plain(x, CAPTIONS)
        merge_lora(plain.date.text_tower)
        torch.testing.assert_close(plain(x, CAPTIONS), before, rtol=1e-4, atol=1e-4)


def test_method_core_variant_steps():
    """The lower bound runs as a training step and refuses inference (it has no output to serve)."""
    bench = _build("method_core", "train")
    bench.call()
    bench.call()
    with pytest.raises(ValueError, match="training lower bound"):
        _build("method_core", "infer")


def test_method_core_loss_gradients():
    """Its loss backpropagates into LoRA and the CNN branch and leaves the head untouched."""
    from tgcnet import create_model

    model = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).train()
    captions = ["bilateral pulmonary infection, lower left lung.", "unilateral pulmonary infection, right lung."]
    method_core_loss(model, images(2, 64), captions).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("sse.cnn."))
    assert all(g is None for n, g in grads.items() if n.startswith(("decoder.", "vlcm.", "sse.fusion.")))
    assert all(p.grad is None for p in model.sse.clip_visual.parameters())


@pytest.mark.parametrize("variant", ["channels_last_head", "fused_adamw", "fp32_frozen",
                                     "channels_last_head+fused_adamw"])
def test_gpu_lever_variants_build_and_step_on_the_cpu(variant):
    """The GPU plan's levers are variants like the others: they build and step here too."""
    bench = _build("tgcnet", "train", variant)
    bench.call()
    bench.call()
    if "fused_adamw" in variant:
        assert bench.call.optimizer.defaults["fused"] is True


def test_gpu_autocast_comes_from_the_comparison():
    """A comparison's amp overrides the run's; the bf16 variant overrides both; "none" is float32."""
    from benchmarks.speed.members import amp_of

    c = Comparison("c", "c", (), 2)
    assert amp_of(Member("tgcnet"), c, Settings()) is None
    assert amp_of(Member("tgcnet"), c, Settings(amp="bf16")) == "bf16"
    assert amp_of(Member("tgcnet"), Comparison("c", "c", (), 2, amp="none"), Settings(amp="bf16")) is None
    assert amp_of(Member("tgcnet", variant="bf16"), Comparison("c", "c", (), 2, amp="none"), Settings()) == "bf16"


def test_reused_models_are_built_once_per_kind():
    """With reuse on, later comparisons (another batch) time the very model built first; infer and train
    members keep their own (their modes differ), and the text stats follow each comparison's batch."""
    from benchmarks.speed.members import forget_models

    settings = Settings(preset="tgcnet-tiny", rounds=1, min_run_time=0.0, isolate=False, reuse_models=True)
    try:
        steps = {b: build(Member("tgcnet"), Comparison("c", "c", (), b, 64), settings, torch.device("cpu"))
                 for b in (1, 3)}
        train = build(Member("tgcnet", "train"), Comparison("c", "c", (), 1, 64), settings, torch.device("cpu"))
    finally:
        forget_models()
    assert steps[1].model is steps[3].model and train.model is not steps[1].model
    assert steps[1].extra["text"]["captions"] == 1 and steps[3].extra["text"]["captions"] == 3
    fresh = build(Member("tgcnet"), Comparison("c", "c", (), 1, 64), settings, torch.device("cpu"))
    assert fresh.model is not steps[1].model


def test_a_step_owns_its_model_optimizer_and_inputs():
    from benchmarks.speed.harness import resident_bytes

    bench = _build("tgcnet", "train")
    bench.call()
    model = bench.model
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(t.numel() * t.element_size() for s in bench.call.optimizer.state.values() for t in s.values())
    inputs = sum(t.numel() * t.element_size() for t in bench.owned if isinstance(t, torch.Tensor))
    assert state > 0 and inputs == 2 * 64 * 64 * 4 * 4
    assert resident_bytes(bench.owned, torch.device("cpu")) == params + buffers + grads + state + inputs
    assert resident_bytes(bench.owned, torch.device("meta")) == 0
