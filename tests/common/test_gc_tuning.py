import gc

from services.common.gc_tuning import YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        survivor = [[i] for i in range(1000)]  # start-up state that must stay out of later scans
        tune_gc()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() >= len(survivor)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
