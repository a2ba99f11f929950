"""bench/ab_kernels.py, the in-process A/B of a kernel module: an old commit's file loads
beside the current one, calls alternate, outputs are compared, and a net's steps put the
module's functions back however they end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ab_kernels", ROOT / "bench" / "ab_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ab_kernels"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("ab_kernels", None)


def test_small_difference_is_zero_only_for_the_same_bits(ab):
    a = np.array([1.0, -2.0, 4.0], np.float32)
    assert ab.difference((a, None, [a]), (a.copy(), None, [a.copy()])) == 0.0
    b = a.copy()
    b[2] = np.nextafter(b[2], np.float32(5))
    assert ab.difference(a, b) == pytest.approx(float(b[2] - a[2]) / 4.0)
    assert ab.difference(a, a[:2]) == float("inf")


def test_small_alternate_takes_turns_with_fresh_arguments(ab):
    order = []
    buf = np.zeros(2)

    def side(name):
        def call(arr):
            order.append(name)
            arr += 1  # writes over its argument: each call must get a fresh copy
            return arr.copy()
        return (lambda: (buf.copy(),)), call

    times, outs = ab.alternate({"old": side("old"), "new": side("new")}, 3)
    # one untimed call each, then three rounds, every other one in reverse
    assert order == ["old", "new", "old", "new", "new", "old", "old", "new"]
    assert [len(t) for t in times.values()] == [3, 3]
    assert np.array_equal(outs["old"], [1, 1]) and np.array_equal(outs["new"], [1, 1])


def test_small_an_old_file_gets_a_module_name_from_any_revision(ab, tmp_path, monkeypatch):
    monkeypatch.setattr(ab.subprocess, "run", lambda *a, **k: type("R", (), {"stdout": "X = 1\n"}))
    monkeypatch.setattr(ab, "import_module", lambda name: name)
    assert ab.load_old("norm", "v1.0-rc~2^", tmp_path) == "_ab_norm_v1_0_rc_2_"
    assert (tmp_path / "_ab_norm_v1_0_rc_2_.py").read_text() == "X = 1\n"
    sys.path.remove(str(tmp_path))


def test_the_old_file_loads_under_its_own_name(ab, tmp_path):
    from cnncli.engine.kernels import elementwise

    old = ab.load_old("elementwise", "HEAD", tmp_path)
    try:
        assert old is not elementwise and old.__name__ == "_ab_elementwise_HEAD"
        assert set(elementwise.__all__) <= set(dir(old))
        a = np.arange(-3, 3, dtype=np.float32)
        assert np.array_equal(old.add_relu(a, a), elementwise.add_relu(a, a))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("_ab_elementwise_HEAD", None)


def test_kernel_rows_of_a_module_against_itself(ab):
    from cnncli.engine.kernels import norm

    rows = ab.kernel_rows("norm", norm, norm, calls=1, only="forward")
    assert [r[1] for r in rows] == ["x".join(map(str, s)) for s in ab.ACT_SHAPES]
    for row in rows:
        assert row[0] == "batchnorm+relu forward" and row[-1] == "0.0e+00"
        assert all(float(cell.rstrip("x")) > 0 for cell in row[2:8])


def test_steps_put_the_current_functions_back(ab, monkeypatch):
    from cnncli.engine.kernels import elementwise

    # resnet20's step calls the global average pool (its adds and ReLUs are other
    # layers' passes now)
    before = elementwise.global_avg_pool_forward
    calls = []

    class Old:
        @staticmethod
        def global_avg_pool_forward(x):
            calls.append(1)
            return before(x)

    monkeypatch.setattr(elementwise, "__all__", ["global_avg_pool_forward"])
    rows = ab.step_rows(Old, elementwise, "resnet20", steps=1, conv_algo="auto")
    assert elementwise.global_avg_pool_forward is before
    assert calls  # the old side's steps went through the old function
    assert rows[0][0] == "resnet20 training step (auto)" and rows[0][4].endswith("x")
