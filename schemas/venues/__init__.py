"""Raw venue message shapes, exactly as each venue sends them on the wire."""
