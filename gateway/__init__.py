"""egressgw: the egress gateway AI-agent sandboxes sit behind."""
