"""LivePortrait (KwaiVGI) renderer: networks, motion math, source preparation and a batched renderer.

Networks load the official ``.pth`` files strictly; see ``checkpoint.py`` for the directory layout.
"""
