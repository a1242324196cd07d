"""The Ideogram 4 diffusion transformer: its layers, packed sequences, key names and quantised layers."""
