"""The MobileBERT model family: config, layers, encoder, heads, the eight model classes."""
