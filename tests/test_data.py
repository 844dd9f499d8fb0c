import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
from conftest import idx_bytes, stripes, write_idx_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convscope import data as data_mod
from convscope.data import (
    MNIST_MD5,
    DataLoader,
    DataLoaders,
    idx_folder,
    missing_idx_files,
    mnist,
    read_idx,
)


# --- read_idx ----------------------------------------------------------------------------
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32),
                                        (0x0E, np.float64)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrips_every_dtype(tmp_path, code, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if code == 0x08:
        arr = np.abs(arr)
    payload = idx_bytes(arr, code)
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    out = read_idx(path, md5=hashlib.md5(payload).hexdigest())
    assert out.dtype == dtype and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"bad: wrong magic number 01020801"):
        read_idx(path)


@pytest.mark.parametrize("cut", [0, 2, 5, 8, 11])
def test_read_idx_truncated_at_each_header_boundary(tmp_path, cut):
    payload = idx_bytes(np.zeros((2, 3), np.uint8))  # 4 magic + 8 dims + 6 data
    path = tmp_path / "t"
    path.write_bytes(payload[:cut])
    with pytest.raises(ValueError, match=r"t: (truncated|wrong magic)"):
        read_idx(path)


def test_read_idx_truncated_data(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 5), np.uint8))[:-7]))
    with pytest.raises(ValueError,
                       match=r"t.gz: truncated: .*\(10, 5\).* need 50 bytes.*holds 43"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros((4,), np.uint8)) + b"xx")
    with pytest.raises(ValueError, match="has trailing bytes"):
        read_idx(path)


def test_read_idx_refuses_huge_dims_before_allocating(tmp_path):
    # dims 2**32-1 cubed: reading this naively would ask for ~10**28 bytes
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", *[2**32 - 1] * 3) + b"\0" * 16)
    with pytest.raises(ValueError, match="huge: truncated: the header's dims"):
        read_idx(path)


def test_read_idx_checksum_mismatch(tmp_path):
    path = tmp_path / "c"
    path.write_bytes(idx_bytes(np.ones((3,), np.uint8)))
    with pytest.raises(ValueError, match=r"checksum mismatch: expected MD5 0{32}, got [0-9a-f]{32}"
                       ):
        read_idx(path, md5="0" * 32)


def test_read_idx_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"this is not gzip at all, honestly")
    with pytest.raises(ValueError, match="x.gz: cannot be read as IDX"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_idx(tmp_path / "nope")


# --- folders and MNIST -------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_nchw_uint8(tmp_path, gz):
    data = idx_folder(write_idx_folder(tmp_path / "d", gz=gz))
    assert data.x_train.shape == (40, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.y_valid.shape == (20,) and data.y_valid.dtype == torch.int64
    assert data.classes == [str(i) for i in range(int(max(data.y_train.max(),
                                                         data.y_valid.max())) + 1)]


def test_idx_folder_lists_missing_files(tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    assert missing_idx_files(folder) == ["t10k-labels-idx1-ubyte"]
    with pytest.raises(ValueError, match="lacks t10k-labels-idx1-ubyte"):
        idx_folder(folder)


def test_idx_folder_image_label_count_mismatch(tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(39, np.uint8))))
    with pytest.raises(ValueError, match="holds 40 images but train-labels-idx1-ubyte holds 39"):
        idx_folder(folder)


def test_embedded_mnist_is_complete_and_verified():
    data = mnist()
    assert data.x_train.shape == (60000, 1, 28, 28)
    assert data.x_valid.shape == (10000, 1, 28, 28)
    assert data.classes == [str(i) for i in range(10)]
    assert torch.bincount(data.y_train).min() > 5000  # every digit well represented


def test_mnist_explicit_path_must_hold_the_files(tmp_path):
    with pytest.raises(ValueError, match="No MNIST at .*lacks train-images-idx3-ubyte"):
        mnist(tmp_path)


def test_mnist_verifies_checksums(tmp_path):
    # a folder in MNIST's layout whose content is not MNIST fails the MD5 check
    folder = write_idx_folder(tmp_path / "fake")
    with pytest.raises(ValueError, match="checksum mismatch"):
        mnist(folder)


def test_mnist_search_order(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "EMBEDDED_MNIST", tmp_path / "no-embedded")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVSCOPE_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        mnist(download=False)
    msg = str(err.value)
    assert msg.index("$CONVSCOPE_DATA") < msg.index("embedded") < msg.index("cache")
    assert "--data DIR" in msg
    # $CONVSCOPE_DATA is used when it holds the files (here: the real ones, copied)
    real = data_mod.Path(data_mod.__file__).parent / "datasets" / "mnist"
    (tmp_path / "env").mkdir()
    for f in real.iterdir():
        (tmp_path / "env" / f.name).write_bytes(f.read_bytes())
    assert mnist(download=False).source == str(tmp_path / "env")


def test_mnist_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "EMBEDDED_MNIST", tmp_path / "none")
    monkeypatch.delenv("CONVSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod, "MNIST_MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(FileNotFoundError, match=r"download \(http://127.0.0.1:9/"):
        mnist()


def test_md5_table_matches_embedded_files():
    for name, md5 in MNIST_MD5.items():
        raw = gzip.decompress((data_mod.EMBEDDED_MNIST / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5


def test_subset_and_split(toy):
    sub = toy.subset(10, 5, seed=1)
    assert len(sub.y_train) == 10 and len(sub.y_valid) == 5
    assert torch.equal(sub.x_train, toy.subset(10, 5, seed=1).x_train)
    split = toy.split(0.25)
    assert len(split.y_valid) == 64 and len(split.y_train) == 192
    with pytest.raises(ValueError, match=r"valid_pct must be in \(0, 1\). Received: valid_pct=1"):
        toy.split(1)


# --- DataLoader ---------------------------------------------------------------------------
def test_loader_batches_and_normalisation(toy):
    dls = DataLoaders.from_data(toy, bs=64)
    batches = list(dls.train)
    assert len(batches) == len(dls.train) == 4
    xb, yb = batches[0]
    assert xb.shape == (64, 1, 16, 16) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    allx = torch.cat([b[0] for b in batches])
    assert abs(allx.mean().item()) < 1e-3 and abs(allx.std().item() - 1) < 1e-2
    # decode inverts normalize exactly
    assert torch.equal(dls.train.decode(dls.train.normalize(toy.x_train[:8])), toy.x_train[:8])


def test_loader_shuffles_each_epoch_covering_every_item_once(toy):
    dl = DataLoaders.from_data(toy, bs=50, seed=3).train
    assert len(dl) == 6  # 256 / 50, last batch partial
    epoch1 = torch.cat([y for _, y in dl])
    epoch2 = torch.cat([y for _, y in dl])
    assert sorted(epoch1.tolist()) == sorted(toy.y_train.tolist())
    assert not torch.equal(epoch1, epoch2)
    again = DataLoaders.from_data(toy, bs=50, seed=3).train
    assert torch.equal(torch.cat([y for _, y in again]), epoch1)


def test_valid_loader_is_ordered_with_bigger_batches(toy):
    dls = DataLoaders.from_data(toy, bs=32)
    assert dls.valid.bs == 64
    assert torch.equal(torch.cat([y for _, y in dls.valid]), toy.y_valid)


def test_loader_rejects_bad_input(toy):
    with pytest.raises(ValueError, match=r"Expected uint8 images of shape \(N, C, H, W\). "
                                         r"Received: torch.float32"):
        DataLoader(toy.x_train.float(), toy.y_train, 8)
    with pytest.raises(ValueError, match="Batch size must be at least 1. Received: bs=0"):
        DataLoaders.from_data(toy, bs=0)


def test_a_restricted_loader_draws_only_its_images_and_says_which(toy):
    dl = DataLoaders.from_data(toy, bs=32, seed=1).train
    full = [dl.batch_indices.clone() for _ in dl]  # the first epoch's draw, unrestricted
    assert sorted(torch.cat(full).tolist()) == list(range(256))
    keep = torch.tensor([3, 7, 8, 20, 100, 101, 102, 150, 200, 255, 5, 6, 9, 10, 11, 12, 13, 14,
                         15, 16, 17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
                         34, 35, 36, 37])  # 40 images
    dl.restrict(keep)
    assert dl.n_images == 40 and len(dl) == 2 and dl.n_batches(256) == 8
    assert repr(dl).startswith("DataLoader: 40 (restricted) of 256 images of 1 x 16 x 16 in 2 "
                               "batches of 32 (shuffled)")
    seen, labels = [], []
    for _, yb in dl:
        seen.append(dl.batch_indices.clone())
        labels.append(yb)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == sorted(keep.tolist())  # each once, in a shuffled order
    assert not torch.equal(seen, keep.sort().values) and not torch.equal(seen, keep)
    assert torch.equal(torch.cat(labels), toy.y_train[seen])  # the batches hold those images
    # the order comes from the loader's generator: the same state gives the same epoch
    dl.generator.set_state(dl.epoch_state)
    assert torch.equal(torch.cat([dl.batch_indices.clone() for _ in dl]), seen)
    dl.restrict(None)
    assert dl.n_images == 256 and len(dl) == 8


def test_a_restricted_loader_shards_its_images():
    dl = DataLoaders.from_data(stripes(256, 8), bs=16, seed=0).train
    dl.restrict(torch.arange(0, 200, 2))  # 100 images: 7 batches, 6 shared as 3 and 3
    ranks = []
    for rank in (0, 1):
        dl.shard(rank, 2)
        dl.generator.manual_seed(5)
        assert len(dl) == 3
        ranks.append(torch.cat([dl.batch_indices.clone() for _ in dl]))
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())
    assert set(ranks[0].tolist()) | set(ranks[1].tolist()) < set(range(0, 200, 2))
    assert len(ranks[0]) + len(ranks[1]) == 6 * 16  # the short last batch is left out


def test_an_ordered_loader_names_the_images_of_each_batch(toy):
    dl = DataLoaders.from_data(toy, bs=48).valid  # 128 images in batches of 96
    assert [dl.batch_indices.tolist() for _ in dl] == [list(range(96)), list(range(96, 128))]
    dl.restrict(torch.tensor([5, 1, 9]))
    assert [(dl.batch_indices.tolist(), yb.tolist()) for _, yb in dl] == [
        ([5, 1, 9], toy.y_valid[[5, 1, 9]].tolist())]


@pytest.mark.parametrize("indices,says", [
    ([], "a non-empty set of image positions in \\[0, 256\\). Received 0 positions."),
    ([0, 256], "Received 2 positions from 0 to 256."),
    ([-1, 3], "Received 2 positions from -1 to 3."),
    ([4, 4], "each image position once. Received repeated positions."),
])
def test_restrict_refuses_positions_outside_or_twice(toy, indices, says):
    dl = DataLoaders.from_data(toy, bs=32).train
    with pytest.raises(ValueError, match=says):
        dl.restrict(indices)
    assert dl.indices is None


def test_one_batch_does_not_advance_the_shuffle(toy):
    dl = DataLoaders.from_data(toy, bs=32).train
    first = dl.one_batch()[1]
    assert torch.equal(first, next(iter(dl))[1])


def test_one_batch_keeps_the_epoch_state_checkpoints_resume_from(toy):
    dl = DataLoaders.from_data(toy, bs=32).train
    batches = dl.batches()
    next(batches)  # an epoch under way
    during_epoch = dl.epoch_state.clone()
    dl.one_batch()  # e.g. show_batch from a callback
    assert torch.equal(dl.epoch_state, during_epoch)


def test_show_batch_returns_figure_and_writes_png(toy, tmp_path):
    fig = DataLoaders.from_data(toy, bs=32).show_batch(6, save=tmp_path / "b.png")
    assert len([ax for ax in fig.axes if ax.images]) == 6
    assert [ax.get_title() for ax in fig.axes if ax.images][0] in toy.classes
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_roundtrip_and_override(toy):
    dls = DataLoaders.from_data(toy, bs=32)
    mean, std = dls.stats
    ref_mean = toy.x_train.float().mean() / 255
    assert mean.item() == pytest.approx(ref_mean.item(), rel=1e-5)
    other = DataLoaders.from_data(toy.subset(20), bs=32, stats=(mean, std))
    torch.testing.assert_close(other.stats[0], mean)
    torch.testing.assert_close(other.stats[1], std)


def test_load_image_converts_modes(tmp_path):
    from PIL import Image

    from convscope.data import load_image

    Image.new("L", (5, 4), 7).save(tmp_path / "g.png")
    Image.new("P", (5, 4)).save(tmp_path / "p.png")
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "g.png").shape == (1, 4, 5)
    assert load_image(tmp_path / "p.png").shape == (3, 4, 5)
    rgba = load_image(tmp_path / "a.png")
    assert rgba.shape == (3, 4, 5) and rgba[:, 0, 0].tolist() == [1, 2, 3]
    good = (tmp_path / "g.png").read_bytes()
    (tmp_path / "t.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="t.png: cannot be read as an image"):
        load_image(tmp_path / "t.png")


# --- fuzzing: whatever the bytes, read_idx returns an array or raises a ValueError naming the file


FUZZ = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=300, **FUZZ)
@given(payload=st.binary(max_size=64), gz=st.booleans())
def test_fuzz_random_bytes(tmp_path, payload, gz):
    path = tmp_path / ("fuzz.gz" if gz else "fuzz")
    path.write_bytes(gzip.compress(payload) if gz and payload[:1] != b"\x1f" else payload)
    try:
        out = read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(out, np.ndarray)


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_fuzz_mutated_headers(tmp_path, data):
    """A valid file with random bytes of its header replaced and its tail cut anywhere."""
    raw = bytearray(idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)))
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, 15))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "mut"
    path.write_bytes(bytes(raw))
    try:
        out = read_idx(path)
    except ValueError as e:
        assert "mut" in str(e)
    else:
        assert out.nbytes <= len(raw)  # never more than the file holds


def test_labels_outside_the_class_count(tmp_path):
    folder = write_idx_folder(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(20, 12, np.uint8))))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: label 12 is outside the "
                                         r"\d+ classes"):
        idx_folder(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(20, 3, np.uint8))))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 9 is outside the 2 "
                                         r"classes \(0..1\)"):
        idx_folder(folder, n_classes=2)


@pytest.mark.parametrize("n,bs", [(3001, 1000), (257, 256), (33, 16), (2, 1), (1, 4)])
def test_a_shuffled_loader_never_yields_a_batch_of_one(n, bs):
    x, y = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)
    dl = DataLoader(x, y, bs, shuffle=True, seed=1)
    sizes = [len(yb) for _, yb in dl]
    # a lone last image joins the batch before it; bs 1 (or one image in all) has no other way
    assert len(sizes) == len(dl) == dl.n_batches()
    assert min(sizes) > 1 or bs == 1 or n == 1
    assert sum(sizes) == n
    state = dl.generator.get_state()
    whole = [dl.batch_indices.clone() for _ in dl]
    assert sorted(torch.cat(whole).tolist()) == list(range(n))
    for start in range(len(whole)):  # a resumed epoch yields the rest of the same batches
        dl.generator.set_state(state)
        rest = [dl.batch_indices.clone() for _ in dl.batches(start)]
        assert len(rest) == len(whole) - start
        assert all(torch.equal(a, b) for a, b in zip(rest, whole[start:], strict=True))


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_and_restricted_loaders_never_yield_a_batch_of_one(world_size):
    n, bs = 3 * 16 + 1, 16  # 4 batches, the last of one image
    x, y = torch.zeros(200, 1, 2, 2, dtype=torch.uint8), torch.arange(200)
    dl = DataLoader(x, y, bs, shuffle=True, seed=0).restrict(torch.arange(0, 2 * n, 2))
    seen = []
    for rank in range(world_size):
        dl.shard(rank, world_size)
        dl.generator.manual_seed(5)
        batches = [dl.batch_indices.clone() for _ in dl]
        assert len(batches) == len(dl) == dl.n_batches(n) and all(len(b) > 1 for b in batches)
        seen += torch.cat(batches).tolist() if batches else []
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(0, 2 * n, 2))
    assert len({len(dl.shard(r, world_size)) for r in range(world_size)}) == 1


def test_an_ordered_loader_keeps_a_last_batch_of_one():
    # valid loaders are evaluated in eval mode, where BatchNorm takes a batch of one
    dl = DataLoader(torch.zeros(129, 1, 2, 2, dtype=torch.uint8), torch.arange(129), 128)
    assert [len(yb) for _, yb in dl] == [128, 1] and len(dl) == 2


def test_load_image_scales_16_bit_greyscale_by_its_depth(tmp_path):
    from PIL import Image

    from convscope.data import load_image

    for value in (1000, 60000):
        Image.new("I;16", (3, 2), value).save(tmp_path / f"{value}.png")
    assert load_image(tmp_path / "1000.png").unique().tolist() == [4]  # 1000 * 255 / 65535
    assert load_image(tmp_path / "60000.png").unique().tolist() == [233]
    Image.new("F", (3, 2), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f.tif: mode F \(32-bit floating point\)"):
        load_image(tmp_path / "f.tif")


def test_read_idx_corrupt_gzip_data_is_named(tmp_path):
    raw = bytearray(gzip.compress(idx_bytes((np.arange(4000) % 7).astype(np.uint8))))
    raw[20] ^= 0x5A  # inside the deflate stream: zlib's own error, not gzip's
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="c.gz: cannot be read as IDX"):
        read_idx(path)


def test_read_idx_several_gzip_members(tmp_path):
    payload = idx_bytes(np.arange(100, dtype=np.uint8).reshape(10, 10))
    path = tmp_path / "m.gz"  # the trailer holds the last member's size only
    path.write_bytes(gzip.compress(payload[:50]) + gzip.compress(payload[50:]))
    np.testing.assert_array_equal(read_idx(path), np.arange(100).reshape(10, 10))


def test_read_idx_checks_the_gzip_crc(tmp_path):
    payload = bytearray(idx_bytes(np.zeros(64, np.uint8)))
    raw = bytearray(gzip.compress(bytes(payload)))
    good_crc = raw[-8:-4]
    payload[-1] = 1  # other data under the same size and the old CRC
    raw = bytearray(gzip.compress(bytes(payload)))
    raw[-8:-4] = good_crc
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="crc.gz: cannot be read as IDX: CRC check failed"):
        read_idx(path)
