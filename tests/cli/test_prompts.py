"""`prompts generate | show` and caption harvesting from files and data directories."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tgcnet.prompts import load_cache
from tgcnet.prompts.harvest import harvest_captions
from tgcnet.cli import main
from tgcnet.cli.prompts import add_parser as add_prompts_parser

CAPS = ["Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
        "Unilateral pulmonary infection, one infected area, middle left lung."]


# --------------------------------------------------------------------------- captions

def test_captions_from_csv_text_json_and_xlsx(tmp_path):
    rows = "".join(f'{i}.png,"{c}"\n' for i, c in enumerate([CAPS[0], CAPS[1], CAPS[0]]))
    (tmp_path / "a.csv").write_text("Image,Description\n" + rows)
    assert harvest_captions(tmp_path / "a.csv") == CAPS
    (tmp_path / "a.txt").write_text(f"{CAPS[1]}\n\n  {CAPS[0]}  \n")
    assert harvest_captions(tmp_path / "a.txt") == [CAPS[1], CAPS[0]]
    sgseg = {"train": [{"image_path": "mask_a.png", "caption": CAPS[0]}], "test": [{"caption": CAPS[1]}]}
    (tmp_path / "annotation.json").write_text(json.dumps(sgseg))
    assert harvest_captions(tmp_path / "annotation.json") == CAPS
    from openpyxl import Workbook

    wb = Workbook()
    wb.active.append(["Image", "Description"])
    wb.active.append(["a.png", CAPS[1]])
    wb.save(tmp_path / "Train_text.xlsx")
    assert harvest_captions(tmp_path / "Train_text.xlsx") == [CAPS[1]]


def test_captions_from_data_directories(tmp_path):
    (tmp_path / "prompt").mkdir()
    (tmp_path / "prompt" / "train.csv").write_text(f'Image,Description\nmask_a.png,"{CAPS[0]}"\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "prompts.csv").write_text(f'Image,Description\nb.png,"{CAPS[1]}"\n')
    (tmp_path / "ignored.csv").write_text("Image,Description\nc.png,not harvested\n")
    assert sorted(harvest_captions(tmp_path)) == sorted(CAPS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no caption files found"):
        harvest_captions(empty)


def test_captions_errors_name_the_file(tmp_path):
    (tmp_path / "bad.csv").write_text("Image,Label\na.png,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: no caption column"):
        harvest_captions(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nope"):
        harvest_captions(tmp_path / "nope")


def test_captions_from_qata_mini(qata_mini_root):
    caps = harvest_captions(qata_mini_root)
    assert 40 <= len(caps) <= 63 and all(c.endswith(".") for c in caps)


# --------------------------------------------------------------------------- parser wiring

def test_add_prompts_parser_sets_func_for_the_dispatcher(tmp_path):
    parser = argparse.ArgumentParser(prog="tgcnet")
    add_prompts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prompts", "show", str(tmp_path / "c.json")])
    assert callable(args.func)
    args = parser.parse_args(["prompts", "generate", "--captions", "x.csv", "--model", "m", "--out", "o.json"])
    assert callable(args.func) and args.api_key_env == "OPENAI_API_KEY" and args.k == 4
    assert parser.parse_args(["prompts"]).func(args) == 2


# --------------------------------------------------------------------------- show

def test_show_prints_concepts_descriptions_and_provenance(capsys):
    from importlib import resources

    path = resources.files("tgcnet.prompts") / "default_bank.json"
    assert main(["prompts", "show", str(path), "--concept", "lobe:"]) == 0
    out = capsys.readouterr().out
    assert "6 concept(s)" in out and "lobe:lingula" in out and "zone:" not in out
    assert "generator: maintainers (hand-written) | endpoint: - | template: -" in out
    assert "  - The lingula is the lower part of the left upper lobe" in out


def test_show_reports_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 99, "entries": {}}')
    assert main(["prompts", "show", str(bad)]) == 2  # the user's file to fix
    err = capsys.readouterr().err
    assert str(bad) in err and "newer" in err
    assert err.startswith("tgcnet prompts: error: ") and "Traceback" not in err


# --------------------------------------------------------------------------- generate

def test_generate_dry_run_needs_no_key(qata_mini_root, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["prompts", "generate", "--captions", str(qata_mini_root), "--model", "m", "--out", "x.json",
                 "--dry-run", "--concept", "modality:chest x-ray"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "finding:pulmonary infection" in out and "zone:upper left lung" in out
    assert out[-1] == "modality:chest x-ray" and not os.path.exists("x.json")


def test_generate_end_to_end_then_show(fake_chat, api_key, tmp_path, capsys):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(CAPS))
    out = tmp_path / "c.json"
    argv = ["prompts", "generate", "--captions", str(caps), "--model", "local-model", "--base-url",
            fake_chat.base_url, "--api-key-env", "TGCNET_TEST_KEY", "-k", "2", "--concurrency", "2",
            "--timeout", "2", "--backoff", "0.01", "--temperature", "0.2"]
    fake_chat.plan["lower left lung"] = [500]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 distinct caption(s)" in printed and "generated 8, already cached 0" in printed
    cache = load_cache(out)
    assert len(cache) == 8 and cache["zone:lower left lung"].provenance.generator == "local-model"
    assert fake_chat.count("lower left lung") == 2
    assert main([*argv, "--out", str(out)]) == 0  # resume: nothing left to do
    assert "generated 0, already cached 8" in capsys.readouterr().out
    assert main(["prompts", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "Canned description 1 of lower left lung." in shown and "local-model" in shown
    assert api_key not in printed + shown


def test_generate_failure_exits_1_with_the_error(fake_chat, api_key, tmp_path, capsys):
    caps = tmp_path / "caps.txt"
    caps.write_text(CAPS[1])
    fake_chat.plan["one area"] = ["wrong_shape"]
    rc = main(["prompts", "generate", "--captions", str(caps), "--model", "m", "--base-url", fake_chat.base_url,
               "--api-key-env", "TGCNET_TEST_KEY", "--concurrency", "1", "--out", str(tmp_path / "c.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("tgcnet prompts: error: ") and "concept 'count:one area': expected {\"descriptions\"" in err


def test_killed_run_loses_nothing_and_resumes(fake_chat, api_key, tmp_path):
    """SIGKILL a CLI run while it waits on a hung request; the file stays valid and the rerun completes."""
    caps = tmp_path / "caps.txt"
    caps.write_text(CAPS[1])  # 4 concepts: finding, laterality, count, zone
    out = tmp_path / "c.json"
    fake_chat.plan["one area"] = ["hang"]
    cmd = [sys.executable, "-m", "tgcnet.cli", "prompts", "generate", "--captions", str(caps), "--model", "m",
           "--base-url", fake_chat.base_url, "--api-key-env", "TGCNET_TEST_KEY", "--concurrency", "1",
           "--timeout", "30", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r["concept"] == "one area" for r in fake_chat.requests):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()
    saved = json.loads(out.read_text())["entries"]
    assert sorted(saved) == ["finding:pulmonary infection", "laterality:unilateral"]
    fake_chat.requests.clear()
    assert main(["prompts", "generate", "--captions", str(caps), "--model", "m", "--base-url", fake_chat.base_url,
                 "--api-key-env", "TGCNET_TEST_KEY", "--out", str(out)]) == 0
    assert sorted(fake_chat.labels()) == ["middle left lung", "one area"]
    final = json.loads(out.read_text())["entries"]
    assert len(final) == 4 and {k: final[k] for k in saved} == saved


def test_generate_unreachable_endpoint_exits_2_with_one_line(api_key, tmp_path, capsys):
    """Nothing listens on the port: one line naming host and port, exit 2, no retries, no traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caps = tmp_path / "caps.txt"
    caps.write_text(CAPS[1])
    argv = ["prompts", "generate", "--captions", str(caps), "--model", "m", "--base-url",
            f"http://127.0.0.1:{port}/v1", "--api-key-env", "TGCNET_TEST_KEY", "--out", str(tmp_path / "c.json")]
    t0 = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - t0 < 10.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tgcnet prompts: error: ") and "Traceback" not in err, err
    assert f"host 127.0.0.1, port {port}" in err and "rerunning will not help until the endpoint is reachable" in err
    assert "retry" not in err and not (tmp_path / "c.json").exists()
