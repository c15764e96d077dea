# The Streamlit app, a client of the Triton server (no model inside).
#
#   docker build -f docker/Dockerfile.app -t waste-app .            # context = repository root
#   docker run -p 8501:8501 -e WASTE_SERVER_URL=triton-host:8000 waste-app
FROM python:3.11-slim

WORKDIR /srv
# The client library first: it changes less often than the app, so this layer stays cached.
COPY client /srv/client
RUN pip install --no-cache-dir /srv/client "streamlit==1.67.0" "plotly==7.1.0"
COPY app /srv/app

ENV WASTE_SERVER_URL=server:8000 \
    WASTE_PROTOCOL=http \
    WASTE_MODEL=effnet_lite0 \
    WASTE_THRESHOLD=0.5
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=2)"
# Same flags as app/run.py's streamlit_command, bound to all interfaces inside the container.
CMD ["python", "-m", "streamlit", "run", "app/streamlit_app.py", \
     "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true", \
     "--client.showErrorDetails=false", "--client.toolbarMode=viewer", \
     "--browser.gatherUsageStats=false"]
