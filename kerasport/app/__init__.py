"""The application wiring: the root CLI and `kerasport run`. It may import every stage; the core never imports it."""
