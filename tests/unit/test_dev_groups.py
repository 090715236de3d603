"""How `omnijobs dev` deals stages into worker processes, and its settings file (pure)."""

from __future__ import annotations

import pytest

from omnijobs.dev import DevError, group_stages, read_settings_file, write_settings_file

STAGES = ["chat.generate", "omni.thinker", "omni.talker", "omni.token2wav", "img.encode"]


def test_round_robin_keeps_a_pipelines_stages_apart():
    groups = group_stages(STAGES, 2)
    assert groups == [["chat.generate", "omni.talker", "img.encode"], ["omni.thinker", "omni.token2wav"]]
    assert sorted(s for g in groups for s in g) == sorted(STAGES)  # each stage exactly once


@pytest.mark.parametrize("processes", [1, 3, 5, 50])
def test_never_more_processes_than_stages_and_none_empty(processes):
    groups = group_stages(STAGES, processes)
    assert len(groups) == min(processes, len(STAGES)) and all(groups)
    assert sorted(s for g in groups for s in g) == sorted(STAGES)


def test_settings_file_round_trip(tmp_path):
    env = {"OMNIJOBS_URL": "http://127.0.0.1:8000", "OMNIJOBS_DATABASE_URL": "sqlite:////a b/omnijobs.db",
           "OMNIJOBS_API_KEY": "omk_x'y"}
    path = write_settings_file(tmp_path, env)
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # it holds the admin key
    assert read_settings_file(tmp_path) == env
    with pytest.raises(DevError, match="omnijobs dev --dir"):
        read_settings_file(tmp_path / "elsewhere")
