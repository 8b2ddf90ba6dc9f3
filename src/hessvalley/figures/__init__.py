"""Figures: one function per figure id, reading stores and writing PDF + PNG."""
