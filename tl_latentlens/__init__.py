"""tl_latentlens: LatentLens for TransformerLens."""
