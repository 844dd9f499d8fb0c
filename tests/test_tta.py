"""Test-time augmentation: the shifts, the average, and the pass it can save."""

import pytest
import torch
from conftest import stripes

from convscope.data import DataLoaders
from convscope.errors import UsageError
from convscope.learner import Learner
from convscope.models import simple_cnn
from convscope.tta import shifted


def test_shifts_move_the_image_and_repeat_the_edge():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    down = shifted(x, 1, 0)
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.equal(down[..., 0, :],
                                                                         x[..., 0, :])
    up = shifted(x, -2, 0)
    assert torch.equal(up[..., :2, :], x[..., 2:, :])
    assert torch.equal(up[..., 2:, :], x[..., 3:, :].expand_as(up[..., 2:, :]))
    right = shifted(x, 0, 1)
    assert torch.equal(right[..., 1:], x[..., :-1]) and torch.equal(right[..., 0], x[..., 0])
    left = shifted(x, 0, -1)
    assert torch.equal(left[..., :-1], x[..., 1:]) and torch.equal(left[..., -1], x[..., -1])
    assert all(t.shape == x.shape for t in (down, up, right, left))


@pytest.fixture(scope="module")
def learn():
    torch.manual_seed(0)
    dls = DataLoaders.from_data(stripes(256, 96, size=16), bs=32)
    learn = Learner(dls, simple_cnn(n_classes=4), progress=False)
    learn.fit_one_cycle(1, 0.01)
    return learn


def test_tta_averages_the_softmax_of_the_five_views(learn):
    probs, targs = learn.tta()
    model = learn.model.eval()
    x, y = zip(*learn.dls.valid, strict=True)
    x, y = torch.cat(x), torch.cat(y)
    with torch.no_grad():
        views = [x] + [shifted(x, dy, dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        want = torch.stack([model(v).softmax(dim=1) for v in views]).mean(0)
    torch.testing.assert_close(probs, want)
    assert torch.equal(targs, y) and probs.shape == (96, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(96))
    assert model.training is False
    learn.model.train()
    learn.tta()
    assert learn.model.training  # the mode it had is restored


def test_the_outputs_at_hand_save_a_pass_and_give_the_same(learn):
    outs, _ = learn.get_preds()
    calls = []
    handle = learn.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        probs, _ = learn.tta(plain=outs)
    finally:
        handle.remove()
    assert len(calls) == 4 * len(learn.dls.valid)  # the shifts only
    torch.testing.assert_close(probs, learn.tta()[0])
    with pytest.raises(UsageError, match="holds 95 outputs but the loader gives 96"):
        learn.tta(plain=outs[:95])
    with pytest.raises(UsageError, match="shift must be a whole number of pixels >= 1"):
        learn.tta(shift=0)


def test_only_the_unsure_images_are_looked_at_again(learn):
    outs, _ = learn.get_preds()
    plain = outs.softmax(dim=1)
    full, _ = learn.tta(plain=outs)
    below = float(plain.max(dim=1).values.median())  # half the images are under it
    unsure = plain.max(dim=1).values < below
    assert 0 < unsure.sum() < len(unsure)
    fed = []
    handle = learn.model.register_forward_hook(lambda m, i, o: fed.append(len(i[0])))
    try:
        probs, targs = learn.tta(plain=outs, unsure_below=below)
    finally:
        handle.remove()
    assert sum(fed) == 4 * int(unsure.sum())  # four shifts of each unsure image, no more
    torch.testing.assert_close(probs[unsure], full[unsure])  # as if all had been augmented
    assert torch.equal(probs[~unsure], plain[~unsure])  # the sure ones keep their softmax
    assert torch.equal(targs, learn.dls.valid.y)
    assert learn.dls.valid.indices is None  # the loader is left as it was
    # without the outputs at hand, one plain pass first
    torch.testing.assert_close(learn.tta(unsure_below=below)[0], probs)
    # nothing under the bar: no pass at all
    fed.clear()
    handle = learn.model.register_forward_hook(lambda m, i, o: fed.append(len(i[0])))
    try:
        probs, _ = learn.tta(plain=outs, unsure_below=1e-9)
    finally:
        handle.remove()
    assert fed == [] and torch.equal(probs, plain)


def test_tta_refuses_what_it_cannot_use(learn):
    with pytest.raises(UsageError, match=r"unsure_below must be a probability in \(0, 1\]. "
                                         r"Received: 1.5"):
        learn.tta(unsure_below=1.5)
    with pytest.raises(UsageError, match="expected a loader that gives all its images in "
                                         "order .* Received a shuffled or restricted one"):
        learn.tta(dl=learn.dls.train)
