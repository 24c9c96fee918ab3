"""Graph storage backends."""
