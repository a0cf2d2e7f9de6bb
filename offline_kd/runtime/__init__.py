"""What runs a model outside training: torch.distributed set-up, device resolution, batched inference loaders."""
