"""The embedded synthetic benchmark: GTA5-like source and Cityscapes-like target street scenes."""
