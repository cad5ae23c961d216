"""`kerasport package`: a verified bundle laid out for the serving engines teams already run."""
