"""ONNX export: onnxruntime gives PyTorch's logits on the embedded sample, with knowledge and guidance
baked in; the metadata reads back; bad captions and paths are refused before anything is written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tgcnet import create_model
from tgcnet.captions import normalize_caption
from tgcnet.data import build_transforms, sample_root
from tgcnet.data.dataset import load_image
from tgcnet.engine.loading import load_inference_model
from tgcnet.io import read_table, save_json_atomic

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tgcnet import onnx_export  # noqa: E402
from tgcnet.caption_set import prepare_captions  # noqa: E402
from tgcnet.onnx_export import (DEFAULT_OPSET, collect_captions, export_onnx, read_onnx_captions,  # noqa: E402
                                read_onnx_metadata)

SIZE = 64
PROMPTS = sample_root() / "test" / "prompts.csv"


def make_run(root, seed: int = 0, knowledge=None, **overrides):
    """A run directory as the trainer leaves it (best/ + train_config.json), decoder biases nudged
    so the masks are neither empty nor full."""
    torch.manual_seed(seed)
    model = create_model("tgcnet-tiny", knowledge=knowledge, **overrides)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith("bias") and "decoder" in name:
                p.add_(0.3)
        if model.date.knowledge_fusion is not None:   # let the descriptions move the logits visibly
            model.date.knowledge_fusion.attn.gate.fill_(2.0)
    model.save_pretrained(root / "best")
    save_json_atomic({"train": {"image_size": SIZE, "knowledge": knowledge or "none", "threshold": 0.5}},
                     root / "train_config.json")
    return root


def sample_batch(n: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``n`` test images of the embedded sample as evaluation sees them, and their captions."""
    rows = read_table(PROMPTS).columns("Image", "Description")[:n]
    transform = build_transforms(False, SIZE)
    images = []
    for name, caption in rows:
        image = load_image(sample_root() / "test" / "images" / name)
        h, w = image.shape[:2]
        resized, _, _ = transform(image, np.zeros((h, w), np.uint8), caption)
        x = torch.from_numpy(np.ascontiguousarray(resized)).float().div_(255.0)
        images.append(x.unsqueeze(0).repeat(3, 1, 1) if x.ndim == 2 else x.permute(2, 0, 1))
    return torch.stack(images), [caption for _, caption in rows]


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path, images: torch.Tensor, index) -> np.ndarray:
    feed = {"images": images.numpy(), "caption_index": np.asarray(index, dtype=np.int64)}
    return session(path).run(None, feed)[0]


def indices(path, captions: list[str]) -> list[int]:
    """Caption text -> index as a consumer without tgcnet would: the metadata's lookup."""
    lookup = json.loads(read_onnx_metadata(path)["caption_lookup"])
    return [lookup[c] for c in captions]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_onnx(run_dir, tmp_path_factory.mktemp("onnx") / "model.onnx", captions_file=PROMPTS)


@pytest.fixture(scope="module")
def torch_model(run_dir):
    return load_inference_model(run_dir, device="cpu")[0]


# --------------------------------------------------------------------------- parity

def test_onnxruntime_gives_pytorchs_logits_and_masks(exported, torch_model):
    images, captions = sample_batch(5)     # the export traced a batch of 2: 5 exercises the dynamic axis
    assert len(set(captions)) >= 3
    got = run_onnx(exported.path, images, indices(exported.path, captions))
    with torch.no_grad():
        expected = torch_model(images, captions).numpy()
    assert got.shape == expected.shape == (5, 1, SIZE, SIZE)
    assert np.abs(got - expected).max() <= 1e-4
    mask = expected > 0  # sigmoid > 0.5
    assert 0.01 < mask.mean() < 0.99, "a trivial mask would make the comparison meaningless"
    np.testing.assert_array_equal(got > 0, mask)


def test_batch_of_one_and_batch_agree(exported):
    images, captions = sample_batch(3)
    index = indices(exported.path, captions)
    batch = run_onnx(exported.path, images, index)
    for i in range(3):
        one = run_onnx(exported.path, images[i:i + 1], index[i:i + 1])
        assert one.shape == (1, 1, SIZE, SIZE)
        np.testing.assert_allclose(one[0], batch[i], atol=1e-5)


def test_each_caption_index_selects_its_caption(exported, torch_model):
    """One image under every stored caption: index k gives caption k's logits."""
    stored = read_onnx_captions(exported.path)
    image = sample_batch(1)[0].expand(len(stored), -1, -1, -1).contiguous()
    got = run_onnx(exported.path, image, list(range(len(stored))))
    with torch.no_grad():
        expected = torch_model(image, stored).numpy()
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got[0] - got[1]).max() > 1e-3, "distinct captions should give distinct logits"


def test_caption_index_bounds(exported):
    """Negative indices count from the end (ONNX Gather); outside [-N, N) onnxruntime raises."""
    n = len(read_onnx_captions(exported.path))
    images = sample_batch(2)[0]
    np.testing.assert_allclose(run_onnx(exported.path, images, [-1, -n]), run_onnx(exported.path, images, [n - 1, 0]),
                               atol=1e-6)
    with pytest.raises(Exception, match="index"):
        run_onnx(exported.path, images, [0, n])


# --------------------------------------------------------------------------- what the graph bakes in

def test_knowledge_and_guidance_prior_are_baked_in(tmp_path):
    """A run with the shipped knowledge bank and an SSA guidance prior: both shape the logits in
    PyTorch, and onnxruntime reproduces them."""
    run = make_run(tmp_path / "run", seed=1, knowledge="default", ssa={"guidance": "prior"})
    captions = ["unilateral pulmonary infection, one infected area, lower left lung.",
                "unilateral pulmonary infection, one infected area, upper right lung.",
                "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."]
    result = export_onnx(run, tmp_path / "m.onnx", captions=captions)
    model, _ = load_inference_model(run, device="cpu")
    assert model.date.knowledge_fusion is not None and model.vlcm.guidance_strength is not None
    images, _ = sample_batch(4)
    chosen = [captions[i] for i in (0, 1, 2, 1)]
    got = run_onnx(result.path, images, [0, 1, 2, 1])
    with torch.no_grad():
        expected = model(images, chosen)
        strength = model.vlcm.guidance_strength.item()
        model.vlcm.guidance_strength.fill_(0.0)
        no_guidance = model(images, chosen)
        model.vlcm.guidance_strength.fill_(strength)
        model.date.knowledge = None
        no_knowledge = model(images, chosen)
    assert (expected - no_guidance).abs().max() > 1e-2
    assert (expected - no_knowledge).abs().max() > 1e-3
    assert np.abs(got - expected.numpy()).max() <= 1e-4


# --------------------------------------------------------------------------- metadata

def test_metadata_round_trips(exported):
    given = [c for (c,) in read_table(PROMPTS).columns("Description")]
    stored = read_onnx_captions(exported.path)
    assert stored == list(dict.fromkeys(normalize_caption(c) for c in given))
    meta = read_onnx_metadata(exported.path)
    assert meta["image_size"] == str(SIZE) and meta["opset"] == str(DEFAULT_OPSET) == str(exported.opset)
    assert float(meta["threshold"]) == 0.5 and meta["laterality"] == "image" and meta["model"] == "tgcnet-tiny"
    import onnx

    proto = onnx.load(str(exported.path))
    assert any(op.domain in ("", "ai.onnx") and op.version == DEFAULT_OPSET for op in proto.opset_import)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}
    assert dims["images"][1:] == [3, SIZE, SIZE] and dims["logits"][1:] == [1, SIZE, SIZE]
    assert all(isinstance(dims[name][0], str) for name in ("images", "caption_index", "logits")), "batch is dynamic"
    assert exported.n_captions == len(stored) and exported.size_bytes == exported.path.stat().st_size
    assert "InferenceSession" in exported.summary() and f"opset {DEFAULT_OPSET}" in exported.summary()


def test_read_onnx_captions_refuses_other_files(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_onnx_captions(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        read_onnx_captions(junk)
    import onnx

    proto = onnx.load(str(exported.path))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(ValueError, match="not written by tgcnet export"):
        read_onnx_captions(plain)


# --------------------------------------------------------------------------- captions

def test_collect_captions_reads_text_files_and_tables(tmp_path):
    text = tmp_path / "captions.txt"
    text.write_text("lower left lung\n\n  upper   right lung \n", encoding="utf-8")
    assert [t for _, t in collect_captions(text, ["middle left lung"])] == \
        ["lower left lung", "upper right lung", "middle left lung"]
    assert collect_captions(text)[1][0] == f"{text} line 3"
    table = [t for _, t in collect_captions(PROMPTS)]
    assert len(table) == 8 and table[0].startswith("bilateral pulmonary infection")
    with pytest.raises(ValueError, match="--captions FILE .* or --caption TEXT"):
        collect_captions(None, None)
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        collect_captions(tmp_path / "nothing.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Text\na.png,lower left lung\n", encoding="utf-8")
    with pytest.raises(ValueError, match="Description"):
        collect_captions(bad)
    binary = tmp_path / "captions.bin"
    binary.write_bytes(b"\xff\xfe\x00lung")
    with pytest.raises(ValueError, match="captions.bin is not UTF-8"):
        collect_captions(binary)
    blank = tmp_path / "blank.csv"
    blank.write_text("Image,Description\na.png,lower left lung\nb.png,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty caption.*blank.csv line 3"):
        collect_captions(blank)


def test_prepare_captions_normalises_dedupes_and_refuses(torch_model):
    given = [("a", "Lower Left lung"), ("b", "lower left lung."), ("c", "upper right lung")]
    stored, lookup = prepare_captions(torch_model, given)
    assert stored == ["lower left lung.", "upper right lung."]
    assert lookup == {"lower left lung.": 0, "upper right lung.": 1, "Lower Left lung": 0, "upper right lung": 1}
    with pytest.raises(ValueError, match="empty caption.*--caption 2"):
        prepare_captions(torch_model, [("--caption 1", "lung"), ("--caption 2", "")])
    with pytest.raises(ValueError, match=r"hold no words: x\.txt line 4"):
        prepare_captions(torch_model, [("x.txt line 4", " , ;")])
    long = " ".join(["lower left lung"] * 40)
    with pytest.raises(ValueError, match=rf"longer than the {torch_model.max_caption_tokens} tokens.*line 3"):
        prepare_captions(torch_model, [("ok", "lung"), ("p.csv line 3", long)])


# --------------------------------------------------------------------------- refusals, before any work

def test_bad_paths_and_options_are_refused_before_loading(tmp_path, run_dir):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_onnx(run_dir, a_file / "sub" / "m.onnx", captions=["lung"])
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(run_dir, tmp_path, captions=["lung"])
    with pytest.raises(ValueError, match="--opset 12"):
        export_onnx(run_dir, tmp_path / "m.onnx", captions=["lung"], opset=12)
    with pytest.raises(ValueError, match="--image-size 70 .* patch size 16"):
        export_onnx(run_dir, tmp_path / "m.onnx", captions=["lung"], image_size=70)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        export_onnx(tmp_path / "no_run", tmp_path / "m.onnx", captions=["lung"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_file_that_fails_verification_is_never_written(tmp_path, run_dir, monkeypatch):
    """The check runs on the temporary file; a failure leaves neither it nor ``out`` behind.
    (Tracing is replaced by a stand-in program: what is under test is the write, not the graph.)"""
    class Program:
        class model:  # noqa: N801  (the attributes export_model sets)
            doc_string = ""
            metadata_props: dict = {}

        def save(self, path, external_data=False):
            with open(path, "wb") as f:
                f.write(b"graph")

    def fail(path, module, example):
        assert open(path, "rb").read() == b"graph"
        raise ValueError("onnxruntime's logits differ")

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: Program())
    monkeypatch.setattr(onnx_export, "_verify", fail)
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ValueError, match="differ"):
        export_onnx(run_dir, out, captions=["lower left lung"])
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path, run_dir):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "tgcnet\[export\]"'):
        export_onnx(run_dir, tmp_path / "m.onnx", captions=["lung"])
