"""RunTimer: Lightning's Timer plus how much of a resumed run its clock covers."""

from __future__ import annotations

from stm3_lightning.callbacks.run_timer import RunTimer


def test_a_fresh_timer_covers_the_whole_run_and_keeps_it_across_a_resume() -> None:
    first = RunTimer()
    assert first.coverage() == "full"
    state = first.state_dict()
    resumed = RunTimer()
    resumed.on_load_checkpoint(None, None, {"global_step": 300, "callbacks": {"Timer": state}})  # type: ignore[arg-type]
    resumed.load_state_dict(state)
    assert resumed.coverage() == "full" and resumed.state_key == "Timer"


def test_a_checkpoint_without_timer_state_starts_the_clock_at_its_step() -> None:
    timer = RunTimer()
    timer.on_load_checkpoint(None, None, {"global_step": 1002, "callbacks": {"RngState": {}}})  # type: ignore[arg-type]
    assert timer.coverage() == "from step 1002"
    again = RunTimer()  # the partial coverage survives the next resume
    again.load_state_dict(timer.state_dict())
    assert again.coverage() == "from step 1002"


def test_an_old_timer_state_has_unknown_coverage() -> None:
    old = {
        "time_elapsed": {"train": 180.0, "sanity_check": 0.0, "validate": 0.0, "test": 0.0, "predict": 0.0}
    }
    timer = RunTimer()
    timer.load_state_dict(old)
    assert timer.coverage() == "unknown" and timer.time_elapsed("train") == 180.0
