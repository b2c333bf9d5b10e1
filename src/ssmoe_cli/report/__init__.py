"""`ssmoe report`: read training runs from MLflow, summarise them over seeds and test the paper's claims.

query.py      MLflow: the store, experiments, training runs, artifacts, the report run
records.py    runs as plain records; their grouping into configurations (every varying config key)
intervals.py  mean, std, Student-t intervals (cut to [0, 1] for fractions), paired differences
roles.py      who is proposed, dense and compared (--proposed/--dense/--versus)
selection.py  every choice between configurations is made on val/acc (test/acc only reported)
claims.py     the paper's two blanks and its claims at one operating point; verdicts.py, experts.py:
              verdicts of paired differences, the load-balance and correlation claims
frontier.py   trade-off curves: series over budgets, points with intervals, the Pareto frontier;
              frontier_iso.py (iso-accuracy budgets), frontier_ratios.py (ratios with a bootstrap
              interval and verdicts), frontier_analysis.py (assembly), frontier_text.py, frontier_plots.py
build.py      the whole report: groups, columns, claims per context, notes
cells.py, render.py, terminal.py   how it reads: markdown/CSV/JSON/HTML files, terminal tables
plots.py, publish.py               PNG plots; the report run (--log-run)
cli.py        the command line
"""
