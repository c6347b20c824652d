"""Our model directory format and safe, atomic writing of every output."""
