"""Device mesh and the logical-axis rules that map model axes onto it."""
