"""Training progress as a user sees it: a bar on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) a tqdm bar shows steps, the last logged loss, the rate and the
time left. Anywhere else (a log file, CI, a pipe) a bar would be a mess of carriage returns, so one
plain line is printed at each logging step instead:
`step 20/400  loss 0.6120  1.93 steps/s  about 3m 17s left`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


class Progress:
    """Steps `initial..total` of a run. enabled: False on every process but the main one; value_name: what the
    value passed to `update` is (the loss, or e.g. the mean reward of an RL loop)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "training",
                 stream: TextIO | None = None, value_name: str = "loss"):
        self.total, self.start_step, self.step = total, initial, initial
        self.value_name = value_name
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream, dynamic_ncols=True)

    def rate(self) -> float:
        return (self.step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)

    def update(self, step: int, loss: float | None = None, logged: bool = False) -> None:
        """Step `step` is done; `loss` is the last logged loss; `logged`: a logging step (a plain line is due)."""
        advance, self.step = step - self.step, step
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(advance)
            if loss is not None:
                self.bar.set_postfix({self.value_name: f"{loss:.4f}"}, refresh=False)
        elif logged:
            rate = self.rate()
            left = (self.total - step) / rate if rate > 0 else float("nan")
            loss_text = f"  {self.value_name} {loss:.4f}" if loss is not None else ""
            print(f"step {step}/{self.total}{loss_text}  {rate:.2f} steps/s  about {_duration(left)} left",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
