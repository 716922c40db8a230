"""Speed settings keep the results: precision, memory format, checkpointing, compile; the
memory estimate; no host synchronisation in the loop; `nstexp bench`."""

import json
import re

import pytest
import torch

from conftest import sections, tiny_cfg
from nstexp.network import hardware, memory
from nstexp import images
from nstexp.network.backbone import FeatureExtractor
from nstexp.config import LBFGSConfig
from nstexp.optim.engine import optimize
from nstexp.errors import NstexpError
from nstexp.losses.objective import Objective
from nstexp.run.runner import run

LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]


def _photo(size=48):
    return images.to_tensor(images.resize(images.load_image("sample:chelsea"), (size, size * 3 // 4)))


def _objective(**network):
    extractor = FeatureExtractor("vgg19", "caffe", LAYERS, **network)
    style = images.to_tensor(images.resize(images.load_image("sample:swirls"), (48, 48)))
    return Objective(extractor, _photo(), [style], *sections({"relu4_2": 1.0}, {k: 0.2 for k in LAYERS if k != "relu4_2"},
                                                      1.0, 1e3, 0.0))


def _loss_and_gradient(objective, image):
    x = image.clone().requires_grad_(True)
    terms = objective(x)
    terms.total.sum().backward()
    return terms, x.grad


@pytest.fixture(scope="module")
def plain():
    """The fp32, plain-format path on a noisy start (every term non-zero)."""
    torch.manual_seed(0)
    start = (_photo() + 0.1 * torch.randn(1, 3, *_photo().shape[-2:])).clamp(0, 1)
    return start, _loss_and_gradient(_objective(), start)


@pytest.mark.parametrize("network", [{"channels_last": True}, {"checkpoint": True},
                                     {"checkpoint": True, "channels_last": True}])
def test_memory_format_and_checkpointing_give_the_plain_losses_and_gradients(plain, network):
    start, (terms, grad) = plain
    other, other_grad = _loss_and_gradient(_objective(**network), start)
    for name in terms.style_layers:
        assert other.style_layers[name].item() == pytest.approx(terms.style_layers[name].item(), rel=1e-4)
    assert other.total.item() == pytest.approx(terms.total.item(), rel=1e-5)
    assert torch.allclose(other_grad, grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())


def test_bf16_network_stays_close_to_fp32(plain):
    start, (terms, grad) = plain
    low, low_grad = _loss_and_gradient(_objective(precision="bf16"), start)
    assert low.total.dtype == torch.float32  # the losses are fp32 whatever the network computed in
    assert low.total.item() == pytest.approx(terms.total.item(), rel=0.03)
    for name in terms.style_layers:
        assert low.style_layers[name].item() == pytest.approx(terms.style_layers[name].item(), rel=0.05), name
    cosine = torch.nn.functional.cosine_similarity(low_grad.flatten(), grad.flatten(), dim=0)
    assert cosine > 0.98


@pytest.mark.slow
def test_compiled_network_gives_the_plain_losses_and_gradients(plain):
    start, (terms, grad) = plain
    compiled, compiled_grad = _loss_and_gradient(_objective(compile=True), start)
    assert compiled.total.item() == pytest.approx(terms.total.item(), rel=1e-4)
    assert torch.allclose(compiled_grad, grad, rtol=1e-3, atol=1e-5 * grad.abs().max().item())


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    native = bool({"amx_bf16", "avx512_bf16"} & set(open("/proc/cpuinfo").read().split()))
    assert hardware.native_bf16(cpu) == native
    assert hardware.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert hardware.resolve_precision("auto", cpu, keep_fp32=True) == "fp32"
    assert hardware.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(NstexpError, match=r"^precision=fp16 needs a CUDA device, not cpu \(allowed here: auto, fp32, "
                                          r"bf16\)$"):
        hardware.resolve_precision("fp16", cpu)


def test_runs_record_their_precision_and_repeat_exactly_in_bf16(tmp_path):
    # 24 px: bf16 is emulated, and slow, on a CPU without its instructions.
    a = run(tiny_cfg("precision=bf16", "init=noise", "size=24"), str(tmp_path / "a"))
    b = run(tiny_cfg("precision=bf16", "init=noise", "size=24"), str(tmp_path / "b"))
    assert a["precision"] == b["precision"] == "bf16"
    assert (tmp_path / "a" / "final.png").read_bytes() == (tmp_path / "b" / "final.png").read_bytes()
    assert a["final/loss/total"] == b["final/loss/total"]
    fp32 = run(tiny_cfg("init=noise", "size=24"), str(tmp_path / "c"))
    assert fp32["precision"] == "fp32" and fp32["final/loss/total"] != a["final/loss/total"]


def test_fp16_off_cuda_and_unknown_precisions_are_refused_in_one_line(tmp_path):
    from nstexp.errors import ConfigError
    from nstexp.validation import validate

    with pytest.raises(NstexpError, match="precision=fp16 needs a CUDA device"):
        run(tiny_cfg("precision=fp16"), str(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    with pytest.raises(ConfigError, match=r"precision='fp8' is not allowed \(allowed: auto, fp32, bf16, fp16\)"):
        validate(tiny_cfg("precision=fp8"))


def test_the_estimate_counts_precision_and_checkpointing():
    cfg = LBFGSConfig()
    estimates = {}
    for precision in ("fp32", "bf16"):
        for ckpt in (False, True):
            ex = FeatureExtractor("vgg19", "random", LAYERS, precision=precision, checkpoint=ckpt)
            estimates[precision, ckpt] = memory.estimate_bytes(ex, 1024, 1024, cfg)
    # The optimizer's state (fp32, the image's size) is the same in every case.
    assert estimates["bf16", False] < 0.9 * estimates["fp32", False]
    assert estimates["fp32", True] < 0.95 * estimates["fp32", False]
    assert estimates["bf16", True] < estimates["bf16", False] < estimates["fp32", False]
    acts = {p: memory.activation_bytes(FeatureExtractor("vgg19", "random", LAYERS, precision=p), 64, 64)[0]
            for p in ("fp32", "bf16")}
    assert acts["bf16"] < 0.75 * acts["fp32"]  # half the bytes, plus fp32 copies of the features the losses read


def test_the_largest_size_that_fits_is_the_one_the_refusal_names():
    ex = FeatureExtractor("vgg19", "random", LAYERS)
    cfg = LBFGSConfig()
    have = memory.estimate_bytes(ex, 600, 900, cfg)
    fits = memory.largest_fitting(ex, 2000, 3000, cfg, have)
    h = lambda s: (round(2000 * s / 3000 / 16) * 16, s)  # noqa: E731  (height, width) at longest side s
    assert fits % 16 == 0
    assert memory.estimate_bytes(ex, *h(fits), cfg) <= have < memory.estimate_bytes(ex, *h(fits + 16), cfg)
    assert 880 <= fits <= 928


def test_a_size_too_large_names_the_largest_that_would_fit(tmp_path):
    with pytest.raises(NstexpError) as info:
        run(tiny_cfg("size=30000", "steps=0"), str(tmp_path))
    message = str(info.value)
    found = re.search(r"size=(\d+) would fit, more with checkpoint=true", message)
    assert found and "\n" not in message and "precision=fp32" in message
    # Not even the smallest tiles fit: L-BFGS's 100 pairs at 30000 px are over a terabyte.
    state = re.search(r"no tiles fit either: .* optimizer's state take ([\d.]+) GiB", message)
    assert state and float(state[1]) > 1000 and "optimizer=adam" in message
    with pytest.raises(NstexpError) as info:
        run(tiny_cfg("size=30000", "steps=0", "tiles=off"), str(tmp_path / "off"))
    assert "no tiles fit" not in str(info.value)  # tiling off: nothing to say about tiles
    with pytest.raises(NstexpError) as info:
        run(tiny_cfg("size=30000", "steps=0", "checkpoint=true"), str(tmp_path / "ckpt"))
    more = re.search(r"size=(\d+) would fit", str(info.value))
    assert int(more[1]) > int(found[1])


def test_the_loop_reads_the_losses_only_every_check_every_steps(monkeypatch):
    """No host synchronisation between reads: nothing converts a tensor to a Python value."""
    objective = _objective()
    reads = []
    original = torch.Tensor.tolist

    def counted(self):
        reads.append(1)
        return original(self)

    def refuse(self, *args):
        raise AssertionError("host synchronisation inside the loop")

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    for name in ("item", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    result = optimize(_photo(), objective, LBFGSConfig(), steps=8, check_every=4)
    monkeypatch.undo()
    assert result.status == "completed" and result.steps == 8
    # After steps 4 and 8, whether L-BFGS's last step is to be taken back, and the final measurement.
    assert len(reads) == 4


def test_bench_reports_every_case_with_its_floor_and_ratios(tmp_path, capsys):
    from nstexp.bench import speed

    speed.main(["--sizes", "24", "--steps", "2", "--optimizers", "adam", "--precision", "fp32", "bf16",
                "--no-peer", "--sweep-jobs", "2", "--sweep-size", "32", "--sweep-steps", "2", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu"]
    rows = report["rows"]
    assert [(r["size"], r["optimizer"], r["precision"]) for r in rows] == [(24, "adam", "fp32"), (24, "adam", "bf16")]
    for row in rows:
        assert row["time_per_eval_s"] > 0 and row["floor_s"] > 0
        assert row["vs_floor"] == pytest.approx(row["time_per_eval_s"] / row["floor_s"])
        assert row["peak_memory_mb"] > 0 and row["fp32_loss_vs_fp32"] > 0
    assert rows[0]["fp32_loss_vs_fp32"] == 1.0
    table = (tmp_path / "bench.md").read_text()
    assert "| 24 | adam | bf16 |" in table and "× floor" in table
    assert "| 24 | adam | fp32 |" in capsys.readouterr().out
    (sweep,) = report["sweep"]
    assert (sweep["jobs"], sweep["size"], sweep["steps"], sweep["optimizer"]) == (2, 32, 2, "adam")
    assert sweep["speedup"] == pytest.approx(sweep["sequential_s"] / sweep["batched_s"])
    assert "| 2 | 32 | 2 | adam |" in table


def test_bench_refuses_bad_arguments_in_one_line(capsys):
    from nstexp.bench import speed

    with pytest.raises(SystemExit) as info:
        speed.main(["--sizes", "24", "--steps", "2", "--precision", "fp16", "--no-peer"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: precision=fp16 needs a CUDA device, not cpu (allowed here: auto, fp32, bf16)")


def test_bench_losses_times_each_preset_against_the_gram_loss(tmp_path, capsys):
    from nstexp.bench import speed

    speed.main(["--losses", "w2", "histogram", "--sizes", "32", "--steps", "2", "--optimizers", "adam",
                "--out", str(tmp_path)])
    report = json.loads((tmp_path / "losses.json").read_text())
    rows = report["rows"]
    # The baseline first, measured though not listed; each row's ratio is its time over the baseline's.
    assert [(r["preset"], r["style_loss"]) for r in rows] == [("gatys", "gram"), ("w2", "w2"),
                                                              ("histogram", "histogram")]
    assert all(r["time_per_eval_s"] > 0 and r["size"] == 32 and r["precision"] == "fp32" for r in rows)
    assert [r["vs_gram"] for r in rows] == pytest.approx([r["time_per_eval_s"] / rows[0]["time_per_eval_s"]
                                                          for r in rows])
    assert rows[0]["vs_gram"] == 1.0 and rows[0]["drift"] > 0  # timed first and last, the mean counts
    assert "| histogram | histogram | 32 | adam | fp32 |" in (tmp_path / "losses.md").read_text()
    assert "× gram" in capsys.readouterr().out


def test_bench_losses_refuses_an_unknown_preset_in_one_line(capsys):
    from nstexp.bench import speed

    with pytest.raises(SystemExit) as info:
        speed.main(["--losses", "gram2", "--sizes", "32", "--steps", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench: --losses gram2: not a loss preset (allowed: ") and "gatys" in err


@pytest.mark.slow
def test_bench_startup_times_every_case_against_import_torch(tmp_path, capsys, wandb_env):
    from nstexp.bench import speed, startup

    speed.main(["--startup", "--repeats", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "startup.json").read_text())
    assert set(report["rows"]) == {*startup.CASES, startup.FIRST_STEP}
    floor = report["rows"]["import torch (floor)"]["s"]
    for name, row in report["rows"].items():
        assert row["s"] > 0 and row["vs_torch"] == pytest.approx(row["s"] / floor), name
    table = (tmp_path / "startup.md").read_text()
    assert "| default run, first step |" in table and "× `import torch`" in table


def test_bench_startup_refuses_bad_repeats_in_one_line(capsys):
    from nstexp.bench import speed

    with pytest.raises(SystemExit) as exit_info:
        speed.main(["--startup", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: bench: --repeats must be >= 1 (got 0)"


def test_bench_tiles_times_a_step_whole_and_in_tiles(tmp_path, capsys):
    from nstexp.bench import speed

    speed.main(["--tiles", "32", "--sizes", "64", "--steps", "2", "--optimizers", "adam", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "tiles.json").read_text())["rows"]
    assert row["tile"] == 32 and row["whole_s"] > 0 and row["tiled_s"] > 0 and row["precision"] == "fp32"
    assert row["time_vs_whole"] == pytest.approx(row["tiled_s"] / row["whole_s"])
    assert row["peak_vs_whole"] == pytest.approx(row["tiled_peak_mb"] / row["whole_peak_mb"])
    assert "| 64 | 48x64 | 32 | adam | fp32 |" in (tmp_path / "tiles.md").read_text()


def test_bench_tiles_keeps_measuring_after_a_size_that_cannot_run_in_tiles(tmp_path):
    """A size refused in tiles (here: a loss that does not decompose) is a row with its refusal,
    and the table still has every size: the figures measured before it are not lost."""
    from nstexp.bench import speed

    speed.main(["--tiles", "32", "--sizes", "64", "48", "--steps", "2", "--optimizers", "adam", "--out", str(tmp_path),
                "style.loss=sliced"])
    rows = json.loads((tmp_path / "tiles.json").read_text())["rows"]
    assert [r["size"] for r in rows] == [64, 48]
    for row in rows:
        assert row["whole_s"] > 0 and "tiled_s" not in row and "time_vs_whole" not in row
        assert "style.loss=sliced" in row["tiled_error"]
    table = (tmp_path / "tiles.md").read_text()
    assert "| 64 | 48x64 | 32 | adam | fp32 |" in table and "- 48 px tiled: " in table
