"""The app's pieces of layout: each panel and tab is a small Blocks that `app.py` renders and wires."""
