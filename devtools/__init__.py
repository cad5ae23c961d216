"""Development tools shared by tests/ and bench/: never installed (pyproject lists the wheel's packages explicitly).

Import it with the repository root on sys.path: pytest puts it there (`pythonpath` in pyproject.toml; tests/helpers.py
re-exports what tests use), and each bench/*.py script inserts it.
"""
