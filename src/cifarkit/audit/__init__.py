"""`cifarkit data audit`: what is wrong with a dataset before anyone trains on it.

label_issues.py (confident learning on out-of-sample probabilities), neighbours.py (embeddings,
near-duplicates, outliers), audit.py (the K-fold run that feeds both, the CSV files and the
clean manifest), page.py (audit.html). Sits above `engine` (its folds are ordinary `fit` runs).
"""
