"""Fleet: trails shipped from many nodes, collected and checked centrally."""
