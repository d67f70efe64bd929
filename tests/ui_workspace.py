"""The web page's test workspace: the serving harness's demo workspace
(:func:`serving_harness.prepare_workspace`) plus what the pages read -- one batch scoring
run, one analytics run and one monitoring run. ``bench/ui.py`` builds its workspace with
the same function."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from serving_harness import Workspace, environment, prepare_workspace


def prepare_ui_workspace(home: Path, customers: int = 1500, seed: int = 11) -> Workspace:
    """A served demo workspace with scores, analytics and monitoring recorded."""
    from features.warehouse import connect
    from rapport.settings import get_settings
    from training import monitor
    from training.analytics import run_analytics
    from training.scoring import score_all

    ws = prepare_workspace(home, customers=customers, seed=seed)
    with environment(RAPPORT_HOME=str(home), RAPPORT_ONLINE_STORE=None, MLFLOW_TRACKING_URI=None):
        con = connect(get_settings().warehouse_path)
        try:
            now = datetime.now(UTC)
            score_all(con, now)
            run_analytics(con, now, log_to_mlflow=False)
            monitor.run(now, con=con, log_to_mlflow=False)
        finally:
            con.disconnect()
    return ws
