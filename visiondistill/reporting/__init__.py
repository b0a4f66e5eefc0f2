"""Run reports: test metrics, compression and teacher agreement of teacher / scratch / distilled runs, model cards.

``visiondistill report RUN_DIR …`` (`visiondistill.reporting.report.main`) reads everything from the run folders.
"""

from visiondistill.reporting.measure import Measurements, measure_runs
from visiondistill.reporting.model_card import write_model_card
from visiondistill.reporting.report import write_report
from visiondistill.reporting.runs import Run, RunError, assign_roles, read_run

__all__ = [
    "Measurements",
    "Run",
    "RunError",
    "assign_roles",
    "measure_runs",
    "read_run",
    "write_model_card",
    "write_report",
]
