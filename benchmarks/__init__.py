"""stagetune's performance benchmarks: every figure a ratio of two things timed side by side."""
