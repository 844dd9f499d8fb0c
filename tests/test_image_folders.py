import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import cli_error
from PIL import Image

from convscope import decode
from convscope import image_folders as imf
from convscope.callbacks.augment import random_crop, random_flip
from convscope.cli import main
from convscope.image_folders import image_folder


def make_folder(root, layout="split", modes=("RGB", "L", "RGBA", "P"), n=4, size=(12, 10)):
    """Three classes, each a different brightness, in the images' own modes."""
    splits = {"train": n, "valid": 2} if layout == "split" else {"": n + 2}
    for split, count in splits.items():
        for c, cls in enumerate(["cat", "dog", "owl"]):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                mode = modes[(c + i) % len(modes)]
                colour = {"L": 60 * c, "P": 60 * c}.get(mode, (60 * c, 10, 200, 255)[:len(mode)])
                Image.new(mode, size, colour).save(d / f"{i}.png")
    return root


def test_train_valid_layout_with_mixed_modes(tmp_path):
    data = image_folder(make_folder(tmp_path / "d"), size=8, cache=None)
    assert data.classes == ["cat", "dog", "owl"]
    assert data.x_train.shape == (12, 3, 8, 8) and data.x_train.dtype == torch.uint8
    assert data.x_valid.shape == (6, 3, 8, 8)
    assert data.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # a grayscale image becomes RGB with equal channels
    gray = [i for i in range(12) if (data.y_train[i] + i % 4) % 4 == 1][0]
    assert torch.equal(data.x_train[gray][0], data.x_train[gray][1])


def test_all_grayscale_stays_one_channel(tmp_path):
    data = image_folder(make_folder(tmp_path / "g", modes=("L",)), size=6, cache=None)
    assert data.x_train.shape[1] == 1


def test_class_folders_split_by_seeded_fraction(tmp_path):
    root = make_folder(tmp_path / "flat", layout="flat")
    a = image_folder(root, valid_pct=0.25, seed=1, cache=None)
    b = image_folder(root, valid_pct=0.25, seed=1, cache=None)
    c = image_folder(root, valid_pct=0.25, seed=2, cache=None)
    assert len(a.y_valid) == round(0.25 * 18) and len(a.y_train) == 18 - len(a.y_valid)
    assert torch.equal(a.x_valid, b.x_valid) and not torch.equal(a.y_valid, c.y_valid)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"2 bad image file\(s\): .*broken.png: cannot be read.*"
                                         r"cut.png: cannot be read.*--skip-bad"):
        image_folder(root, cache=None)
    data = image_folder(root, skip_bad=True, cache=None)
    assert len(data.y_train) == 12 and len(data.skipped) == 2


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "owl" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's limit is on
    with pytest.raises(ValueError, match=r"bomb.png: refused, too many pixels"):
        image_folder(root, cache=None)


def test_empty_class_folder_and_no_images(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) with no images: emu"):
        image_folder(root, cache=None)
    empty = tmp_path / "e"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images found"):
        image_folder(empty, cache=None)
    with pytest.raises(ValueError, match="holds no class folders"):
        image_folder(empty / "a", cache=None)


def test_cache_skips_decoding_and_is_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root, cache = make_folder(tmp_path / "d"), tmp_path / "cache"
    first = image_folder(root, size=8, cache=cache)
    imf.wait_for_cache_writes()
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(decode, "decode_one", no_decoding)
    again = image_folder(root, size=8, cache=cache)
    assert torch.equal(first.x_train, again.x_train)
    monkeypatch.undo()
    changed = root / "train" / "cat" / "0.png"
    Image.new("RGB", (12, 10), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = image_folder(root, size=8, cache=cache)
    imf.wait_for_cache_writes()
    assert len(list(cache.glob("*.npy"))) == 2
    assert not torch.equal(first.x_train, rebuilt.x_train)


def test_random_crop_is_a_shifted_window_and_flip_mirrors():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    out = random_crop(x, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_flip(x)
    for i in range(6):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_train_on_a_colour_image_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "d", n=8)
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--size", "16", "--epochs", "2", "--bs", "8",
                 "--augment", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "24 train, 6 valid images of 3 x 16 x 16, 3 classes" in out
    assert "valid accuracy " in out  # a valid/ folder is not called a test set
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["in_channels"] == "3"
        assert f.get_tensor("0.0.weight").shape == (8, 3, 5, 5)  # (ch_out, ch_in, ks, ks)
    assert "3 x 16 x 16" in (run / "report.html").read_text()


def test_cli_bad_image_folder(tmp_path, capsys):
    root = make_folder(tmp_path / "d")
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"junk")
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.jpg: cannot be read as an image" in cli_error(err)
    np.testing.assert_equal(main(["train", "--data", str(root), "--skip-bad", "--epochs", "1",
                                  "--bs", "4", "--size", "8", "--out", str(tmp_path / "r")]), 0)
    assert "skipped: " in capsys.readouterr().out


def test_held_out_set_is_named_for_what_it_is(tmp_path):
    from convscope.config import TrainConfig
    from convscope.run.data import held_out_name

    split = make_folder(tmp_path / "a", n=2)
    (tmp_path / "b").mkdir()
    (split / "valid").rename(tmp_path / "b" / "test")
    (split / "train").rename(tmp_path / "b" / "train")
    assert held_out_name(TrainConfig()) == "test"  # MNIST's test set
    assert held_out_name(TrainConfig(valid_pct=0.1)) == "valid"
    assert held_out_name(TrainConfig(data=str(tmp_path / "b"))) == "test"
    assert held_out_name(TrainConfig(data=str(make_folder(tmp_path / "c", n=2)))) == "valid"


def test_16_bit_greyscale_among_colour_images_is_scaled_not_clipped(tmp_path):
    root = make_folder(tmp_path / "d", modes=("RGB",))
    Image.new("I;16", (12, 10), 1000).save(root / "train" / "cat" / "deep.png")
    data = image_folder(root, size=8, cache=None)
    deep = data.x_train[data.y_train == 0][-1]  # sorted last among cat's files
    assert deep.unique().tolist() == [4]  # 1000 * 255 / 65535 on every channel, not 255


def test_class_folders_linked_from_outside_the_dataset_are_classes(tmp_path):
    root = make_folder(tmp_path / "d", layout="flat")
    outside = make_folder(tmp_path / "elsewhere", layout="flat")
    (root / "emu").symlink_to(outside / "owl", target_is_directory=True)
    (root / "owl" / "nested").symlink_to(root, target_is_directory=True)  # not walked into
    data = image_folder(root, valid_pct=0.25, cache=None)
    assert data.classes == ["cat", "dog", "emu", "owl"]
    assert len(data.y_train) + len(data.y_valid) == 4 * 6


def test_a_class_folder_linked_into_another_split_is_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "valid" / "cat").rename(tmp_path / "old-cat")
    (root / "valid" / "cat").symlink_to(root / "train" / "cat", target_is_directory=True)
    with pytest.raises(ValueError, match=r"valid/cat -> .*train/cat \(overlaps the class "
                                         r"folder .*train/cat\)"):
        image_folder(root, cache=None)


def many_images(root, n=300, size=(9, 7)):
    """`n` small images over three classes, each image its own colour, two of them bad."""
    for i in range(n):
        d = root / ("abc"[i % 3])
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i % 256, (7 * i) % 256, 255 - i % 256)).save(d / f"{i:04}.png")
    (root / "a" / "0500-bad.png").write_bytes(b"not an image")
    (root / "c" / "0501-bad.png").write_bytes(b"\x89PNG\r\n\x1a\ncut")
    return root


@pytest.mark.skipif(decode.cores() < 2, reason="decoding forks only with two cores or more")
def test_forked_decoding_equals_serial_and_names_bad_files_in_order(tmp_path, monkeypatch):
    root = many_images(tmp_path / "m")
    files = sorted(root.rglob("*.png"))
    out = decode.shared_buffer((len(files), 3, 8, 8))
    seen, forks, fork = [], [], os.fork

    def counted_fork():
        forks.append(1)
        return fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    failed = decode.decode_into(out, files, 8, "RGB", progress=seen.append)
    assert len(forks) == decode.cores() - 1
    monkeypatch.setattr(decode, "_FORK_FROM", 10**9)
    serial = np.zeros_like(out)
    assert decode.decode_into(serial, files, 8, "RGB") == failed
    assert [files[i].name for i, _ in failed] == ["0500-bad.png", "0501-bad.png"]
    assert np.array_equal(out, serial) and out.any()
    assert seen[-1] == len(files)


def test_a_decoding_copy_that_dies_leaves_its_share_to_the_parent(tmp_path, monkeypatch):
    files = sorted(many_images(tmp_path / "m").rglob("*.png"))
    want = np.zeros((len(files), 3, 8, 8), np.uint8)
    monkeypatch.setattr(decode, "_FORK_FROM", 10**9)
    want_failed = decode.decode_into(want, files, 8, "RGB")
    monkeypatch.undo()
    monkeypatch.setattr(decode, "_in_copy", lambda *args: os._exit(3))
    out = decode.shared_buffer(want.shape)
    assert decode.decode_into(out, files, 8, "RGB") == want_failed
    assert np.array_equal(out, want)


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_cached_and_streamed_sets_equal_a_fresh_decode(tmp_path, layout):
    root = make_folder(tmp_path / "d", layout=layout, n=6, modes=("RGB", "L"))
    (root / ("train/dog" if layout == "split" else "dog") / "bad.png").write_bytes(b"no")
    fresh = image_folder(root, size=8, skip_bad=True, cache=None)
    for x, y in ((fresh.x_train, fresh.y_train), (fresh.x_valid, fresh.y_valid)):
        assert torch.equal(x[:, 0, 0, 0].long(), 60 * y)  # each image beside its own label
    lines = []
    first = image_folder(root, size=8, skip_bad=True, cache=tmp_path / "c", log=lines.append)
    again = image_folder(root, size=8, skip_bad=True, cache=tmp_path / "c", log=lines.append)
    streamed = image_folder(root, size=8, skip_bad=True, cache=tmp_path / "c", in_memory=False)
    for data in (first, again, streamed):
        for name in ("x_train", "y_train", "x_valid", "y_valid"):
            assert torch.equal(getattr(data, name), getattr(fresh, name)), name
        assert len(data.skipped) == 1
    assert re.fullmatch(r"image cache: decoded 24 images \(1 unreadable, left out\) to 8x8 in "
                        r"\d+\.\d s; caching them in .*\.npy \(\d+ kB\)", lines[0]), lines[0]
    assert re.fullmatch(r"image cache: read 24 decoded images of 8x8 from .*\.npy \(\d+ kB\)",
                        lines[1]), lines[1]


def test_a_streamed_set_is_trained_from_the_memory_mapped_cache(tmp_path):
    from convscope.data import DataLoaders

    root = make_folder(tmp_path / "d", layout="flat", n=10)
    data = image_folder(root, size=8, cache=tmp_path / "c", in_memory=False, log=None)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1  # decoded in its split's order
    # another split of the same cache: a second file holds the set in that split's order
    image_folder(root, size=8, seed=1, cache=tmp_path / "c", in_memory=False, log=None)
    assert sorted(p.name.endswith("-split-0.2-1.npy") for p in (tmp_path / "c").glob("*.npy")) \
        == [False, True]
    storage = data.x_train.untyped_storage()
    assert storage.data_ptr() == data.x_valid.untyped_storage().data_ptr()
    xb, yb = DataLoaders.from_data(data, bs=4).train.one_batch()
    assert xb.shape == (4, 3, 8, 8) and xb.dtype == torch.float32


def test_streaming_without_a_cache_folder_says_what_it_needs(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"streamed from its decoded cache, which needs a "
                                         r"cache folder\. Received: cache=None"):
        image_folder(root, size=8, cache=None, in_memory=False)


def test_channel_stats_in_chunks_equal_the_stats_at_once(monkeypatch):
    from convscope import data as data_mod

    x = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8)
    whole = data_mod.channel_stats(x)
    monkeypatch.setattr(data_mod, "STATS_AT_ONCE", 100)
    chunked = data_mod.channel_stats(x)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-5)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_task_bar_stays_hidden_for_a_quick_task_and_draws_on_a_terminal():
    from convscope.task_bar import TaskBar

    quick = _Terminal()
    with TaskBar("decoding 10 images", 10, delay=60, file=quick) as bar:
        bar.update(10)
    assert quick.getvalue() == ""
    slow = _Terminal()
    with TaskBar("decoding 10 images", 10, delay=0, file=slow) as bar:
        bar.update(4)
    assert "decoding 10 images" in slow.getvalue()


def test_a_cache_written_in_one_split_order_serves_another(tmp_path):
    root = make_folder(tmp_path / "d", layout="flat", n=10)
    image_folder(root, size=8, seed=0, cache=tmp_path / "c", log=None)
    imf.wait_for_cache_writes()
    fresh = image_folder(root, size=8, seed=1, cache=None, log=None)
    for in_memory in (True, False):
        other = image_folder(root, size=8, seed=1, cache=tmp_path / "c", in_memory=in_memory,
                             log=None)
        for name in ("x_train", "y_train", "x_valid", "y_valid"):
            assert torch.equal(getattr(other, name), getattr(fresh, name)), (in_memory, name)
