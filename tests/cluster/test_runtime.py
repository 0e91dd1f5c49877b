"""Ray connection settings that need no running Ray: token authentication for joining clients, Train defaults."""

from __future__ import annotations

import os

from ltray.ray_runtime import use_fast_train_reports, use_token_auth_when_available


def test_token_mode_is_turned_on_only_when_a_token_exists_and_no_mode_was_chosen(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    use_token_auth_when_available()
    assert "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("secret")
    use_token_auth_when_available()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    use_token_auth_when_available()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_train_defaults_keep_user_choices(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    use_fast_train_reports()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
