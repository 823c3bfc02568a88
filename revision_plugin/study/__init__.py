"""The miniature ReVision study (``revision demo``): see ``commands.py`` and DESIGN.md."""
