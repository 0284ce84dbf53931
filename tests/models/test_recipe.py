"""The default recipe's data-aware choices: steps per recurrent step from the series' length."""

from rnnserve.models.data import synthetic_splits
from rnnserve.models.recipe import TARGET_RECURRENT_STEPS, default_recipe


def test_long_series_are_read_several_steps_per_recurrent_step():
    splits = synthetic_splits(n=120, seed=0, min_len=380, max_len=420)
    recipe = default_recipe(splits)
    assert recipe.config.frame == round(400 / TARGET_RECURRENT_STEPS) == 6
    assert "steps per recurrent step" in recipe.reasons["frame"]
    # the schedule, the per-step loss and the chrono horizon follow the recurrent steps
    assert recipe.config.target_replication == 0.5  # ~67 recurrent steps > 50
    assert "(70 recurrent steps)" in recipe.reasons["init"]  # the longest, 420 steps, in frames of 6


def test_short_series_keep_one_step_per_recurrent_step_and_the_user_wins():
    short = synthetic_splits(n=120, seed=0, min_len=10, max_len=40)
    assert default_recipe(short).config.frame == 1
    long = synthetic_splits(n=120, seed=0, min_len=380, max_len=420)
    recipe = default_recipe(long, {"frame": 1})
    assert recipe.config.frame == 1 and recipe.reasons["frame"] == "given explicitly"


def test_few_short_series_get_the_per_step_loss_many_do_not():
    few = synthetic_splits(n=28, seed=0, min_len=10, max_len=30)
    recipe = default_recipe(few)
    assert recipe.config.target_replication == 0.5 and "training series" in recipe.reasons["target_replication"]
    many = synthetic_splits(n=400, seed=0, min_len=10, max_len=30)
    assert default_recipe(many).config.target_replication == 0.0


def test_small_sets_of_long_series_average_several_refits():
    def recipe(n, lo, hi):
        return default_recipe(synthetic_splits(n=n, seed=0, min_len=lo, max_len=hi))

    tiny = recipe(40, 40, 60)  # 34 train+val series of ~50 steps
    assert tiny.config.ensemble == 5 and "refits from different seeds" in tiny.reasons["ensemble"]
    assert recipe(60, 40, 60).config.ensemble == 1  # 51 series > 50
    assert recipe(600, 40, 60).config.ensemble == 1
    short = recipe(40, 10, 30)  # ~20 steps: the seeds agree
    assert short.config.ensemble == 1 and "seeds agree" in short.reasons["ensemble"]
