"""The campaign's progress hook (`hvadam.campaign_progress`): live notes and best-config artifacts.

Workers call `on_progress` after finished runs (`studies.live.LiveNotes` decides when, one writer
at a time). It rewrites every study's note with the progress and the comparison so far, and when
an optimizer's confirm phase has just completed it attaches that optimizer's exported best config
(`best-<optimizer>.yaml`, the file `hvadam export` writes) to its study in the artifact store.
"""

from __future__ import annotations

from typing import Any

from dashboards.artifacts import upload_best_config
from dashboards.notes import annotate_studies

__all__ = ["on_progress"]


def on_progress(update: Any) -> None:
    """Refresh the notes; attach the best config of an optimizer whose confirm phase is done."""
    annotate_studies(update.storage, update.campaign, running=True)
    if update.confirmed and update.artifacts:
        upload_best_config(update.storage, update.campaign, update.optimizer, update.artifacts)
