"""The run report: metrics table, thresholds, counts and figures (markdown + PNG)."""

from dd_core.report.figures import ap_bar_chart, pseudo_label_grid
from dd_core.report.markdown import metrics_table, render_report

__all__ = ["ap_bar_chart", "metrics_table", "pseudo_label_grid", "render_report"]
