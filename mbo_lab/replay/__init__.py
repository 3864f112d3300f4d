"""Replay: the session that owns data, book state, checkpoints, clock and subscribers."""

from .session import SPEED_MAX, Frame, Session, open_session

__all__ = ["Session", "Frame", "open_session", "SPEED_MAX"]
