"""What the analyses are turned into: the results report, plotly and altair figures, lesson files."""
