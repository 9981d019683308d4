"""The lineage stage (`spark-submit.sh lineage`): what a prediction, model version, table version or landing file
came from and what consumed it.

- graph: the graph, built only from what the jobs record (`lineage`);
- render: the graph as a text tree, PNG and JSON.
"""
