"""The driver-side parts of the cluster preflight (the per-node checks run on the real two-node cluster in
test_multinode.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltray.cluster.preflight import (NodeInfo, PathNeed, PreflightError, check_worker_fits, data_paths,
                                     is_local_store, node_report)
from ltray.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_data_paths_lists_every_named_path_once():
    cfg = load_config(ROOT / "ltray" / "configs" / "embedded_simclr.yaml",
                      {"data.splits_dir": "/data/splits", "data.extra_data": "/data/extra",
                       "method.name": "colt", "method.colt.pool": "random300k", "method.colt.pool_path": "/p.npy"})
    plain = load_config(ROOT / "ltray" / "configs" / "embedded_simclr.yaml", {"data.splits_dir": "/data/splits"})
    assert data_paths([cfg, plain]) == [PathNeed("data.splits_dir", "/data/splits"),
                                        PathNeed("data.extra_data", "/data/extra"),
                                        PathNeed("method.colt.pool_path", "/p.npy")]


def test_embedded_pools_name_no_path():
    cfg = load_config(ROOT / "ltray" / "configs" / "embedded_simclr.yaml", {"method.name": "colt"})
    assert data_paths([cfg]) == []


def test_local_stores():
    assert is_local_store("sqlite:////tmp/mlflow.db")
    assert not is_local_store("http://10.0.0.1:5000")
    assert not is_local_store("postgresql://db:5432/mlflow")


def test_a_worker_must_fit_one_node():
    nodes = [NodeInfo("a", "10.0.0.1", {"CPU": 1.0}), NodeInfo("b", "10.0.0.2", {"CPU": 1.0})]
    check_worker_fits(nodes, 1.0, 0.0)
    with pytest.raises(PreflightError, match=r"needs 2 CPUs and 0 GPUs on one node.*10\.0\.0\.\d.*has 1 CPUs"):
        check_worker_fits(nodes, 2.0, 0.0)
    with pytest.raises(PreflightError, match="1 GPUs"):
        check_worker_fits(nodes, 1.0, 1.0)


def test_node_report_on_shared_and_unshared_storage(tmp_path):
    (tmp_path / ".ltray-preflight-x").write_text("secret")
    assert node_report(".ltray-preflight-x", "secret", str(tmp_path), "sqlite:////tmp/x.db", []) == []
    assert list(tmp_path.iterdir()) == [tmp_path / ".ltray-preflight-x"]  # the write probe is gone
    unshared = node_report(".ltray-preflight-x", "other", str(tmp_path), "sqlite:////tmp/x.db", [])
    assert len(unshared) == 1 and "is not shared" in unshared[0]
    missing = node_report(".ltray-preflight-x", "secret", str(tmp_path / "nope"), "sqlite:////tmp/x.db",
                          [PathNeed("data.root", str(tmp_path / "data"))])
    assert "does not exist there" in missing[0] and missing[1] == f"data.root {tmp_path / 'data'} does not exist there"

