"""Two processes under torchrun with the gloo backend: `torchrun -m tgcnet.cli train` semantics.

The launched script wraps `tgcnet.cli.main`, recording on every rank the gradients of the
first optimizer step, the final weights and every save call, so the test can check that
DDP averages like one big batch, that the ranks stay identical and that only rank 0 writes.
"""
from __future__ import annotations

import json
import textwrap

import torch
from helpers import run_two_gloo_ranks

from tgcnet.io import load_safetensors
from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig
from tgcnet.engine.distributed import DistInfo
from tgcnet.engine.trainer import Trainer



class GradRecorder(Trainer):
    def _optimizer_step(self) -> None:
        if not hasattr(self, "grads"):
            self.grads = [p.grad.detach().clone() for p in self.params]
        super()._optimizer_step()

LAUNCHED = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from tgcnet.io import save_safetensors_atomic
    import importlib
    train_mod = importlib.import_module("tgcnet.engine.trainer")
    from tgcnet.model import TGCNet

    record = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    saves = []
    original_save = TGCNet.save_pretrained

    def save_pretrained(self, directory):
        saves.append(str(directory))
        return original_save(self, directory)

    TGCNet.save_pretrained = save_pretrained

    class Recorder(train_mod.Trainer):
        def _optimizer_step(self):
            if not hasattr(self, "grads"):
                self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            super()._optimizer_step()

        def run(self):
            out = super().run()
            save_safetensors_atomic(self.grads, record / f"grads{rank}.safetensors")
            save_safetensors_atomic(self.model.trainable_state_dict(), record / f"weights{rank}.safetensors")
            (record / f"saves{rank}.json").write_text(json.dumps(saves))
            return out

    train_mod.Trainer = Recorder
    from tgcnet.cli import main
    sys.exit(main(sys.argv[2:]))
''')



def test_two_gloo_ranks_match_one_big_batch(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(sample_root()), "--out", str(run), "--image-size", "64", "--batch-size", "4",
            "--max-steps", "2", "--warmup-steps", "1", "--device", "cpu", "--no-progress", "--clip-grad", "0"]
    record, res = run_two_gloo_ranks(tmp_path, LAUNCHED, args)
    assert res.returncode == 0, res.stderr[-3000:]

    # both ranks hold identical weights after training
    w0, w1 = load_safetensors(record / "weights0.safetensors"), load_safetensors(record / "weights1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # only rank 0 saved (best/ and last/), and the log has one line per validated epoch
    saves0 = json.loads((record / "saves0.json").read_text())
    assert json.loads((record / "saves1.json").read_text()) == []
    assert saves0 and (run / "best" / "config.json").is_file()   # best/ is written aside, then renamed in
    log = (run / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["val_n_images"] == 8  # 4 + 4 shards, gathered
    assert json.loads((run / "train_config.json").read_text())["world_size"] == 2

    # DDP(2 x 4) averages gradients exactly like one process with a batch of 8 (same 8 images)
    single = GradRecorder(TrainConfig(data=str(sample_root()), out=str(tmp_path / "single"), image_size=64,
                                      batch_size=8, max_steps=1, warmup_steps=1, val_split=None, clip_grad=None,
                                      device="cpu", progress=False), torch.device("cpu"), DistInfo())
    single.run()
    ddp = load_safetensors(record / "grads0.safetensors")
    names = [n for n, p in single.model.named_parameters() if p.requires_grad]
    assert sorted(ddp) == sorted(names)
    for name, g in zip(names, single.grads):
        torch.testing.assert_close(ddp[name], g, rtol=1e-3, atol=1e-7, msg=name)
