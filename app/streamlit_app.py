"""Entry point: `streamlit run app/streamlit_app.py -- --server-url HOST:PORT --model NAME`.

Thin on purpose: settings come from `app.logic.load_settings` (WASTE_* variables, options after `--`),
the page from `app.page`. `make app` (`python -m app.run`) starts it, with a local server if needed.
"""
import sys
from pathlib import Path

# `streamlit run` puts app/ on sys.path, not the repository root that holds the `app` package.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from app.page import main  # noqa: E402

main(sys.argv[1:])
