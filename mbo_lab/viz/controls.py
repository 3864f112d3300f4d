"""Playback controls. The widgets only send commands; the session's clock in the kernel
does the playing (no ``ipywidgets.Play`` ticks drive the book)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from ..replay.session import SPEED_MAX
from ._common import Clock, Part, Throttle

#: Speed choices of the dropdown (label, x real time).
SPEEDS: list[tuple[str, float]] = [
    ("0.1x", 0.1), ("0.25x", 0.25), ("0.5x", 0.5), ("1x", 1.0), ("2x", 2.0), ("5x", 5.0),
    ("10x", 10.0), ("20x", 20.0), ("50x", 50.0), ("100x", 100.0), ("200x", 200.0),
    ("500x", 500.0), ("1000x", 1000.0), ("max", SPEED_MAX),
]


def _speed_label(speed: float) -> str:
    return "max" if speed == SPEED_MAX else f"{speed:g}x"


class Controls(Part):
    """Play/pause, back, step, start, end, a seek slider and a speed dropdown.

    Button and slider handlers call the session (``play``/``pause``/``step``/``back``/
    ``to_start``/``to_end``/``seek``/``set_speed``); :meth:`update` moves the widgets to a
    frame without calling the session back. Errors raised by the session go to
    ``on_error(exc)`` (the dashboard shows them) or are raised when it is None.
    While playing, the slider follows the frames at most ``slider_hz`` times a second.
    """

    def __init__(self, session: Any, *, on_error: Callable[[BaseException], None] | None = None,
                 slider_hz: float = 2.0, clock: Clock | None = None):
        self.session = session
        self.on_error = on_error
        self._quiet = False  # True while update() sets widget values
        self._slider_throttle = Throttle(slider_hz, clock)
        n = len(session)
        btn = W.Layout(width="36px")
        self.play_button = W.ToggleButton(value=bool(session.playing), description="Play",
                                          icon="play", tooltip="play / pause (kernel clock)",
                                          layout=W.Layout(width="80px"))
        self.play_button.add_class("mbo-play")
        self.start_button = W.Button(icon="fast-backward", tooltip="to start", layout=btn)
        self.back_button = W.Button(icon="step-backward", tooltip="back n events", layout=btn)
        self.step_button = W.Button(icon="step-forward", tooltip="step n events", layout=btn)
        self.end_button = W.Button(icon="fast-forward", tooltip="to end", layout=btn)
        self.step_size = W.BoundedIntText(value=1, min=1, max=1_000_000, description="n",
                                          layout=W.Layout(width="100px"),
                                          style={"description_width": "16px"})
        self.slider = W.IntSlider(value=max(0, session.record_index), min=0, max=max(0, n - 1),
                                  continuous_update=False, description="record",
                                  readout_format=",d", layout=W.Layout(width="300px"),
                                  style={"description_width": "44px"})
        self.slider.add_class("mbo-seek")
        speed = float(session.clock.speed)
        options = list(SPEEDS)
        if all(v != speed for _, v in options):
            options.append((_speed_label(speed), speed))
        self.speed = W.Dropdown(options=options, value=speed, description="speed",
                                layout=W.Layout(width="140px"),
                                style={"description_width": "42px"})
        self.speed.add_class("mbo-speed")
        self.play_button.observe(self._on_play, "value")
        self.start_button.on_click(lambda _b: self._call(self.session.to_start))
        self.end_button.on_click(lambda _b: self._call(self.session.to_end))
        self.step_button.on_click(lambda _b: self._call(self.session.step, self.step_size.value))
        self.back_button.on_click(lambda _b: self._call(self.session.back, self.step_size.value))
        self.slider.observe(self._on_slider, "value")
        self.speed.observe(self._on_speed, "value")
        self.widget = W.HBox(
            [self.play_button, self.start_button, self.back_button, self.step_button,
             self.end_button, self.step_size, self.speed, self.slider],
            layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.widget.add_class("mbo-controls")
        self.updates = 0

    # ------------------------------------------------------------------ commands
    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if self.on_error is None:
                raise
            self.on_error(exc)
            return None

    def _on_play(self, change: dict) -> None:
        self._show_play(change["new"])
        if self._quiet:
            return
        if change["new"]:
            self._call(self.session.play)
        else:
            self._call(self.session.pause)

    def _on_slider(self, change: dict) -> None:
        if not self._quiet:
            self._call(lambda: self.session.seek(index=int(change["new"])))

    def _on_speed(self, change: dict) -> None:
        if not self._quiet:
            self._call(self.session.set_speed, float(change["new"]))

    def _show_play(self, playing: bool) -> None:
        desc, icon = ("Pause", "pause") if playing else ("Play", "play")
        if self.play_button.description != desc:
            with self.play_button.hold_sync():
                self.play_button.description = desc
                self.play_button.icon = icon

    # ------------------------------------------------------------------ update
    def update(self, frame: Any) -> None:
        self._quiet = True
        try:
            if self.play_button.value != frame.playing:
                self.play_button.value = bool(frame.playing)
            self._show_play(bool(frame.playing))
            speed = float(frame.speed)
            if speed != self.speed.value and not (math.isinf(speed)
                                                  and math.isinf(self.speed.value)):
                if all(v != speed for _, v in self.speed.options):
                    self.speed.options = [*self.speed.options, (_speed_label(speed), speed)]
                self.speed.value = speed
            if self._slider_throttle.ready(force=not frame.playing):
                self.slider.value = int(frame.record_index)
        finally:
            self._quiet = False
        self.updates += 1
