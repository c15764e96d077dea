"""The 12 bins, in the index order of every model's output (docs/CONTRACT.md)."""
CLASSES = (
    "battery", "biological", "brown-glass", "cardboard", "clothes", "green-glass",
    "metal", "paper", "plastic", "shoes", "trash", "white-glass",
)
