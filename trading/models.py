"""Orders, fills, positions and the kill-switch arrive with the execution issue; the app is
registered now so its place in the layout (and in import contracts) is fixed from the start."""
