"""app.core.library: checkpoints in the HF cache (downloaded from the local test Hub), GGUFs in the models dir
(our quantizer's real SmolLM2 outputs), grouping, reference choice, delete, and ``distilldesk models``."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from app.cli import main
from app.core import hub as hubmod
from app.core import library, paths
from app.core.errors import DownloadCancelled, RepoNotFoundError
from app.core.gguf_header import read_header

from . import hub_server
from .hub_server import SHARDS, SMALL_REPO

hub, small_files, small_repo = hub_server.hub, hub_server.small_files, hub_server.small_repo  # fixtures
NAME = SMALL_REPO.split("/")[1]  # "SmolLM2-mini"
N_PARAMS = 134515008  # SmolLM2-135M: every tensor's elements


@pytest.fixture
def no_demo(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLDESK_CACHE_DIR", str(tmp_path / "distilldesk-cache"))


def place(src: Path, model: str, recipe: str) -> Path:
    """Put a GGUF where ``distilldesk quantize`` would (a symlink: the fixture files are large)."""
    dst = library.output_path(model, recipe)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def test_output_path_is_pure(no_demo):
    p = library.output_path("Some-Model", "q4_k_m")
    assert p == paths.models_dir() / "Some-Model" / "Some-Model-Q4_K_M.gguf"
    assert not p.parent.exists()  # nothing created by asking


def test_empty_library(no_demo):
    assert library.scan() == [] and library.list_checkpoints() == []


def test_ggufs_are_read_from_their_headers_and_the_reference_is_chosen(no_demo, smollm2_gguf, tmp_path):
    f16 = place(smollm2_gguf("F16"), NAME, "F16")
    q8 = place(smollm2_gguf("Q8_0"), NAME, "Q8_0")
    broken = library.output_path(NAME, "Q4_0")
    broken.write_bytes(smollm2_gguf("Q8_0").read_bytes()[:5000])  # truncated
    [g] = library.scan()
    assert g.name == NAME and g.checkpoint is None
    by = {e.file_type: e for e in g.ggufs}
    assert set(by) == {"F16", "Q8_0", "Q4_0"}
    assert by["F16"].size_bytes == smollm2_gguf("F16").stat().st_size and by["F16"].n_params == N_PARAMS
    assert by["F16"].bpw == pytest.approx(16.0, abs=0.05) and by["Q8_0"].bpw == pytest.approx(8.5, abs=0.05)
    assert not by["Q4_0"].ok and "truncated" in by["Q4_0"].error
    assert g.reference().path == f16 and [e.path for e in g.quantized()] == [q8]
    assert g.ggufs[0].path == f16  # reference first
    f16.unlink()
    [g] = library.scan()
    assert g.reference().path == q8 and g.quantized() == []  # Q8_0 stands in for the reference


def tiny_gguf(path: Path, name: str | None, ftype: int = 1) -> Path:
    """A small real GGUF (two F16 tensors) whose general.name is ``name`` (none when ``None``)."""
    import gguf
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    if name is not None:
        w.add_name(name)
    w.add_file_type(ftype)
    w.add_tensor("a.weight", np.zeros((4, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_loose_ggufs_are_grouped_by_the_name_stored_in_them_not_their_file_names(no_demo, smollm2_gguf, tmp_path,
                                                                                capsys):
    """Files outside a model folder (extra folders/files, the models folder's top level) group by general.name:
    m-Q2_K.gguf is not a model called "m", and differently named files of one model belong together."""
    fixture_name = read_header(smollm2_gguf("Q8_0")).name           # the checkpoint folder's name
    d = tmp_path / "elsewhere"
    d.mkdir()
    os.symlink(smollm2_gguf("Q4_K_M"), d / "tiny-llama.Q4_K_M.gguf")
    os.symlink(smollm2_gguf("Q8_0"), tmp_path / "tiny-llama-Q8_0.gguf")
    os.symlink(smollm2_gguf("Q2_K"), paths.models_dir() / "m-Q2_K.gguf")
    [g] = library.scan(extra_dirs=[d], extra_files=[tmp_path / "tiny-llama-Q8_0.gguf", tmp_path / "missing.gguf"])
    assert g.name == fixture_name and [e.file_type for e in g.ggufs] == ["Q8_0", "Q4_K_M", "Q2_K"]
    assert g.reference().file_type == "Q8_0" and {e.model for e in g.ggufs} == {fixture_name}
    # no general.name: the model folder, else the file name without its type; unreadable: the same
    tiny_gguf(paths.models_dir() / "Folder" / "whatever-F16.gguf", None)
    tiny_gguf(paths.models_dir() / "nameless-Q8_0.gguf", None, ftype=7)
    (paths.models_dir() / "broken-Q4_0.gguf").write_bytes(b"GGUF")
    by = {g.name: g for g in library.scan()}
    assert set(by) == {fixture_name, "Folder", "nameless", "broken"}
    assert [e.path.name for e in by[fixture_name].ggufs] == ["m-Q2_K.gguf"]
    assert not by["broken"].ggufs[0].ok and by["nameless"].ggufs[0].file_type == "Q8_0"
    assert main(["models", "--json"]) == 0                              # the CLI lists the same groups
    listed = {g["name"]: [e["path"] for e in g["ggufs"]] for g in json.loads(capsys.readouterr().out)}
    assert listed == {n: [str(e.path) for e in g.ggufs] for n, g in by.items()}


def test_a_model_folder_wins_over_the_stored_name_and_names_match_like_the_hub_spells_them(no_demo, small_repo,
                                                                                            tmp_path):
    hubmod.download(SMALL_REPO)                                         # checkpoint "SmolLM2-mini"
    made_here = tiny_gguf(library.output_path(NAME, "F16"), "something else")   # moved into the folder by hand
    third_party = tiny_gguf(tmp_path / "downloads" / "smollm2_mini.Q8_0.gguf", "SmolLM2 Mini", ftype=7)
    other = tiny_gguf(tmp_path / "downloads" / "SmolLM2-mini-Q4_0.gguf", "Another Model", ftype=2)
    groups = library.scan(extra_files=[third_party, other])
    assert [g.name for g in groups] == ["Another Model", NAME]
    g = groups[1]
    assert g.checkpoint.repo_id == SMALL_REPO and [e.path for e in g.ggufs] == [made_here, third_party]
    assert {e.model for e in g.ggufs} == {NAME} and g.reference().path == made_here
    assert library.group_key("DeepSeek R1 Distill Qwen 7B") == library.group_key("deepseek-r1_distill  qwen-7b")


def test_downloaded_checkpoints_are_listed_from_the_hf_cache_with_their_ggufs(no_demo, small_repo, small_files,
                                                                              smollm2_gguf):
    res = hubmod.download(SMALL_REPO)
    q4 = place(smollm2_gguf("Q4_K_M"), NAME, "Q4_K_M")
    [ck] = library.list_checkpoints()
    needed = sum(len(small_files[n]) for n in res.files)
    assert (ck.name, ck.repo_id, ck.commit, ck.refs, ck.path) == (NAME, SMALL_REPO, res.commit, ("main",), res.path)
    assert ck.architecture == "LlamaForCausalLM" and ck.complete and ck.partial_bytes == 0
    assert ck.size_bytes == needed
    [g] = library.scan()
    assert g.checkpoint == ck and [e.path for e in g.ggufs] == [q4]


def test_an_interrupted_download_is_listed_as_incomplete_until_resumed(no_demo, small_repo, small_files):
    cancel = threading.Event()

    def progress(p):
        if p.file == SHARDS[1] and p.file_done > 500_000:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        hubmod.download(SMALL_REPO, progress=progress, cancel=cancel)
    [ck] = library.list_checkpoints()
    assert not ck.complete and 500_000 <= ck.partial_bytes < len(small_files[SHARDS[1]])
    hubmod.download(SMALL_REPO)
    [ck] = library.list_checkpoints()
    assert ck.complete and ck.partial_bytes == 0


def test_delete_a_gguf_and_a_checkpoint(no_demo, small_repo, small_files, smollm2_gguf):
    res = hubmod.download(SMALL_REPO)
    v2 = small_repo.add_repo(SMALL_REPO, {**small_files, "config.json": small_files["config.json"] + b" "},
                             revision="v2")
    hubmod.download(SMALL_REPO, revision="v2")
    assert [c.commit for c in library.list_checkpoints()] == [res.commit, v2]  # 'main' first
    q8 = place(smollm2_gguf("Q8_0"), NAME, "Q8_0")
    library.delete_gguf(q8)
    assert not q8.exists() and not q8.parent.exists()
    freed = library.delete_checkpoint(SMALL_REPO, v2[:8])  # one revision: only its own config blob goes
    assert freed == len(small_files["config.json"]) + 1
    assert [c.commit for c in library.list_checkpoints()] == [res.commit]
    assert (res.path / SHARDS[1]).read_bytes() == small_files[SHARDS[1]]  # shared blobs stay
    assert library.delete_checkpoint(SMALL_REPO) == res.bytes_total
    assert library.list_checkpoints() == [] and not hubmod.hub_cache.repo_folder(hubmod.hub_cache_dir(),
                                                                                 SMALL_REPO).exists()
    with pytest.raises(RepoNotFoundError, match="not in the local Hugging Face cache"):
        library.delete_checkpoint(SMALL_REPO)


def test_models_cli_lists_checkpoints_and_ggufs(no_demo, small_repo, smollm2_gguf, capsys, monkeypatch):
    assert main(["models"]) == 0
    assert "no models yet" in capsys.readouterr().out
    res = hubmod.download(SMALL_REPO)
    place(smollm2_gguf("F16"), NAME, "F16")
    place(smollm2_gguf("Q4_K_M"), NAME, "Q4_K_M")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{SMALL_REPO} (main)" in out and str(res.path) in out and "LlamaForCausalLM" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()[0] in
             ("F16", "Q4_K_M")}
    assert "reference" in lines["F16"] and "16.00 bpw" in lines["F16"]
    assert f"{smollm2_gguf('F16').stat().st_size / 1e6:.1f} MB" in lines["F16"]  # decimal, as everywhere
    assert "reference" not in lines["Q4_K_M"]
    assert main(["models", "--json"]) == 0
    [g] = json.loads(capsys.readouterr().out)
    assert g["checkpoint"]["repo_id"] == SMALL_REPO and g["checkpoint"]["complete"]
    assert [(e["type"], e["reference"]) for e in g["ggufs"]] == [("F16", True), ("Q4_K_M", False)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(small_repo.requests)
    assert main(["models"]) == 0
    assert "offline mode" in capsys.readouterr().err and len(small_repo.requests) == n
