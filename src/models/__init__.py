"""Segmentation models: logits on the label grid, (B, out_channels, H / cell_px, W / cell_px).

`src.models.registry` maps model names to builders; each model lives in its own module.
"""
