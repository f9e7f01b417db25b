"""ThreadTuner: the live mapping keeps the torch thread count that is fastest under the current load."""

import threading

import pytest
import torch

from livepsf.acquisition.thread_tuner import ThreadTuner


class FakeWork:
    """A call whose duration depends on the torch thread count it runs with (a fake clock)."""

    def __init__(self, seconds_per_threads: dict[int, float]) -> None:
        self.seconds = dict(seconds_per_threads)
        self.now = 0.0
        self.threads_seen: list[int] = []

    def clock(self) -> float:
        return self.now

    def __call__(self) -> str:
        threads = torch.get_num_threads()
        self.threads_seen.append(threads)
        self.now += self.seconds[threads]
        return "mapped"


def run_in_thread(fn):
    """Run ``fn`` in a fresh thread (its torch thread count is its own) and return its result."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("value", fn()))
    worker.start()
    worker.join()
    return out["value"]


def test_switches_to_one_thread_when_two_wait_on_a_busy_core_and_back_when_it_frees():
    def scenario():
        work = FakeWork({2: 0.075, 1: 0.023})  # one core busy: the measured 75 ms vs 23 ms
        tuner = ThreadTuner([2, 1], trial_frames=4, explore_every=20, clock=work.clock)
        results = [tuner.run(work) for _ in range(8)]
        chose_one = tuner.current
        work.seconds = {2: 0.013, 1: 0.021}  # the other process ends: 2 threads win again
        for _ in range(40):
            tuner.run(work)
        return results, work.threads_seen, chose_one, tuner.current, tuner.switches

    results, seen, chose_one, final, switches = run_in_thread(scenario)
    assert results == ["mapped"] * 8
    assert seen[:8] == [2, 2, 2, 2, 1, 1, 1, 1]  # measured as it starts, then the other count tried
    assert chose_one == 1
    assert final == 2 and switches == 2
    # Between trials the chosen count runs: after the switch back, no more than one trial of 1 thread.
    assert seen[-10:].count(1) <= 4


def test_keeps_the_current_count_when_the_other_is_not_clearly_faster():
    def scenario():
        work = FakeWork({2: 0.020, 1: 0.019})  # 5 % faster: inside the margin
        tuner = ThreadTuner([2, 1], trial_frames=4, explore_every=10, margin=0.85, clock=work.clock)
        for _ in range(60):
            tuner.run(work)
        return tuner, work.threads_seen

    tuner, seen = run_in_thread(scenario)
    assert tuner.current == 2 and tuner.switches == 0
    # Exploring is bounded: 4 trial calls per round of 10 between rounds.
    assert seen.count(1) <= 4 * (60 // 10)
    assert tuner.median_ms(2) == pytest.approx(20.0)


def test_setting_threads_in_the_mapping_thread_leaves_other_threads_alone():
    before = torch.get_num_threads()
    run_in_thread(lambda: ThreadTuner([1]).run(lambda: None))
    assert torch.get_num_threads() == before


def test_a_single_candidate_never_explores_and_failed_calls_are_not_timed():
    def scenario():
        work = FakeWork({1: 0.01})
        tuner = ThreadTuner([1, 1], trial_frames=2, explore_every=2, clock=work.clock)
        for _ in range(10):
            tuner.run(work)
        with pytest.raises(RuntimeError, match="camera"):
            tuner.run(lambda: (_ for _ in ()).throw(RuntimeError("camera gone")))
        return tuner, work.threads_seen

    tuner, seen = run_in_thread(scenario)
    assert tuner.candidates == (1,)
    assert set(seen) == {1}
    assert tuner.median_ms(1) == pytest.approx(10.0)


@pytest.mark.parametrize("kwargs", [{"candidates": [0]}, {"candidates": []}, {"trial_frames": 0},
                                    {"margin": 1.5}])
def test_bad_settings_are_refused(kwargs):
    candidates = kwargs.pop("candidates", [2, 1])
    with pytest.raises(ValueError):
        ThreadTuner(candidates, **kwargs)


@pytest.mark.parametrize(("seconds", "best"), [({2: 0.075, 1: 0.023}, 1),   # one core busy
                                               ({2: 0.013, 1: 0.021}, 2)])  # idle: two threads win
def test_a_batch_decides_after_its_first_frames_and_restores_the_thread_count(seconds, best):
    from livepsf.acquisition.thread_tuner import BATCH_TRIAL_FRAMES, batch_threads

    def scenario():
        torch.set_num_threads(2)
        work = FakeWork(seconds)
        with batch_threads(clock=work.clock) as tuner:
            for _ in range(10):
                tuner.run(work)
            chosen = tuner.current
        return chosen, work.threads_seen, torch.get_num_threads()

    chosen, seen, after = run_in_thread(scenario)
    n = BATCH_TRIAL_FRAMES
    assert seen[:2 * n] == [1] * n + [2] * n  # the safe count first, then torch's
    assert chosen == best and seen[2 * n:] == [best] * (10 - 2 * n)
    assert after == 2  # the caller's count is back


def test_a_batch_with_a_fixed_thread_count_runs_every_frame_with_it():
    from livepsf.acquisition.thread_tuner import batch_threads

    def scenario():
        work = FakeWork({3: 0.05, 1: 0.01})
        with batch_threads(3, clock=work.clock) as tuner:
            for _ in range(10):
                tuner.run(work)
        return work.threads_seen

    assert run_in_thread(scenario) == [3] * 10
    with pytest.raises(ValueError, match="positive"), batch_threads(0):
        raise AssertionError("a batch with 0 threads must not start")
