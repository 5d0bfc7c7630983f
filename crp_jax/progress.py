"""The one progress bar of every command (images of ``detect`` / ``explain``, steps of
``train``, scenes of ``evaluate``): tqdm when it is importable, else a plain bar redrawn on
stderr; silent when disabled or when there is at most one item (nothing to watch).

Result lines go through :meth:`Progress.write`, which clears the bar, prints the line
(stdout, or stderr with ``err=True``) and redraws the bar, so bars and results never mix.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]

_WIDTH = 24  # characters of the plain bar


class Progress:
    """A progress bar over ``total`` items named ``desc``.

    Args:
      total: number of items.
      desc: label in front of the bar ("explain", "train").
      enabled: False: no bar at all (``write`` still prints).
      initial: items already done (a resumed training run).
      unit: tqdm's unit name.
      min_interval: seconds between two redraws (tqdm's ``mininterval``; the plain bar also
        redraws at the last item).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool,
        *,
        initial: int = 0,
        unit: str = "img",
        min_interval: float = 0.0,
    ):
        self.total, self.desc, self.n = total, desc, initial
        self.enabled = enabled and total > 1
        self.min_interval = min_interval
        self.postfix = ""
        self._tqdm = None
        self._last_draw = 0.0
        if self.enabled:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc,
                    unit=unit,
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                    mininterval=min_interval or 0.1,
                )
            except ImportError:
                self._draw()

    def _draw(self) -> None:
        done = int(_WIDTH * self.n / max(self.total, 1))
        post = f" {self.postfix}" if self.postfix else ""
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (_WIDTH - done)}] {self.n}/{self.total}{post}")
        sys.stderr.flush()
        self._last_draw = time.monotonic()

    def _clear(self) -> None:
        sys.stderr.write("\r" + " " * (_WIDTH + 30 + len(self.desc) + len(self.postfix)) + "\r")

    def update(self, n: int = 1, postfix: str = "") -> None:
        """``n`` more items done; ``postfix`` (e.g. the loss) is shown after the bar."""
        self.n += n
        self.postfix = postfix or self.postfix
        if not self.enabled:
            return
        if self._tqdm is not None:
            if n:
                self._tqdm.update(n)
            if postfix:
                self._tqdm.set_postfix_str(postfix, refresh=False)
        elif time.monotonic() - self._last_draw >= self.min_interval or self.n >= self.total:
            self._draw()

    def write(self, text: str, err: bool = False) -> None:
        """Print ``text`` (stdout, or stderr with ``err``) without breaking the bar."""
        stream = sys.stderr if err else sys.stdout
        if self._tqdm is not None:
            self._tqdm.write(text, file=stream)
        elif self.enabled:
            self._clear()
            print(text, file=stream, flush=True)
            self._draw()
        else:
            print(text, file=stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            self._clear()
            sys.stderr.flush()
