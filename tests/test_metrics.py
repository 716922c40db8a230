"""The yardstick metrics, `nstexp evaluate` and the Python API, on cases whose answer is known."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import nstexp
from conftest import run_cli
from nstexp import images
from nstexp.eval import metrics, rules
from nstexp.network.backbone import FeatureExtractor
from nstexp.errors import NstexpError


@pytest.fixture(scope="module")
def net():
    return FeatureExtractor("vgg19", "caffe", [*metrics.STYLE_LAYERS, metrics.CONTENT_LAYER])


@pytest.fixture(scope="module")
def chelsea_swirls(net):
    content, style = metrics.load("sample:chelsea", "c"), metrics.load("sample:swirls", "s")
    return content, style, metrics.Evaluator(content, style, 128, extractor=net)


def test_the_content_image_scores_as_the_photo(chelsea_swirls):
    content, _, evaluator = chelsea_swirls
    m = evaluator(content)
    assert m["eval/ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["eval/content"] == 0.0
    for family in ("style_gram", "style_sw"):  # relative to the photo itself: 1 by definition
        assert m[f"eval/{family}"] == pytest.approx(1.0, rel=1e-6)
        for layer in metrics.STYLE_LAYERS:
            assert m[f"eval/{family}/{layer}"] == pytest.approx(1.0, rel=1e-6)
    assert m["eval/tv"] == pytest.approx(1.0, rel=1e-6)
    assert m["eval/colour_content"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/colour_style"] > 0.1


def test_the_style_image_has_style_distance_0(net):
    """Content and style of one shape, so the style image is compared with itself unresized."""
    gen = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 64, 96, generator=gen), torch.rand(1, 3, 64, 96, generator=gen) ** 2
    m = metrics.Evaluator(content, style, 96, extractor=net)(style)
    assert m["eval/style_gram"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/style_sw"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/colour_style"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/ssim"] < 0.5


def test_the_colour_distance_of_two_flat_colours(net):
    """Two single colours: SW² = mean over unit directions d of (d·Δ)², whose expectation is |Δ|²/3."""
    content = torch.zeros(1, 3, 64, 64) + torch.tensor([0.2, 0.4, 0.6]).reshape(1, 3, 1, 1)
    style = torch.zeros(1, 3, 64, 64) + torch.tensor([0.7, 0.3, 0.1]).reshape(1, 3, 1, 1)
    delta = math.dist([0.2, 0.4, 0.6], [0.7, 0.3, 0.1])
    m = metrics.Evaluator(content, style, 64, extractor=net)(content)
    assert m["eval/colour_style"] == pytest.approx(delta / math.sqrt(3), rel=0.15)


def test_a_noisier_image_has_more_total_variation_and_less_ssim(chelsea_swirls):
    content, _, evaluator = chelsea_swirls
    small = torch.nn.functional.interpolate(content, size=evaluator.hw, mode="bilinear", antialias=True)
    # Noise at the reference resolution: finer noise is averaged away there, as the eye would at that size.
    noisy = (small + 0.1 * torch.randn(small.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    m = evaluator(noisy)
    assert m["eval/tv"] > 2 and m["eval/ssim"] < 0.9 and m["eval/content"] > 0


def test_each_metric_ranks_first_the_image_it_measures_closeness_to(chelsea_swirls):
    """Every metric's ranking rule (rules.better) against images whose order is known: the photo
    is the best content fidelity and the best total variation (a blurred copy has too little,
    a noisy one too much); the style image is the best style distance."""
    content, style, evaluator = chelsea_swirls
    small = torch.nn.functional.interpolate(content, size=evaluator.hw, mode="bilinear", antialias=True)
    noisy = (small + 0.1 * torch.randn(small.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(small, 4), size=evaluator.hw,
                                              mode="bilinear")
    candidates = {"photo": content, "noisy": noisy, "blurred": blurred,
                  "style": torch.nn.functional.interpolate(style, size=evaluator.hw, mode="bilinear", antialias=True)}
    scores = {name: evaluator(image) for name, image in candidates.items()}
    assert scores["blurred"]["eval/tv"] < 1 < scores["noisy"]["eval/tv"]
    expected = {"eval/ssim": "photo", "eval/content": "photo", "eval/colour_content": "photo", "eval/tv": "photo",
                "eval/style_gram": "style", "eval/style_sw": "style", "eval/colour_style": "style",
                "eval/styleeval_cf": "photo", "eval/cfsd": "photo", "eval/styleeval_ge": "style",
                "eval/styleeval_lp": "style", "eval/colour_hellinger": "style"}
    expected.update({f"eval/{family}/{layer}": "style" for family in ("style_gram", "style_sw")
                     for layer in metrics.STYLE_LAYERS})
    # StyleEval's overall is the mean of a content factor and two style factors: no image is best by definition.
    for m in scores.values():
        assert m["eval/styleeval"] == pytest.approx((m["eval/styleeval_cf"] + m["eval/styleeval_ge"]
                                                     + m["eval/styleeval_lp"]) / 3, abs=1e-12)
    assert set(expected) | {"eval/styleeval"} == set(scores["photo"])  # every key the evaluator gives is checked
    for key, best in expected.items():
        rule = rules.better(key)
        assert min(scores, key=lambda name: rules.badness(rule, scores[name][key])) == best, key
    # The smoothed image is not ranked above the photo for being lower (what "lower is better" would do).
    assert rules.badness("closer to 1", 0.2) > rules.badness("closer to 1", 1.02)


def test_metrics_do_not_depend_on_the_size_or_the_seed_much(chelsea_swirls, net):
    content, style, evaluator = chelsea_swirls
    half = torch.nn.functional.interpolate(content, scale_factor=0.5, mode="bilinear", antialias=True)
    styled = 0.5 * content + 0.5 * torch.nn.functional.interpolate(style, size=content.shape[-2:], mode="bilinear")
    # The same image at another size scores almost alike: all are taken at the reference size.
    assert evaluator(half)["eval/ssim"] > 0.9
    values = [metrics.Evaluator(content, style, 128, seed=s, extractor=net)(styled)["eval/style_sw"] for s in range(3)]
    assert np.std(values) / np.mean(values) < 0.02


def test_a_saved_and_reloaded_image_scores_identically(tmp_path, chelsea_swirls):
    content, _, evaluator = chelsea_swirls
    images.save_image(content.flip(-1), tmp_path / "a.png")
    first = metrics.load(str(tmp_path / "a.png"), "a")
    images.save_image(first, tmp_path / "b.png")
    assert evaluator(first) == evaluator(metrics.load(str(tmp_path / "b.png"), "b"))


def test_evaluate_command_scores_a_folder_of_images(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    chelsea = images.load_image("sample:chelsea")
    chelsea.save(folder / "photo.png")
    chelsea.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((300, 200)).save(folder / "flipped.jpg")
    r = run_cli(["evaluate", str(folder), "--content", "sample:chelsea", "--style", "sample:swirls",
                 "--size", "96", "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert [row["image"] for row in rows] == [str(folder / "flipped.jpg"), str(folder / "photo.png")]
    assert rows[1]["eval/ssim"] == pytest.approx(1.0, abs=1e-6) and rows[0]["eval/ssim"] < 0.9
    assert "eval/style_sw" in r.stdout.splitlines()[0]
    # The Python API gives the same numbers.
    assert nstexp.evaluate(str(folder / "flipped.jpg"), "sample:chelsea", "sample:swirls", size=96) == pytest.approx(
        {k: v for k, v in rows[0].items() if k != "image"})


def test_the_aspect_tolerance_covers_every_size_a_run_rounds_to():
    """Brute force over content shapes, sizes and multiples, the way nstexp.run.inputs sizes a run:
    `fit_longest`, then sides rounded to a multiple (a run refuses sides below it)."""
    from nstexp.eval import evaluation

    largest = evaluation.largest_multiple()
    worst = {}
    for cw, ch in [(451, 300), (300, 451), (600, 400), (512, 512), (1000, 333), (97, 61), (4000, 2250)]:
        for n in range(16, 400):
            for multiple in (1, 2, 4, 8, 16):
                fitted = images.fit_longest((cw, ch), n)
                if min(fitted) < multiple:
                    continue
                result = images.round_to(fitted, multiple)
                exact = (cw * n / max(cw, ch), ch * n / max(cw, ch))
                off = max(abs(r - e) for r, e in zip(result, exact))
                worst[multiple] = max(worst.get(multiple, 0.0), off)
                assert off <= images.rounding_error(multiple), (cw, ch, n, multiple)
                assert evaluation.fits(result, (cw, ch), images.rounding_error(largest)), (cw, ch, n, multiple)
    # The bound is what rounding does, not a loose guess: the worst case comes within a pixel of it.
    assert all(worst[m] > images.rounding_error(m) - 1 for m in worst)
    assert not evaluation.fits((64, 64), (451, 300), images.rounding_error(largest))


def test_evaluate_accepts_a_small_result_of_the_harness(tmp_path):
    """64 px of sample:chelsea (451 x 300) is 64 x 48 after rounding to 16 px: 11% off the photo's ratio."""
    from nstexp.eval import evaluation

    _, summary = nstexp.stylize("sample:chelsea", "sample:swirls", out_dir=str(tmp_path), size=64, steps=1,
                                **{"eval.enabled": False})
    final = str(tmp_path / "final.png")
    (w, h), (cw, ch) = Image.open(final).size, images.load_image("sample:chelsea").size
    assert abs((w / h) / (cw / ch) - 1) > 0.10  # the case a fixed 10% refused
    (row,) = evaluation.evaluate([final], "sample:chelsea", "sample:swirls", size=64)
    assert row["image"] == final and 0 < row["eval/ssim"] < 1


@pytest.mark.parametrize("args,message", [
    (["nope.png"], "result=nope.png: file not found"),
    (["wide.png"], "wide.png: 90x20 px does not have the content image's aspect ratio"),
    (["*.tif"], "*.tif: no file matches"),
])
def test_evaluate_command_fails_in_one_line(tmp_path, args, message):
    Image.new("RGB", (90, 20)).save(tmp_path / "wide.png")
    r = run_cli(["evaluate", *args, "--content", "sample:chelsea", "--style", "sample:swirls"], cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")


def test_evaluate_checks_every_result_before_it_scores_any(tmp_path, monkeypatch):
    """A bad image after good ones is refused before the reference features are computed."""
    from nstexp.eval import evaluation

    images.load_image("sample:chelsea").resize((90, 60)).save(tmp_path / "good.png")
    Image.new("RGB", (90, 20)).save(tmp_path / "wide.png")
    built = []
    monkeypatch.setattr(metrics.Evaluator, "__init__", lambda self, *a: built.append(a))
    with pytest.raises(NstexpError, match="wide.png: 90x20 px does not have"):
        evaluation.evaluate([str(tmp_path / "good.png"), str(tmp_path / "wide.png")], "sample:chelsea",
                            "sample:swirls", size=64)
    assert built == []


def test_runs_log_the_metrics_at_snapshots_and_at_the_end(tmp_path):
    image, summary = nstexp.stylize("sample:chelsea", "sample:swirls", out_dir=str(tmp_path / "a"), size=48,
                                    steps=4, snapshot_every=2, **{"eval.size": 64})
    assert isinstance(image, Image.Image) and image.size[0] == 48
    assert summary["status"] == "completed" and 0 < summary["eval/ssim"] <= 1 and summary["eval_time_s"] > 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/style_sw" in r] == [0, 2, 4]
    assert rows[-1]["eval/style_sw"] == pytest.approx(summary["eval/style_sw"], rel=1e-6)
    assert set(rules.HEADLINE) <= set(summary) and set(rules.HEADLINE) <= set(rows[-1])  # every image metric, the literature's too
    _, quiet = nstexp.stylize(images.load_image("sample:chelsea"), "sample:swirls", out_dir=str(tmp_path / "b"),
                              size=48, steps=4, **{"eval.enabled": False})
    assert not any(k.startswith("eval/") for k in quiet)


def test_stylize_refuses_a_bad_override_in_one_line():
    with pytest.raises(NstexpError,
                       match=r"optimizer=sgd: unknown option for optimizer \(allowed: adam, lbfgs, rmsprop\)"):
        nstexp.stylize("sample:chelsea", "sample:swirls", optimizer="sgd")


def test_the_api_takes_images_in_deep_modes(tmp_path):
    """A float (F, 0..1) and a 16-bit (I;16) image in memory score and stylize as the 8-bit image they hold."""
    gray = images.load_image("sample:chelsea").convert("L")
    values = np.asarray(gray)
    deep = {"F": Image.fromarray(values.astype(np.float32) / 255),
            "I;16": Image.fromarray(values.astype(np.uint16) * 257)}
    assert {k: v.mode for k, v in deep.items()} == {"F": "F", "I;16": "I;16"}
    expected = nstexp.evaluate(gray, "sample:chelsea", "sample:swirls", size=64)
    for mode, image in deep.items():
        assert nstexp.evaluate(image, "sample:chelsea", "sample:swirls", size=64) == expected, mode
    run = {"size": 48, "steps": 1, "eval.enabled": False}
    result, summary = nstexp.stylize(deep["F"], deep["I;16"], out_dir=str(tmp_path / "deep"), **run)
    reference, _ = nstexp.stylize(gray, gray, out_dir=str(tmp_path / "gray"), **run)
    assert summary["status"] == "completed"
    assert np.array_equal(np.asarray(result), np.asarray(reference))


@pytest.mark.parametrize("shape", [(1, 3, 64, 48), (2, 3, 37, 29), (1, 1, 16, 16)])
def test_ssim_is_torchmetrics_ssim(shape):
    """The reference: torchmetrics' structural_similarity_index_measure with its defaults."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from nstexp.eval.ssim import ssim

    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=gen)
    y = (0.7 * x + 0.3 * torch.rand(shape, generator=gen)).clamp(0, 1)
    ours = ssim(x, y)
    for b in range(shape[0]):
        reference = structural_similarity_index_measure(x[b:b + 1], y[b:b + 1], data_range=1.0)
        assert ours[b].item() == pytest.approx(reference.item(), abs=1e-6)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * shape[0], abs=1e-6)
    photo = images.to_tensor(images.load_image("sample:chelsea"))
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=gen)).clamp(0, 1)
    assert ssim(photo, noisy).item() == pytest.approx(
        structural_similarity_index_measure(photo, noisy, data_range=1.0).item(), abs=1e-5)
