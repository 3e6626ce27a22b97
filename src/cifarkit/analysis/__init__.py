"""Understanding a run: curves from any log, metrics of a checkpoint, dataset stats, HTML report."""
