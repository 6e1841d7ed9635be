"""Root-only tests in network namespaces this run creates."""
