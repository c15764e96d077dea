# The Streamlit app, a client of the Triton server (no model inside).
#
#   docker build -f docker/Dockerfile.app -t waste-app .            # context = repository root
#   docker run --read-only --tmpfs /tmp -p 127.0.0.1:8501:8501 -e WASTE_URL=triton-host:8000 waste-app
FROM python:3.11-slim

WORKDIR /srv
# The client library first: it changes less often than the app, so this layer stays cached.
COPY client /srv/client
RUN pip install --no-cache-dir /srv/client "streamlit==1.67.0" "plotly==7.1.0"
# The app imports the serving contract (model names, formats, limits).
COPY contract /srv/contract
COPY app /srv/app
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app

# HOME on /tmp: Streamlit writes its config directory there, and the root filesystem may be read-only.
ENV WASTE_URL=server:8000 \
    WASTE_PROTOCOL=http \
    WASTE_MODEL=effnet_lite0 \
    WASTE_THRESHOLD=model \
    WASTE_MAX_UPLOAD_MB=32 \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=2)"
# Same flags as app/run.py's streamlit_command, bound to all interfaces inside the container.
# --server.maxUploadSize equals WASTE_MAX_UPLOAD_MB: Streamlit refuses a larger upload before the
# page sees it (tests/test_deploy_files.py pins the two equal).
CMD ["python", "-m", "streamlit", "run", "app/streamlit_app.py", \
     "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true", \
     "--server.maxUploadSize=32", \
     "--client.showErrorDetails=false", "--client.toolbarMode=viewer", \
     "--browser.gatherUsageStats=false"]
