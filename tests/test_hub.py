"""TGCNet on the Hugging Face Hub: huggingface_hub's PyTorchModelHubMixin, no network.

Repo ids are served from a Hugging Face cache the test writes itself (the layout
``hf_hub_download`` reads offline), or from a mocked ``hf_hub_download`` / ``HfApi``.
"""
import shutil
from pathlib import Path

import huggingface_hub.hub_mixin
import pytest
import torch
from huggingface_hub import ModelHubMixin, PyTorchModelHubMixin

import tgcnet.hub
from helpers import CAPTIONS, StaticKnowledge, images, tiny, wake_lora
from tgcnet import TGCNet
from tgcnet.hub import TGCNetHubMixin, is_hub_repo_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking tiny model and the directory it saved itself to."""
    model = tiny().eval()
    wake_lora(model)
    directory = tmp_path_factory.mktemp("saved") / "tiny"
    model.save_pretrained(directory)
    return model, directory


def hf_cache(root: Path, repo_id: str, files: Path) -> Path:
    """A Hugging Face cache holding ``files``' contents as ``repo_id`` at ``main``."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        if f.is_dir():
            shutil.copytree(f, snapshot / f.name)
        else:
            shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def same_outputs(a: TGCNet, b: TGCNet) -> bool:
    x = images(2, size=64)
    with torch.no_grad():
        return torch.equal(a.eval()(x, CAPTIONS[:2]), b.eval()(x, CAPTIONS[:2]))


def test_tgcnet_is_a_hub_mixin_model():
    assert issubclass(TGCNet, TGCNetHubMixin) and issubclass(TGCNet, PyTorchModelHubMixin)
    assert issubclass(TGCNet, ModelHubMixin)
    info = TGCNet._hub_mixin_info.model_card_data
    assert info.library_name == "tgcnet" and info.pipeline_tag == "image-segmentation"


def test_directory_given_as_a_string(saved):
    model, directory = saved
    again = TGCNet.from_pretrained(str(directory), knowledge=StaticKnowledge())
    assert same_outputs(model, again)


def test_repo_id_is_read_from_the_hugging_face_cache_offline(saved, tmp_path):
    model, directory = saved
    cache = hf_cache(tmp_path / "hub", "org/tgcnet-tiny", directory)
    again = TGCNet.from_pretrained("org/tgcnet-tiny", knowledge=StaticKnowledge(), cache_dir=cache)
    assert same_outputs(model, again)
    assert again.config == model.config


def test_repo_id_goes_through_hf_hub_download(saved, monkeypatch):
    """The mixin fetches config.json, tgcnet's hook config.json (for its format version) and the
    weights: every download names the repo, the revision and the token given."""
    model, directory = saved
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"], kwargs["token"]))
        return str(directory / filename)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)
    monkeypatch.setattr(tgcnet.hub, "hf_hub_download", download)
    again = TGCNet.from_pretrained("org/name", None, StaticKnowledge(), "cpu", revision="v1", token="t")
    assert {call[1] for call in calls} == {"config.json", "model.safetensors"}
    assert all(call[0] == "org/name" and call[2:] == ("v1", "t") for call in calls)
    assert same_outputs(model, again)


def test_uncached_repo_offline_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json of 'org/absent' not found.*no directory of that "
                                                r"name.*HF_HUB_OFFLINE.*hf download org/absent"):
        TGCNet.from_pretrained("org/absent", knowledge=None, cache_dir=tmp_path)


def test_a_path_that_is_no_repo_id_is_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json \(a directory written by save_pretrained\)"):
        TGCNet.from_pretrained(str(tmp_path / "a" / "b" / "c"), knowledge=None)


def test_push_to_hub_uploads_the_saved_files_and_a_model_card(saved, monkeypatch):
    model, _ = saved
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            uploaded.update({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
            return f"https://huggingface.co/{repo_id}/commit/1"
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", FakeApi)
    url = model.push_to_hub("me/tgcnet-tiny")
    assert url == "https://huggingface.co/me/tgcnet-tiny/commit/1"
    assert sorted(uploaded) == ["README.md", "config.json", "model.safetensors"]
    card = uploaded["README.md"].decode()
    assert "library_name: tgcnet" in card and 'TGCNet.from_pretrained("me/tgcnet-tiny")' in card


def test_save_pretrained_can_push(saved, monkeypatch, tmp_path):
    model, _ = saved
    pushed = []
    monkeypatch.setattr(TGCNet, "push_to_hub", lambda self, repo_id, **kw: pushed.append(repo_id) or "url")
    assert model.save_pretrained(tmp_path / "run", push_to_hub=True, repo_id="me/run") == "url"
    assert pushed == ["me/run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors",
                                                                     "text_adapter"]


def test_model_card_only_when_asked(saved, tmp_path):
    model, _ = saved
    assert model.save_pretrained(tmp_path / "plain") == tmp_path / "plain"
    assert not (tmp_path / "plain" / "README.md").exists()
    model.save_pretrained(tmp_path / "card", model_card_kwargs={"repo_id": "me/card"})
    assert "me/card" in (tmp_path / "card" / "README.md").read_text()
    assert not [p for p in (tmp_path / "card").iterdir() if p.name.startswith(".")]


def test_a_config_other_than_the_models_is_refused(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match="writes the model's own config"):
        model.save_pretrained(tmp_path, config={"name": "other"})


def test_a_repo_that_cannot_be_fetched_names_the_file_and_the_cause(saved, monkeypatch):
    """Online, the mixin logs a Hub error on config.json and goes on; the hook's own look-up
    then says which file of which repo, and why."""
    import httpx2
    from huggingface_hub.errors import RepositoryNotFoundError

    def download(repo_id, filename, **kwargs):
        url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)
    monkeypatch.setattr(tgcnet.hub, "hf_hub_download", download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(FileNotFoundError, match=r"config\.json of 'org/private' not found.*"
                                                r"RepositoryNotFoundError.*your access \(token=\)"):
        TGCNet.from_pretrained("org/private", knowledge=None)


def test_a_config_json_not_written_by_save_pretrained_is_named(saved, tmp_path):
    _, directory = saved
    shutil.copytree(directory, tmp_path / "copy")
    (tmp_path / "copy" / "config.json").write_text('{"name": "tgcnet-tiny"}')
    with pytest.raises(ValueError, match=r"config\.json is not a tgcnet config\.json: expected 'format_version' "
                                         r"and 'config'"):
        TGCNet.from_pretrained(tmp_path / "copy", knowledge=None)


@pytest.mark.parametrize("model_id, is_repo", [("org/name", True), ("name", True), ("/a/b/c", False),
                                               ("out/run/best", False), ("org/na me", False)])
def test_is_hub_repo_id(model_id, is_repo):
    assert is_hub_repo_id(model_id) is is_repo
