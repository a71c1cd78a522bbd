"""The study report: tables (CSV), DVC metrics (JSON), plots (PNG) and results/report.md,
built from every evaluation and export file of a study by `write_study_report`."""
