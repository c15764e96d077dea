"""Streamlit front end of the waste classifier: a client of the Triton server (see docs/README_app_deploy.md)."""
