"""The lab: a whole cluster on one Linux machine, in network namespaces the lab itself creates."""
