"""Logical plan -> job graph: operators, edges, chaining, partitioning and key groups."""
