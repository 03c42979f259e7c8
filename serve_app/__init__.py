"""The Ray Serve application: deployment graph and OpenAI-compatible HTTP ingress."""
