"""Flows kept outside pipelines/flows/, as a user's own would be: each is a package a profile names in
`flow.module`."""
