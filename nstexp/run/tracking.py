"""Where a run's results go: metrics.jsonl, snapshots, final.png, summary.json and W&B.

What a run writes while it optimizes (the W&B run's start, metrics lines, their scores,
snapshots, W&B logs) goes through one writer thread per process, in the order it was
submitted, so the optimizer never waits for the disk, the yardstick or W&B. `Tracker.drain`
waits for a tracker's share; `finish` drains before it writes the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image

from nstexp.images import save_image, to_pil
from nstexp.run.wandb_mode import resolve_wandb_mode

if TYPE_CHECKING:
    import torch


# What one run writes into its directory (W&B's folder aside: each W&B run is its own).
# With a stopped run's state (nstexp.run.resume's STATE and MARKER): a run that does not go on
# with it starts afresh.
RUN_FILES = ("metrics.jsonl", "summary.json", "final.png", "error.log", "style_target.png", "state.pt", "state.pt.tmp",
             "state.json")
RUN_DIRS = ("snapshots",)


_writer: ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


def writer() -> ThreadPoolExecutor:
    """The process's writer: one thread, so every tracker's work runs in submission order."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nstexp-writer")
        return _writer


def _forget_writer() -> None:
    global _writer, _writer_lock
    _writer, _writer_lock = None, threading.Lock()


# A forked child has no writer thread: it starts its own.
os.register_at_fork(after_in_child=_forget_writer)


def _lines_before(path: str, step: int) -> tuple[list[str], int]:
    """metrics.jsonl's lines of the steps before `step` (a run going on from there writes the
    rest), and the last step it holds (-1: none)."""
    try:
        with open(path) as f:
            lines = [(line, json.loads(line)["step"]) for line in f if line.strip()]
    except (OSError, ValueError, KeyError):
        return [], -1
    return [line for line, s in lines if s < step], max((s for _, s in lines), default=-1)


def clear_outputs(out_dir: str) -> None:
    """Remove what an earlier run left in `out_dir`, so no old image sits beside a new summary."""
    for name in RUN_FILES:
        try:
            os.unlink(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass
    for name in RUN_DIRS:
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


class Tracker:
    """Writes one run's outputs into `out_dir` and mirrors them to a W&B run.

    Creating it only prepares the folder (clearing an earlier run's outputs, or, for a run that
    goes on with a stopped one, `resumes`, keeping them up to its step `before`); `start` starts
    the W&B run, which can fail. `finish` writes the summary in every case.
    """

    def __init__(self, out_dir: str, config: dict, wandb_cfg, name: str, group: str | None,
                 resumes: dict | None = None):
        self.out_dir = out_dir
        self._resumes = resumes
        if resumes is None:
            clear_outputs(out_dir)
        os.makedirs(os.path.join(out_dir, "snapshots"), exist_ok=True)
        path = os.path.join(out_dir, "metrics.jsonl")
        kept, logged = _lines_before(path, resumes["before"]) if resumes else ([], -1)
        self._metrics = open(path, "w", buffering=1)
        self._metrics.writelines(kept)
        self._wandb_from = logged + 1  # the W&B run has the steps before (W&B's steps only increase)
        self._config, self._wandb_cfg, self._name, self._group = config, wandb_cfg, name, group
        self.run = None
        self.mode = "disabled"
        self.info: dict[str, Any] = {}
        self._pending: list[Future] = []  # this tracker's work on the writer, not yet seen done
        self._start_submitted = False  # see `stepped`
        self._backlog: list[Callable] = []  # W&B logs made before its run started (writer thread only)

    def start(self) -> None:
        """Resolve the W&B mode; the W&B run itself (none when disabled) starts on the writer once
        `stepped` says the optimizer has made its first step: W&B's start-up (its import and its
        service process, about 0.6 s of a 2-core CPU) then takes no time from the set-up and the
        first step the user waits for. What is logged before then goes to the files at once and
        to W&B once its run has started, in order."""
        self.mode = resolve_wandb_mode(self._wandb_cfg.mode)
        self.info["wandb_mode"] = self.mode

    def stepped(self) -> None:
        """The run has made its first step, or ended: the W&B run starts (once). Called on the
        run's thread: the writer, which every job of a process shares, never waits for one job's
        event (a job of a batch that never steps would hold up every other job's work)."""
        if self.mode != "disabled" and not self._start_submitted:
            self._start_submitted = True
            # Not `_submit`: an error the writer met earlier must not keep the run from starting.
            self._pending.append(writer().submit(self._start_wandb))

    def _start_wandb(self) -> None:
        import wandb

        wandb_cfg = self._wandb_cfg
        self.run = wandb.init(
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=self._group,
            name=self._name,
            tags=list(wandb_cfg.tags),
            config=self._config,
            dir=self.out_dir,
            mode=self.mode,
            job_type="run",
            # Each job is its own run, even when several share one process.
            reinit="create_new",
            # A run that goes on with a stopped one goes on with its W&B run (offline: a second
            # offline run with the same id; `wandb sync` both).
            **({"id": self._resumes["wandb_id"], "resume": "allow"} if self._resumes and self._resumes["wandb_id"] else {}),
        )
        # Where to find this run again (the sweep's comparison links to it).
        self.info.update(wandb_id=self.run.id, wandb_url=self.run.url)
        backlog, self._backlog = self._backlog, []
        for log in backlog:
            log(self.run)

    def _to_wandb(self, log: Callable) -> None:
        """On the writer: `log(run)` now, or once the W&B run has started (none: W&B is off)."""
        if self.run is not None:
            log(self.run)
        elif self.mode != "disabled":
            self._backlog.append(log)

    def _submit(self, fn: Callable, *args) -> None:
        """Run `fn(*args)` on the writer, after everything submitted before it. An error the
        writer met earlier is raised here, in the run's thread."""
        self._raise_failed(wait=False)
        self._pending.append(writer().submit(fn, *args))

    def _raise_failed(self, wait: bool) -> None:
        pending, self._pending = self._pending, []
        error = None
        for future in pending:
            if not wait and not future.done():
                self._pending.append(future)
            elif error is None and future.exception() is not None:
                error = future.exception()
        if error is not None:
            raise error

    def drain(self) -> None:
        """Wait until the writer has done everything this tracker gave it; raise its first error.
        A second Ctrl-C while waiting drops what has not started."""
        self.stepped()  # whatever ended the run, the W&B run is not waiting for a step any more
        try:
            self._raise_failed(wait=True)
        except KeyboardInterrupt:
            for future in self._pending:
                future.cancel()
            self._pending = []
            raise

    def log_inputs(self, content: torch.Tensor, styles: list[torch.Tensor]) -> None:
        if self.mode != "disabled":
            self._submit(self._log_inputs, content.detach().clone(), [s.detach().clone() for s in styles])

    def _log_inputs(self, content: torch.Tensor, styles: list[torch.Tensor]) -> None:
        import wandb

        images = {"inputs/content": wandb.Image(to_pil(content), caption="content")}
        for i, s in enumerate(styles):
            images[f"inputs/style{'' if i == 0 else i}"] = wandb.Image(to_pil(s), caption=f"style {i}")
        self._to_wandb(lambda run: run.log(images, step=0))

    def save_input(self, name: str, image: Image.Image) -> None:
        """An input the run made itself (scale control's style image): `<name>.png`, and in W&B."""
        image.save(os.path.join(self.out_dir, f"{name}.png"))
        if self.mode != "disabled":
            self._submit(self._log_image, f"inputs/{name}", image, name, 0)

    def _log_image(self, key: str, image: Image.Image, caption: str, step: int) -> None:
        import wandb

        data = {key: wandb.Image(image, caption=caption)}
        self._to_wandb(lambda run: run.log(data, step=step))

    def log_video(self, path: str, step: int) -> None:
        """A clip the run made (an mp4 file) in W&B, as `video`."""
        if self.mode != "disabled":
            self._submit(self._log_video, path, step)

    def _log_video(self, path: str, step: int) -> None:
        import wandb

        data = {"video": wandb.Video(path, caption=os.path.basename(path), format="mp4")}
        self._to_wandb(lambda run: run.log(data, step=step))

    def log_step(self, metrics: dict[str, Any], image: torch.Tensor | None,
                 score: Callable[[torch.Tensor], dict] | None = None, scored: torch.Tensor | None = None) -> None:
        """One logged step; `image` is given at the snapshot interval, and `score(scored)` adds
        the yardstick's values to the line. Both images are copied: the run goes on meanwhile."""
        image = None if image is None else image.detach().clone()
        scored = None if scored is None else scored.detach().clone()
        self._submit(self._log_step, metrics, image, score, scored)

    def _log_step(self, metrics: dict[str, Any], image: torch.Tensor | None, score, scored) -> None:
        if score is not None:
            metrics = {**metrics, **score(scored)}
        self._metrics.write(json.dumps(metrics) + "\n")
        step = metrics["step"]
        if image is not None:
            save_image(image, os.path.join(self.out_dir, "snapshots", f"step_{step:06d}.png"))
        if self.mode != "disabled" and step >= self._wandb_from:
            data = dict(metrics)
            if image is not None:
                import wandb

                data["snapshot"] = wandb.Image(to_pil(image), caption=f"step {step}")
            self._to_wandb(lambda run: run.log(data, step=step))

    def finish(self, summary: dict[str, Any], final_image: torch.Tensor | None) -> None:
        """Write final.png and summary.json, and end the W&B run. Safe to call once, always;
        call `drain` first to see the writer's errors (this waits for the writer, quietly)."""
        try:
            try:
                self.drain()
            except BaseException:
                pass
            if final_image is not None:
                save_image(final_image, os.path.join(self.out_dir, "final.png"))
            tmp = os.path.join(self.out_dir, "summary.json.tmp")
            with open(tmp, "w") as f:
                json.dump({**summary, **self.info}, f, indent=2)
            os.replace(tmp, os.path.join(self.out_dir, "summary.json"))  # never half-written
            self._metrics.close()
            if self.run is not None:
                import wandb

                if final_image is not None:
                    self.run.log({"final": wandb.Image(to_pil(final_image), caption="final")},
                                 step=max(summary.get("steps", 0), 0))
                for k, v in {**summary, **self.info}.items():
                    if isinstance(v, (int, float, str, bool)) or v is None:
                        self.run.summary[k] = v
        finally:
            if self.run is not None:
                run_dir = os.path.dirname(self.run.dir)  # .../wandb/offline-run-*/files -> the run
                self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
                self.run = None
                if self.mode == "offline":
                    print(f"W&B run saved offline; upload it with: wandb sync {run_dir}", file=sys.stderr)
