"""Planning: the dataset fingerprint, the rules that turn it into a recipe, the plan of a run."""
