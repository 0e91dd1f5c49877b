"""The `ltray` command line: help texts, and bad inputs giving one-line errors, exit 2 and no overwritten files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltray.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]
CIFAR10_LABELS = REPO.parent / "shared" / "reference_splits" / "cifar_labels" / "cifar10_train_labels.npy"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == EXIT_USER_ERROR
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ltray: error: ")
    assert fragment in lines[0]


@pytest.mark.parametrize(
    "command",
    [["--help"], ["pretrain", "--help"], ["eval", "--help"], ["splits", "make", "--help"], ["report", "--help"],
     ["pool", "import", "--help"], ["mak", "sample", "--help"]],
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 0
    assert "usage: ltray" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("method.name=simclr+nope", "unknown method part 'nope'"),
        ("data.dataset=mnist", "data.dataset must be one of"),
        ("method.temperature=0", "method.temperature must be > 0"),
        ("optim.batch_size=1", "optim.batch_size must be >= 2"),
        ("method.sdclr.prune_ratio=1.5", "prune_ratio must be in [0, 1]"),
        ("optim.nope=3", "unknown config key 'optim.nope'"),
    ],
)
def test_invalid_config_values_stop_before_anything_runs(
    override: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "pretrain", "--set", override, "--set", f"run.output_dir={tmp_path}")
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "pretrain", "--config", str(tmp_path / "absent.yaml"))
    assert_one_line_error(code, err, "config file not found")


def test_missing_and_corrupt_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = ["--set", "data.dataset=digits-lt"]
    code, _, err = run_cli(capsys, "eval", *config, "--checkpoint", str(tmp_path / "absent.pt"))
    assert_one_line_error(code, err, "checkpoint not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    code, _, err = run_cli(capsys, "eval", *config, "--checkpoint", str(corrupt))
    assert_one_line_error(code, err, "cannot read checkpoint")
    assert corrupt.read_bytes() == b"not a torch file at all"


def test_cifar_without_a_local_copy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys, "pretrain", "--set", "data.dataset=cifar10", "--set", f"data.root={tmp_path / 'nowhere'}",
        "--set", f"run.output_dir={tmp_path / 'runs'}",
    )
    assert_one_line_error(code, err, "nowhere")


def test_splits_make_refuses_to_overwrite_and_rejects_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if not CIFAR10_LABELS.is_file():
        pytest.skip("../shared/reference_splits is not present")
    out = tmp_path / "c10"
    code, printed, _ = run_cli(capsys, "splits", "make", "--dataset", "cifar10", "--labels", str(CIFAR10_LABELS),
                               "--out", str(out), "--splits", "1")
    assert code == 0 and "cifar10_split1.json" in printed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "splits", "make", "--dataset", "cifar10", "--labels", str(CIFAR10_LABELS),
                           "--out", str(out), "--splits", "1", "--seed", "7")
    assert_one_line_error(code, err, "refusing to overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, _, err = run_cli(capsys, "splits", "make", "--dataset", "cifar10", "--labels", str(CIFAR10_LABELS),
                           "--out", str(tmp_path / "other"), "--imbalance", "0.5")
    assert_one_line_error(code, err, "--imbalance must be >= 1")


def test_shipped_split_with_a_corrupted_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    copy = tmp_path / "digits-lt"
    shutil.copytree(REPO / "ltray" / "splits" / "digits-lt", copy)
    target = copy / "digits-lt_split1_D_i.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "pretrain", "--set", "data.dataset=digits-lt", "--set", f"data.splits_dir={copy}",
                           "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_one_line_error(code, err, "sha256")


def test_labels_file_with_wrong_contents(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(10, dtype=np.float32))
    code, _, err = run_cli(capsys, "splits", "make", "--dataset", "cifar10", "--labels", str(labels),
                           "--out", str(tmp_path / "out"))
    assert code == EXIT_USER_ERROR and err.startswith("ltray: error: ")


def test_console_script_exit_code() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ltray.cli", "pretrain", "--set", "method.temperature=-1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip() == "ltray: error: method.temperature must be > 0, got -1.0"


def test_splits_make_for_a_new_data_set_checks_its_labels_and_asks_for_the_hold_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "new"
    base = ["splits", "make", "--dataset", "mine", "--out", str(out), "--n-max", "100", "--splits", "1"]
    code, _, err = run_cli(capsys, *base, "--labels", str(tmp_path / "missing.npy"))
    assert_one_line_error(code, err, "label file not found")
    (tmp_path / "empty.npy").write_bytes(b"")
    code, _, err = run_cli(capsys, *base, "--labels", str(tmp_path / "empty.npy"))
    assert_one_line_error(code, err, "not a readable .npy array")
    np.save(tmp_path / "none.npy", np.zeros(0, dtype=np.int64))
    code, _, err = run_cli(capsys, *base, "--labels", str(tmp_path / "none.npy"))
    assert_one_line_error(code, err, "no labels")
    labels = tmp_path / "labels.npy"
    np.save(labels, np.repeat(np.arange(3, dtype=np.int64), 130))
    code, _, err = run_cli(capsys, *base, "--labels", str(labels))
    assert_one_line_error(code, err, "--val-per-class is required for mine")
    assert not out.exists()
    code, printed, _ = run_cli(capsys, *base, "--labels", str(labels), "--val-per-class", "5")
    assert code == 0 and "mine_split1.json" in printed
    code, printed, _ = run_cli(capsys, "splits", "show", str(out), "--dataset", "mine", "--split", "1")
    assert code == 0 and "val:" in printed and "counts [5, 5, 5]" in printed


def test_eval_never_writes_over_its_checkpoint_or_an_existing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"the checkpoint's bytes")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config = ["--set", "data.dataset=digits-lt"]
    for target in (checkpoint, notes):
        code, _, err = run_cli(capsys, "eval", *config, "--checkpoint", str(checkpoint), "--out", str(target))
        assert_one_line_error(code, err, f"--out {target} already exists")
    assert checkpoint.read_bytes() == b"the checkpoint's bytes" and notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "notes.txt"]


def test_default_report_names_never_collide(tmp_path: Path) -> None:
    from ltray.evaluate import report_targets, write_new_file

    checkpoint = tmp_path / "epoch_0002.pt"
    first = write_new_file(report_targets(checkpoint, None, "sdclr_sgd"), "first")
    second = write_new_file(report_targets(checkpoint, None, "sdclr_sgd"), "second")
    third = write_new_file(report_targets(checkpoint, None, "sdclr_sgd"), "third")
    assert [first.name, second.name, third.name] == [
        "epoch_0002_eval.json", "epoch_0002_eval_sdclr_sgd.json", "epoch_0002_eval_sdclr_sgd_2.json"]
    assert [first.read_text(), second.read_text(), third.read_text()] == ["first", "second", "third"]


def test_a_gh_warm_up_as_long_as_the_run_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "pretrain", "--set", "data.dataset=digits-lt", "--set", "method.name=sdclr+gh",
                           "--set", "method.gh.warmup=10", "--set", "optim.epochs=2",
                           "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_one_line_error(code, err, "method.gh.warmup=10 leaves GH off for the whole run")
    assert "optim.epochs=2" in err
    code, _, err = run_cli(capsys, "pretrain", "--set", "method.name=colt", "--set", "method.colt.warmup=5",
                           "--set", "optim.epochs=5", "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_one_line_error(code, err, "method.colt.warmup=5 leaves COLT off for the whole run")
    assert list(tmp_path.iterdir()) == []


def test_pretrain_of_mak_without_a_selection_names_the_commands_that_run_it(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "pretrain", "--set", "data.dataset=digits-lt", "--set", "method.name=mak",
                           "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_one_line_error(code, err, "method mak is a pipeline")
    assert "ltray mak sample" in err and "--extra-data" in err
    assert list(tmp_path.iterdir()) == []


def test_every_shipped_config_keeps_the_methods_it_names_active() -> None:
    from ltray.config import load_config

    for name in ("simclr", "sdclr+gh", "gh", "colt", "focal+gh", "bcl+gh"):
        load_config(REPO / "ltray" / "configs" / "embedded_simclr.yaml", {"method.name": name})


def test_an_empty_config_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing here\n")
    code, _, err = run_cli(capsys, "pretrain", "--config", str(empty), "--set", f"run.output_dir={tmp_path / 'runs'}")
    assert_one_line_error(code, err, "is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def test_a_random_bytes_checkpoint_never_suggests_unsafe_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for published in ([], ["--published"]):
        code, _, err = run_cli(capsys, "eval", "--set", "data.dataset=digits-lt", "--checkpoint", str(random_bytes),
                               *published)
        assert_one_line_error(code, err, "cannot read checkpoint")
        assert "weights_only" not in err and "trust" not in err and "arbitrary code" not in err


def test_a_failed_pool_import_leaves_no_folder_behind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    listing = tmp_path / "pool.txt"
    listing.write_text("missing/a.png 0\nmissing/b.png 1\n")
    code, _, err = run_cli(capsys, "pool", "import", str(listing), "--kind", "list", "--root", str(images),
                           "--size", "16", "--out", str(tmp_path / "pools" / "mine"))
    assert_one_line_error(code, err, "a.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "pool.txt"]
