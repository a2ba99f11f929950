"""Everything cnncli shows: tables, JSON, CSV and Markdown from plain data, units, and the
pictures (SVG, HTML, PNG). The table half imports neither numpy nor numba."""
