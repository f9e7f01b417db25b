"""``livepsf bench``: timing helpers, the mapping suite on a small frame, and the table."""

from __future__ import annotations

import numpy as np
import pytest

from livepsf.errors import InputError
from livepsf.throughput import SUITES, BenchRow, machine_description, mapping_suite, run_suites, time_calls


def test_time_calls_counts_runs_after_warmup():
    calls = []
    wall, cpu = time_calls(lambda: sum(range(20000)) and calls.append(1), runs=4, warmup=3)
    assert len(calls) == 7 and wall.shape == cpu.shape == (4,)
    assert (wall > 0).all() and (cpu >= 0).all()


def test_mapping_suite_compares_the_reference_with_the_fast_model_on_the_same_windows():
    # A small ResNet stands in for ResNet-34 (seconds per frame): the plumbing is the same.
    rows = mapping_suite(sizes=(256,), quick=True, reference="resnet34-tiny")
    cpu = [r for r in rows if r.device == "cpu"]
    assert [r.subject for r in cpu][1] == "resnet34-tiny"
    fast, reference = cpu
    assert "3x3 windows" in fast.task and fast.size == "256x256 uint16"
    assert fast.relative is None and reference.relative == pytest.approx(reference.median_ms / fast.median_ms)
    assert all(r.p95_ms >= r.median_ms > 0 and r.cpu_median_ms >= 0 for r in cpu)


def test_bench_command_prints_a_row_per_measurement(monkeypatch, capsys):
    from livepsf.cli import main

    fake = [BenchRow("PSF map", "fast", "1024x1024 uint16", "cpu", 5.0, 6.0, 30),
            BenchRow("PSF map", "ResNet-34", "1024x1024 uint16", "cpu", 500.0, 510.0, 3, relative=100.0,
                     cpu_median_ms=987.0)]
    monkeypatch.setitem(SUITES, "mapping", lambda quick=False: fake)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--suite", "mapping"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "ResNet-34" in out and "100.0×" in out and "500.0" in out and "987.0" in out
    assert "threads" in out                                   # the machine line names the thread count


def test_unknown_suite_is_bad_input():
    with pytest.raises(InputError, match="unknown benchmark suite"):
        run_suites(["nope"])


def test_machine_description_names_cores_and_threads():
    line = machine_description(2)
    assert "cores" in line and "2 threads" in line
    assert np.char.count(line, "torch") == 1
