"""``crp-jax explain --shard K/N``: N processes share a list of images with no shared state.

Run in-process through ``crp_jax.cli.main`` with the shipped model, one method and no grid,
so each run compiles one explain program (the same shapes every time) and the three runs
share it.
"""

from pathlib import Path

import pytest
from PIL import Image

from crp_jax.cli import main
from crp_jax.cli.common import Shard, parse_shard, shard_images
from crp_jax.data import generate_scene
from crp_jax.data.splits import HELDOUT_SEED


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[str]:
    """Three generated held-out scenes, two of them with the same file stem (a/scene.png,
    b/scene.png): an unsharded run names them scene and scene-2, and so must the shards."""
    d = tmp_path_factory.mktemp("scenes")
    paths = [d / "a" / "scene.png", d / "b" / "scene.png", d / "c.png"]
    for i, p in enumerate(paths):
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(generate_scene(HELDOUT_SEED, i).image).save(p)
    return [str(p) for p in paths]


def _explain(images, out: Path, *extra) -> int:
    argv = ["explain", *images, "--out", str(out), "--method", "gradient", "--compare", "none"]
    return main(argv + ["--max-detections", "2", "--no-progress", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_shards_together_write_exactly_the_files_of_one_run(tmp_path, scenes, capsys):
    assert _explain(scenes, tmp_path / "all") == 0
    assert _explain(scenes, tmp_path / "s0", "--shard", "0/2") == 0
    assert _explain(scenes, tmp_path / "s1", "--shard", "1/2") == 0
    capsys.readouterr()
    whole, s0, s1 = _files(tmp_path / "all"), _files(tmp_path / "s0"), _files(tmp_path / "s1")
    assert whole, "the unsharded run wrote nothing: the test would prove nothing"
    assert not set(s0) & set(s1)  # each image is explained by exactly one shard
    assert {**s0, **s1} == whole  # same names, same bytes
    # shard 0 took images 0 and 2 (a/scene.png, c.png), shard 1 image 1 (b/scene.png -> scene-2)
    assert all(n.startswith(("scene_det", "c_det")) for n in s0)
    assert s1 and all(n.startswith("scene-2_det") for n in s1)


def test_shard_defaults_to_the_jax_process_index_and_count(tmp_path, scenes, monkeypatch, capsys):
    import jax

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert _explain(scenes, tmp_path / "p1") == 0
    capsys.readouterr()
    names = [p.name for p in (tmp_path / "p1").iterdir()]
    assert names and all(n.startswith("scene-2_det") for n in names)


def test_shard_with_no_images_writes_nothing_and_says_so(tmp_path, scenes, capsys):
    assert _explain(scenes[:1], tmp_path / "empty", "--shard", "1/2") == 0
    err = capsys.readouterr().err
    assert "shard 1/2 has no images" in err
    assert not list((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("bad", ["2/2", "3/2", "0/0", "a/b", "1", "1/2/3", "=-1/2", "1.0/2", ""])
def test_a_bad_shard_is_a_usage_error(tmp_path, bad, capsys):
    value = bad[1:] if bad.startswith("=") else bad
    argv = ["explain", "x.png", "--out", str(tmp_path / "o"), f"--shard={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("crp-jax explain: error:")]
    assert len(errors) == 1 and "--shard" in errors[0] and "Traceback" not in err
    assert repr(value) in errors[0]  # names the bad value
    assert not (tmp_path / "o").exists()


def test_shard_selection_is_every_nth_of_the_given_order_with_unique_stems():
    paths = ["x/b.png", "y/b.png", "a.png", "z/b.png", "c.jpg"]
    assert parse_shard("1/3") == Shard(1, 3)
    assert shard_images(paths, Shard(0, 1)) == [
        ("x/b.png", "b"),
        ("y/b.png", "b-2"),
        ("a.png", "a"),
        ("z/b.png", "b-3"),
        ("c.jpg", "c"),
    ]
    assert shard_images(paths, Shard(1, 3)) == [("y/b.png", "b-2"), ("c.jpg", "c")]
    assert shard_images(paths, Shard(2, 3)) == [("a.png", "a")]
    parts = [shard_images(paths, Shard(k, 4)) for k in range(4)]
    assert sorted(sum(parts, [])) == sorted(shard_images(paths, Shard(0, 1)))
