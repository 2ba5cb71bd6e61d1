"""The zoo's members by the analyzer they are the ground truth of; :mod:`workbench.zoo.specs` joins
them in one table."""
