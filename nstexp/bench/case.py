"""One benchmark case: the default recipe at one size, optimizer and precision, built as the
runner builds it, and timed step by step."""

from __future__ import annotations

import statistics
import time

import torch

from nstexp.errors import NstexpError
from nstexp.network import hardware, memory
from nstexp.run import inputs
from nstexp.run.precision import network_precision

WARMUP = 3  # steps left out of the timings: allocation, first-call dispatch, cuDNN's search
CONTENT, STYLE = "sample:chelsea", "sample:swirls"


def config_for(size: int, optimizer: str, precision: str, device: str, extra: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nstexp import composition
    from nstexp.validation import validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=composition.CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"size={size}", f"optimizer={optimizer}", f"precision={precision}", f"device={device}",
                f"content.image={CONTENT}", f"style.image={STYLE}", *extra])
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


class Case:
    """The default recipe at one size, optimizer and precision, built as the runner builds it."""

    def __init__(self, cfg, device: torch.device):
        from nstexp.losses.objective import weighted_layers
        from nstexp.network.layout import pools_before
        from nstexp.run import coarse_to_fine, runner
        from nstexp.tiling.objective import TiledObjective

        self.cfg, self.device = cfg, device
        self.precision = network_precision(cfg, device)
        self.channels_last = hardware.resolve_channels_last(cfg.channels_last, device)
        self.extractor = runner.network(cfg, device, self.precision, self.channels_last)
        layers = {k for part in weighted_layers(cfg.layers) for k in part}
        deepest = {layer: pools_before(cfg.backbone.arch, layer) for layer in layers}
        summary: dict = {}
        check = inputs.memory_check(self.extractor, cfg, device, summary)
        self.inputs = inputs.prepare(cfg, cfg.size, deepest, device, [], check)
        # In tiles where the run would tile (tiles=<px>, or a size that does not fit whole).
        self.tile = check.tiles.get(tuple(self.inputs.content.shape[-2:]))
        objective = coarse_to_fine.build_objective(cfg, self.extractor, self.inputs, summary, tile=self.tile)
        self.objective = TiledObjective([objective], self.tile) if self.tile else objective
        self.log_every = cfg.log_every or runner.DEFAULT_LOG_EVERY["cpu" if device.type == "cpu" else "gpu"]

    def run(self, steps: int, keep=lambda step, loss: False) -> dict:
        """`steps` optimizer steps from the initial image: the time each image existed and its
        loss, per step, and the images `keep(step, loss)` asks for (few: they count in the peak)."""
        from nstexp.optim.engine import optimize

        times, losses, kept = [], [], {}

        def on_step(ev) -> None:
            times.append(ev.time_s)
            losses.append(ev.terms.total[0].item())
            if keep(ev.step, losses[-1]):
                kept[ev.step] = ev.image

        peak = memory.PeakMemory(self.device)
        image = inputs.initial_image(self.cfg, self.inputs.content, self.inputs.styles)
        sync(self.device)
        result = optimize(image, self.objective, self.cfg.optimizer, steps, self.cfg.clamp,
                          on_step=on_step, check_every=self.log_every)
        sync(self.device)
        if result.status != "completed":
            raise NstexpError(f"bench: the {self.precision} run {result.status} after {result.steps} steps")
        return {"times": times, "losses": losses, "images": kept, "peak_mb": peak.mb()}

    def floor(self, repeats: int) -> float:
        """Median seconds of the bare truncated network: forward to the deepest layer, input gradient."""
        deepest = self.extractor.names[-1]
        x = self.inputs.content.clone().requires_grad_(True)
        times = []
        for i in range(WARMUP + repeats):
            sync(self.device)
            t = time.perf_counter()
            out = self.extractor(x, layers=[deepest])[deepest]
            (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
            sync(self.device)
            if i >= WARMUP:
                times.append(time.perf_counter() - t)
        return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_eval(times: list[float], device: torch.device) -> float:
    """Seconds per step after warm-up, from the times each image existed."""
    steady = times[WARMUP:]
    if device.type == "cuda":  # the host runs ahead between reads: only long spans are exact
        return (steady[-1] - steady[0]) / (len(steady) - 1)
    return statistics.median(b - a for a, b in zip(steady, steady[1:]))


def fp32_losses(cfg, device: torch.device, images: dict[int, torch.Tensor]) -> dict[int, float]:
    """The paper's loss of each image, computed with the network in fp32."""
    from omegaconf import OmegaConf

    reference = Case(OmegaConf.merge(cfg, {"precision": "fp32", "channels_last": False}), device)
    with torch.no_grad():
        return {k: reference.objective(img).total[0].item() for k, img in images.items()}
