"""The conversation session: its lifecycle, carriage, cookies and headers, replica placement, the sweeper,
and the store."""
