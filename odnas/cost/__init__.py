"""The cost lane: what a candidate costs on the target, from its architecture alone."""
