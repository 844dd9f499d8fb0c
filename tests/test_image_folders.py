import os
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import cli_error
from PIL import Image

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
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imf, "_decode", no_decoding)
    again = image_folder(root, size=8, cache=cache)
    assert torch.equal(first.x_train, again.x_train)
    monkeypatch.undo()
    changed = root / "train" / "cat" / "0.png"
    Image.new("RGB", (12, 10), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))
    rebuilt = image_folder(root, size=8, cache=cache)
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
