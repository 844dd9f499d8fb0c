"""HardExamples: which images the epochs after the first draw, the schedule over the shorter
epochs, and a resume in the middle of one."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import StopAt, stripes

from convscope.callbacks import CheckpointCallback, HardExamples
from convscope.checkpoint import read_checkpoint
from convscope.data import DataLoaders
from convscope.errors import UsageError
from convscope.learner import Callback, Learner
from convscope.models import simple_cnn


def learner(cbs=(), n_train=192) -> Learner:
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(n_train, 64), bs=32, seed=0)
    return Learner(dls, simple_cnn(n_classes=4), cbs=list(cbs), progress=False)


class Spy(Callback):
    """Keeps every training batch's images (as fed, so an image is known by its pixels, not
    by any index the loader gives) and each image's cross-entropy then."""

    order = 60

    def before_fit(self):
        self.seen = []  # (epoch, image bytes, loss)

    def after_loss(self):
        learn = self.learn
        if learn.training:
            loss = F.cross_entropy(learn.pred.detach(), learn.yb, reduction="none")
            for x, value in zip(learn.xb, loss, strict=True):
                self.seen.append((learn.epoch, x.contiguous().numpy().tobytes(), float(value)))


def test_later_epochs_draw_the_images_with_the_highest_last_loss():
    spy = Spy()
    learn = learner([HardExamples(0.25), spy])
    learn.fit_one_cycle(3, 1e-2)
    k = math.ceil(0.25 * 192)
    last: dict[bytes, float] = {}
    for epoch in range(3):
        drawn = [img for e, img, _ in spy.seen if e == epoch]
        assert len(drawn) == len(set(drawn)) == (192 if epoch == 0 else k)  # each once
        if epoch:
            hardest = sorted(last, key=last.get, reverse=True)[:k]
            assert set(drawn) == set(hardest)
        last.update({img: loss for e, img, loss in spy.seen if e == epoch})
    assert learn.dls.train.indices is None and len(learn.dls.train) == 6  # as it was


def test_the_schedule_spans_the_shorter_epochs():
    learn = learner([HardExamples(0.25)])
    learn.fit_one_cycle(3, 1e-2, div_final=1e4)
    batches = 6 + 2 * 2  # 192 images, then 48 twice, in batches of 32
    assert learn.total_iters == batches and len(learn.recorder.losses) == batches
    assert learn.recorder.epoch_ends == [6, 8, 10]
    lrs = [g[0] for g in learn.recorder.hps["lr"]]
    assert lrs[-1] == pytest.approx(1e-2 / 1e4) and max(lrs) == pytest.approx(1e-2, rel=0.05)


def test_the_whole_set_changes_nothing():
    plain, hard = learner(), learner([HardExamples(1.0)])
    for learn in (plain, hard):
        learn.fit_one_cycle(2, 1e-2)
    for a, b in zip(plain.model.state_dict().values(), hard.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_resume_in_a_short_epoch_equals_uninterrupted(tmp_path):
    ref = learner([HardExamples(0.4), CheckpointCallback(tmp_path / "ref.safetensors",
                                                         every_batches=2)])
    ref.fit_one_cycle(3, 1e-2)

    ck = tmp_path / "c.safetensors"  # stopped after batch 2; the checkpoint is after batch 1
    learner([HardExamples(0.4), CheckpointCallback(ck, every_batches=2),
             StopAt(2, 2)]).fit_one_cycle(3, 1e-2)
    # 6 batches, then ceil(0.4 * 192) = 77 images: 3 batches
    assert read_checkpoint(ck)[1]["position"] == {"epoch": 2, "batch": 2, "train_iter": 11,
                                                  "n_epoch": 3}
    resumed = learner([HardExamples(0.4), CheckpointCallback(ck, every_batches=2)])
    resumed.fit_one_cycle(3, 1e-2, resume=ck)
    for a, b in zip(ref.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert resumed.recorder.losses == ref.recorder.losses
    assert torch.equal(resumed.hard_examples.losses, ref.hard_examples.losses)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(UsageError, match=f"fraction must be in \\(0, 1\\]. Received: "
                                         f"fraction={fraction}"):
        HardExamples(fraction)


def test_the_loss_plot_puts_each_valid_loss_at_its_epochs_end(tmp_path):
    import json

    from convscope.callbacks import History

    learn = learner([HardExamples(0.25)])
    learn.fit_one_cycle(3, 1e-2)
    valid = learn.recorder.plot_loss(skip_start=0).axes[0].lines[2]
    assert list(valid.get_xdata()) == [6, 8, 10]  # not thirds of the 10 batches
    learn.recorder.history().save(tmp_path / "h.json")
    assert History.load(tmp_path / "h.json").epoch_ends == [6, 8, 10]
    # a history.json written before epoch ends were kept: every epoch was as long then
    raw = json.loads((tmp_path / "h.json").read_text())
    del raw["epoch_ends"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert History.load(tmp_path / "old.json").epoch_ends == [3, 7, 10]
