"""What the eye checks on every figure the pages draw, for a tiny run (one step), a short
run, and a run whose training set changed: no empty panel, every data point inside its
axes' limits, and every named line explained by a legend on its panel or the figure
(tests/eye.py)."""

import copy

import pytest
import torch
from conftest import stripes
from eye import eye_check

from convscope import plots
from convscope.callbacks import ActivationStats, GradientStats, HardExamples
from convscope.data import DataLoaders
from convscope.interpretation import Interpretation
from convscope.learner import Learner
from convscope.models import simple_cnn


def trained(n_train: int, epochs: int, hard: float | None = None) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(n_train, 64), bs=32, seed=0)
    cbs = [ActivationStats(every=1), GradientStats(every=1)]
    cbs += [HardExamples(hard)] if hard else []
    learn = Learner(dls, simple_cnn(n_classes=4), cbs=cbs, progress=False)
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


@pytest.fixture(scope="module")
def runs():
    return {"one step": trained(32, 1), "short": trained(256, 2),
            "set changed": trained(256, 3, hard=0.5)}


@pytest.mark.parametrize("name", ["one step", "short", "set changed"])
def test_every_figure_of_a_run_has_its_data_in_view(runs, name):
    learn = runs[name]
    rec, stats, grads = learn.recorder, learn.activation_stats, learn.gradient_stats
    figures = {"loss": plots.plot_loss(rec, skip_start=0), "sched": plots.plot_sched(rec),
               "dead chart": plots.dead_chart(stats),
               "gradients": plots.plot_gradient_stats(grads),
               "confusion": Interpretation.from_learner(learn).plot_confusion_matrix()}
    for i in range(len(stats.layer_names)):
        figures[f"layer stats {i}"] = plots.plot_layer_stats(stats, i)
        figures[f"color_dim {i}"] = plots.color_dim(stats, i, recorder=rec)
    for what, fig in figures.items():
        eye_check(fig, f"{name}, {what}")


@pytest.mark.parametrize("name", ["one step", "short", "set changed", "every 4th of 6"])
def test_color_dim_draws_each_batch_s_learning_rate_over_its_column(runs, name):
    """The learning rate spans the histogram: batch k's rate in the middle of batch k's slot
    of the columns, the last batch's too (not a batch short of the image's right edge), and
    the view ends with training, not with the interval the last record stands for."""
    if name == "every 4th of 6":  # records at batches 0 and 4 of 6
        torch.manual_seed(0)
        learn = Learner(DataLoaders.from_data(stripes(192, 64), bs=32, seed=0),
                        simple_cnn(n_classes=4), cbs=[ActivationStats(every=4)],
                        progress=False)
        learn.fit_one_cycle(1, 1e-2)
        assert learn.activation_stats.batches == [0, 4]
    else:
        learn = runs[name]
    fig = plots.color_dim(learn.activation_stats, 0, recorder=learn.recorder)
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    xs = next(a for a in fig.axes if a.lines).lines[0].get_xdata()
    n = len(learn.recorder.hps["lr"])
    assert len(xs) == n and right == pytest.approx(n if n > 1 else 0.5)
    assert ax.images[0].get_extent()[:2] == pytest.approx([left, 8 if n == 6 else right])
    assert xs[0] == pytest.approx(left + 0.5) and xs[-1] == pytest.approx(right - 0.5)


def test_every_comparison_figure_has_its_data_in_view(runs):
    learners = list(runs.values())
    names = list(runs)
    histories = [learn.recorder.history() for learn in learners]
    stats = [learn.activation_stats for learn in learners]
    eye_check(plots.compare_curves(histories, names), "compare curves")
    eye_check(plots.compare_dead(stats, names), "compare near zero")
    for layer in stats[0].layer_names:
        eye_check(plots.compare_color_dim(stats, names, layer), f"compare block {layer}")
    # runs of other models: a colour is another block in each panel, each panel says which
    other = copy.copy(stats[1])
    other.layer_names = [f"head.{name}" for name in other.layer_names]
    fig = plots.compare_dead([stats[0], other], names[:2])
    eye_check(fig, "compare near zero, other blocks")
    assert all(ax.get_legend() is not None for ax in fig.axes) and fig.legends == []
