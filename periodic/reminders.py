"""Durable reminders: "do this once, later", kept in a store so that they outlive the
process that set them. See :class:`Reminders` and the "Durable reminders" docs page."""

from ._reminders import Reminders as Reminders
from .stores._base import Reminder as Reminder

__all__ = ["Reminder", "Reminders"]
