import math

import pytest
import torch
from conftest import stripes
from torch import nn

from convscope.callbacks.activation_stats import ActivationStats, conv_blocks
from convscope.data import DataLoaders
from convscope.learner import Callback, CancelFitException, Learner
from convscope.models import simple_cnn


def learner(cbs, bs=32, bn=True, data=None) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(data or stripes(128, 64), bs=bs)
    return Learner(dls, simple_cnn(n_classes=4, bn=bn), cbs=cbs, progress=False)


class Capture(Callback):
    """Keeps every training output of one module, to compute the exact statistics."""

    def __init__(self, module):
        self.module, self.outputs = module, []

    def before_fit(self):
        def hook(m, i, o):
            if self.learn.training:
                self.outputs.append(o.detach().clone())

        self.handle = self.module.register_forward_hook(hook)

    def after_fit(self):
        self.handle.remove()


def test_default_hooks_are_the_conv_blocks():
    names = [n for n, _ in conv_blocks(simple_cnn())]
    assert names == ["0", "1", "2", "3", "4"]
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU())
    assert [n for n, _ in conv_blocks(plain)] == ["1", "3"]


def test_exact_stats_match_a_direct_computation():
    stats = ActivationStats(sample=None, zero_thresh=0.1, bins=20, hist_max=5.0)
    learn = learner([stats])
    cap = Capture(learn.model[1])
    learn.add_cb(cap)
    learn.fit(2)
    assert stats.layer_names == ["0", "1", "2", "3", "4"]
    assert stats.batches == list(range(8)) and len(cap.outputs) == 8  # valid not recorded
    for row, out in enumerate(cap.outputs):
        x = out.float().flatten()
        mean, std, near = stats.stats[1][row].tolist()
        assert mean == pytest.approx(x.mean().item(), rel=1e-4, abs=1e-6)
        assert std == pytest.approx(x.std(correction=0).item(), rel=1e-4, abs=1e-6)
        assert near == pytest.approx((x.abs() <= 0.1).float().mean().item())
        ref = torch.histc(x.clamp(0, 5.0 - 1e-6), 20, 0, 5.0)
        torch.testing.assert_close(stats.hists[1][row], ref)
    assert stats.ranges[1] == (0.0, 5.0)  # after a ReLU
    assert stats.ranges[4] == (-5.0, 5.0)  # the logits are signed


def test_sampled_stats_are_close_to_exact():
    exact, sampled = ActivationStats(sample=None), ActivationStats(sample=2048)
    for s in (exact, sampled):
        learner([s], bs=64, data=stripes(256, 32)).fit(1)
    for i in range(5):
        diff = (exact.stats[i] - sampled.stats[i]).abs()
        assert diff[:, 2].max() < 0.05  # near-zero share within 5 points
        scale = exact.stats[i][:, 1].mean()
        assert diff[:, 0].max() < 0.1 * scale + 1e-3


@pytest.mark.parametrize("shape", [(64, 8, 14, 14), (64, 64, 2, 2), (16, 10, 1, 1)])
def test_the_sample_gives_every_value_the_same_chance(shape):
    """Positions (a tensor's values are its flat indices) over many batches: each is drawn
    equally often, distinct within a sample, and every channel as often as another, also when
    the stride would otherwise divide the channels (64 x 2 x 2) or the layer is smaller than
    the sample (16 x 10)."""
    stats = ActivationStats(sample=512)
    stats._gen = torch.Generator().manual_seed(0)
    x = torch.arange(math.prod(shape), dtype=torch.float32).view(shape)
    x = x.contiguous(memory_format=torch.channels_last)  # flat order: channel fastest
    flat = x.permute(0, 2, 3, 1).reshape(-1)
    size, draws = flat.numel(), 400
    row = torch.empty(512)
    counts = torch.zeros(size)
    for _ in range(draws):
        stats._sample_into(row, flat, shape[0])
        pos = row.long()
        if size >= 512:
            assert pos.unique().numel() == 512
        counts += torch.bincount(pos, minlength=size)
    expected = draws * 512 / size
    if size < 512:
        assert counts.min() >= draws * (512 // size)
    # each position is drawn Binomial(draws, p) times (over 512 // size each time when the
    # layer is smaller): within 5 standard deviations
    p = (512 % size) / size if size < 512 else 512 / size
    sd = math.sqrt(draws * p * (1 - p))
    assert (counts - expected).abs().max() <= 5 * sd + 1
    channel = torch.bincount(flat.long() % shape[1], weights=counts)
    assert (channel / channel.mean() - 1).abs().max() < 0.05


def test_histograms_drop_nothing():
    """Values beyond the range land in the end bins: every sampled value is counted."""

    class Wide(nn.Module):
        def forward(self, x):
            return torch.cat([x * 1000, -x * 1000, x], dim=1)

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Wide(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4))
    torch.manual_seed(0)
    stats = ActivationStats(modules=[model[1]], sample=None)
    Learner(DataLoaders.from_data(stripes(64, 32), bs=32), model, cbs=[stats],
            progress=False).fit(1)
    assert stats.ranges[0] == (-10.0, 10.0)
    per_batch = stats.hists[0].sum(dim=1)
    assert per_batch.tolist() == [32 * 6 * 16 * 16] * 2
    assert stats.hists[0][:, 0].sum() > 0 and stats.hists[0][:, -1].sum() > 0


def test_every_n_and_memory_is_bounded():
    stats = ActivationStats(every=3)
    learn = learner([stats], bs=16)  # 8 batches per epoch
    learn.fit(2)
    assert stats.batches == [0, 3, 6, 9, 12, 15]
    assert stats._stats.shape == (5, math.ceil(16 / 3), 3)  # preallocated, never grows
    assert stats.hists[0].shape == (6, 40)


@pytest.mark.parametrize("stop", [None, CancelFitException, RuntimeError])
def test_hooks_removed_after_fit_cancel_and_error(stop):
    class Stop(Callback):
        def after_step(self):
            if stop:
                raise stop("stop")

    stats = ActivationStats()
    learn = learner([stats, Stop()])
    if stop is RuntimeError:
        with pytest.raises(RuntimeError):
            learn.fit(1)
    else:
        learn.fit(1)
    assert sum(len(m._forward_hooks) for m in learn.model.modules()) == 0
    assert len(stats.batches) == (4 if stop is None else 1)
    assert stats.stats[0].shape[0] == len(stats.batches)


def test_recording_does_not_change_training():
    """Its sampling has its own generator: the same seed trains to the same weights."""
    plain, watched = learner([]), learner([ActivationStats()])
    plain.fit(1)
    watched.fit(1)
    for a, b in zip(plain.model.parameters(), watched.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_filter_and_modules_options():
    stats = ActivationStats(filter=lambda name, m: isinstance(m, nn.Conv2d))
    learner([stats]).fit(1)
    assert stats.layer_names == ["0.0", "1.0", "2.0", "3.0", "4.0"]
    with pytest.raises(ValueError, match="filter chose no module"):
        learner([ActivationStats(filter=lambda n, m: False)]).fit(1)
    with pytest.raises(ValueError, match="not part of the model"):
        learner([ActivationStats(modules=[nn.ReLU()])]).fit(1)
    with pytest.raises(ValueError, match=r"Received: every=0"):
        ActivationStats(every=0)


def test_reading_by_index_and_name():
    stats = ActivationStats()
    learn = learner([stats])
    learn.fit(1)
    assert learn.activation_stats is stats
    assert torch.equal(stats.means(-1), stats.means("4"))
    with pytest.raises(ValueError, match=r"No recorded layer 'x'. Recorded: \['0'"):
        stats.stds("x")
    with pytest.raises(ValueError, match="5 layers were recorded"):
        stats.near_zero(7)


def test_save_and_load_roundtrip(tmp_path):
    stats = ActivationStats(every=2)
    learner([stats]).fit(1)
    stats.save(tmp_path / "s.safetensors")
    back = ActivationStats.load(tmp_path / "s.safetensors")
    assert back.layer_names == stats.layer_names and back.batches == stats.batches
    assert back.ranges == stats.ranges and back.every == 2
    for a, b in zip(stats.stats + stats.hists, back.stats + back.hists, strict=True):
        assert torch.equal(a, b)
    (tmp_path / "junk").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ValueError, match="junk: cannot be read as an ActivationStats file"):
        ActivationStats.load(tmp_path / "junk")


def test_plots_return_figures_and_write_pngs(tmp_path):
    stats = ActivationStats()
    learn = learner([stats])
    learn.fit_one_cycle(2, 1e-2)
    for name, fig in (("l.png", stats.plot_layer_stats(0, save=tmp_path / "l.png")),
                      ("c.png", stats.color_dim("1", save=tmp_path / "c.png")),
                      ("d.png", stats.dead_chart(save=tmp_path / "d.png"))):
        assert fig.axes and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # color_dim draws the lr schedule on a second axis along the same batches
    lr_line = stats.color_dim(0).axes[-1].lines[0]
    assert len(lr_line.get_xdata()) == len(learn.recorder.hps["lr"])


def test_the_recipe_records_one_batch_per_512_images():
    from convscope.config import TrainConfig
    from convscope.run import make_learner

    for bs, every in ((64, 8), (128, 4), (256, 2), (300, 1), (512, 1), (1024, 1)):
        learn = make_learner(stripes(512, 32), TrainConfig(recipe="fast", bs=bs),
                             progress=False)
        assert learn.activation_stats.every == every == learn.gradient_stats.every
    learn = make_learner(stripes(512, 32), TrainConfig(recipe="fast", bs=128, hard=0.4),
                         progress=False)
    learn.fit_one_cycle(2, 0.01)  # 4 batches, then 2 (the hardest 40%): train_iter 0 and 4
    assert learn.activation_stats.batches == [0, 4] == learn.gradient_stats.batches
