"""The paper's analyses, built on the engine's public names: head rules and location, causal scans and
null tests, discrimination, the biases, label swaps, prompt comparisons, demonstration contributions."""
