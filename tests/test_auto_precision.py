"""precision=auto: bf16 where the device has it, but fp32 where L-BFGS would not survive bf16's
rounding (nstexp.run.precision). The device's bf16 is set here as on a machine that has it, so
the rule is tested whatever this machine's CPU."""

import pytest
import torch

from conftest import compose_cfg, tiny_cfg
from nstexp.losses.base import STYLE_LOSSES
from nstexp.network import hardware
from nstexp.run import runner
from nstexp.run.precision import keeps_fp32, network_precision
from nstexp.sweep import batching

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)


@pytest.mark.parametrize("overrides,expected", [
    ([], "bf16"),  # the default: L-BFGS on mean_balanced, measured the same in bf16 and fp32
    (["loss=gatys"], "bf16"),
    (["loss=nnst"], "fp32"),  # noise in bf16 (TV 96.6 against 7.6 on tubingen_starry_night)
    (["style.loss=nnst_split"], "fp32"),
    (["loss=nnst", "optimizer=adam"], "bf16"),  # Adam takes no differences of gradients
    (["experiment=nnst"], "bf16"),  # Adam, its final pass's nnst_split too
    (["scales.final_pass=true", "scales.final_loss=nnst_split"], "fp32"),  # the final pass's loss counts
    (["optimizer.line_search=strong_wolfe"], "fp32"),  # a line search compares losses along a line
    (["loss=nnst", "precision=bf16"], "bf16"),  # what the user sets is kept
    (["loss=nnst", "precision=fp32"], "fp32"),
])
def test_auto_keeps_fp32_for_lbfgs_on_the_losses_bf16_drowns(native_bf16, overrides, expected):
    cfg = compose_cfg(overrides)
    assert network_precision(cfg, CPU) == expected
    assert runner.resolved(cfg)["precision"] == expected  # what a run resolves, and records


def test_without_native_bf16_auto_is_fp32(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    assert network_precision(compose_cfg([]), CPU) == "fp32"
    assert network_precision(compose_cfg(["optimizer=adam"]), CPU) == "fp32"


def test_only_the_nearest_neighbour_cosine_losses_keep_fp32():
    kept = sorted(name for name, cls in STYLE_LOSSES.items() if not cls.lbfgs_in_bf16)
    assert kept == ["nnst", "nnst_split"]
    assert keeps_fp32(compose_cfg(["style.loss={gram: 0.5, sliced: 0.5}"])) is False


def test_a_run_records_the_precision_the_rule_gives(native_bf16, tmp_path):
    summary = runner.run(tiny_cfg("loss=nnst", "steps=1"), str(tmp_path))
    assert summary["status"] == "completed"
    assert summary["precision"] == summary["resolved"]["precision"] == "fp32"


def test_jobs_whose_auto_precision_differs_go_into_separate_batches():
    cfgs = [compose_cfg([f"style.loss={loss}", f"style.weight={w}"]) for loss in ("gram", "nnst") for w in (1, 2)]
    assert all(batching.batchable_optimizer(c) for c in cfgs)
    assert batching.group(cfgs, 4) == [[0, 1], [2, 3]]  # alone, the gram jobs run in bf16 where it is native
    assert batching.difference(cfgs[0], cfgs[2]) == ["precision (auto keeps fp32 for one job's style loss under L-BFGS)"]
    fixed = [compose_cfg([f"style.loss={loss}", "precision=fp32"]) for loss in ("gram", "nnst")]
    assert batching.group(fixed, 4) == [[0, 1]]  # a precision the user sets is every job's
